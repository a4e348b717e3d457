"""``/api/alerts``: what the hub raised (AI timeouts, ...) and who has seen it.

Alerts live in engine/ai_timeouts.py's ``alerts`` table and never hold patient
data. Acknowledging marks the alert there (as :func:`engine.ai_timeouts.acknowledge`
does) and records who did it, and when, in ``admin_alert_acks``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from sqlalchemy import Connection, Select, insert, select

from admin.context import AdminContext, context
from admin.security import CurrentSession, Session, require_role
from admin.tables import admin_alert_acks
from engine.ai_timeouts import acknowledge, alerts

__all__ = ["router"]

router = APIRouter(prefix="/api/alerts", tags=["alerts"])
Ctx = Annotated[AdminContext, Depends(context)]
Analyst = Annotated[Session, Depends(require_role("analyst"))]

_COLUMNS = (
    alerts.c.id,
    alerts.c.kind,
    alerts.c.severity,
    alerts.c.message,
    alerts.c.at.label("created_at"),
    alerts.c.acknowledged,
    admin_alert_acks.c.at.label("acknowledged_at"),
    admin_alert_acks.c.username.label("acknowledged_by"),
)


def _query() -> Select[Any]:
    joined = alerts.outerjoin(admin_alert_acks, admin_alert_acks.c.alert_id == alerts.c.id)
    return select(*_COLUMNS).select_from(joined)


@router.get("")
def list_alerts(
    _: CurrentSession,
    ctx: Ctx,
    open_only: bool = True,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Alerts, newest first; only unacknowledged ones unless ``open_only=false``."""
    query = _query().order_by(alerts.c.at.desc(), alerts.c.id.desc()).limit(limit)
    if open_only:
        query = query.where(alerts.c.acknowledged.is_(False))
    with ctx.services.engine.connect() as conn:
        return [_public(dict(row)) for row in conn.execute(query).mappings()]


@router.post("/{alert_id}/acknowledge")
def acknowledge_alert(alert_id: int, session: Analyst, ctx: Ctx) -> dict[str, Any]:
    """Mark an alert seen by you; acknowledging it again keeps the first acknowledgement."""
    found: dict[str, Any] | None = ctx.run_write(_acknowledge_op(alert_id, session.user.username))
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such alert")
    return _public(found)


def _acknowledge_op(alert_id: int, username: str) -> Callable[[Connection], dict[str, Any] | None]:
    def op(conn: Connection) -> dict[str, Any] | None:
        current = conn.execute(_query().where(alerts.c.id == alert_id)).mappings().first()
        if current is None:
            return None
        if not current["acknowledged"]:
            acknowledge(conn, alert_id)
        if current["acknowledged_at"] is None and not current["acknowledged"]:
            stamp = datetime.now(UTC)
            values = {"alert_id": alert_id, "at": stamp, "username": username}
            conn.execute(insert(admin_alert_acks).values(**values))
        row = conn.execute(_query().where(alerts.c.id == alert_id)).mappings().one()
        return dict(row)

    return op


def _public(row: dict[str, Any]) -> dict[str, Any]:
    for name in ("created_at", "acknowledged_at"):
        value = row[name]
        if isinstance(value, datetime) and value.tzinfo is None:
            # SQLite gives naive datetimes back; everything stored is UTC.
            row[name] = value.replace(tzinfo=UTC)
    row["acknowledged"] = bool(row["acknowledged"])
    return row
