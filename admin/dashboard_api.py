"""``GET /api/dashboard``: the hub at a glance, from a few indexed queries.

No patient data: counts, queue depths and ages only, so any logged-in user
may see it. If the store does not answer, the dashboard says so
(``store: "unavailable"``, counts null) instead of failing: that is exactly
when someone looks at it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from sqlalchemy import Connection, case, func, select
from sqlalchemy.exc import SQLAlchemyError

from admin.context import AdminContext, context
from admin.security import CurrentSession
from engine.ai_timeouts import alerts
from engine.states import MessageStatus
from engine.store.tables import messages, queue_entries

__all__ = ["queue_summary", "router"]

router = APIRouter(prefix="/api", tags=["dashboard"])
Ctx = Annotated[AdminContext, Depends(context)]

_QUEUED = MessageStatus.QUEUED.value
_ERROR = MessageStatus.ERROR.value


@router.get("/dashboard")
def dashboard(_: CurrentSession, ctx: Ctx) -> dict[str, Any]:
    """Messages and errors of the last hour, open alerts, and every non-empty queue."""
    now = datetime.now(UTC)
    answer: dict[str, Any] = {"generated_at": now, "store": "ok"}
    try:
        with ctx.services.engine.connect() as conn:
            answer |= _counts(conn, now)
            answer["queues"] = queue_summary(conn, now)
    except SQLAlchemyError:
        keys = ("received_last_hour", "errored_last_hour", "open_alerts")
        answer |= {"store": "unavailable", "queues": [], **dict.fromkeys(keys)}
    return answer


def _counts(conn: Connection, now: datetime) -> dict[str, int]:
    hour_ago = now - timedelta(hours=1)
    received = select(func.count()).where(messages.c.received_at >= hour_ago)
    # A message errs after it arrives: its last update is when it went to ERROR.
    errored = select(func.count()).where(
        messages.c.status == _ERROR, messages.c.updated_at >= hour_ago
    )
    open_alerts = select(func.count()).where(alerts.c.acknowledged.is_(False))
    return {
        "received_last_hour": int(conn.execute(received).scalar_one()),
        "errored_last_hour": int(conn.execute(errored).scalar_one()),
        "open_alerts": int(conn.execute(open_alerts).scalar_one()),
    }


def queue_summary(conn: Connection, now: datetime) -> list[dict[str, Any]]:
    """Per channel and destination: entries waiting, oldest wait, entries in ERROR.

    Only QUEUED and ERROR entries are read (the pending index covers them);
    destinations with neither are left out.
    """
    queued = queue_entries.c.status == _QUEUED
    rows = conn.execute(
        select(
            queue_entries.c.channel,
            queue_entries.c.destination,
            func.sum(case((queued, 1), else_=0)),
            func.min(case((queued, queue_entries.c.created_at), else_=None)),
            func.sum(case((queue_entries.c.status == _ERROR, 1), else_=0)),
        )
        .where(queue_entries.c.status.in_((_QUEUED, _ERROR)))
        .group_by(queue_entries.c.channel, queue_entries.c.destination)
        .order_by(queue_entries.c.channel, queue_entries.c.destination)
    ).all()
    return [
        {
            "channel": channel,
            "destination": destination,
            "depth": int(depth or 0),
            "oldest_age_seconds": _age(now, oldest),
            "errored": int(errored or 0),
        }
        for channel, destination, depth, oldest, errored in rows
    ]


def _age(now: datetime, oldest: Any) -> float | None:
    if oldest is None:
        return None
    # SQLite may hand MIN() over a CASE back as text: the column type is lost in it.
    stamp: datetime = datetime.fromisoformat(oldest) if isinstance(oldest, str) else oldest
    aware = stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)
    return round(max(0.0, (now - aware).total_seconds()), 3)
