"""Message search, one message at every stage, and reprocessing.

Content (raw, transformed, response, error, queue payloads) is patient data:
the list never carries it, the detail withholds it from a viewer without
``can_view_phi``, and every view of content or reprocess is written to the
access log.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, select, update

from admin.access_log import log_access
from admin.context import AdminContext, context
from admin.security import CurrentSession, Session, require_role
from engine.states import MessageStatus, check_transition
from engine.store.tables import messages, queue_entries

__all__ = ["router"]

router = APIRouter(prefix="/api/messages", tags=["messages"])
Ctx = Annotated[AdminContext, Depends(context)]

_SUMMARY = [
    messages.c.id,
    messages.c.channel,
    messages.c.status,
    messages.c.received_at,
    messages.c.updated_at,
    messages.c.origin,
    messages.c.message_type,
    messages.c.sender,
    messages.c.control_id,
    messages.c.patient_id,
    messages.c.accession,
]
_CONTENT = ("raw", "transformed", "response", "error")
_QUEUE_CONTENT = ("payload", "response", "error")
_REPROCESSABLE = (MessageStatus.ERROR.value, MessageStatus.SENT.value)


class SearchQuery(BaseModel):
    """Filters of ``GET /api/messages`` (all optional, combined with AND)."""

    model_config = ConfigDict(extra="forbid")

    channel: str | None = None
    status: MessageStatus | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = Field(default=None, max_length=200)
    patient_id: str | None = None
    accession: str | None = None
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0)


@router.get("")
def search(session: CurrentSession, ctx: Ctx, q: Annotated[SearchQuery, Query()]) -> dict[str, Any]:
    """Messages matching every filter, newest first; summaries only, no content."""
    if (q.patient_id or q.text) and not session.user.can_view_phi:
        # Searching by patient or content reveals PHI by its answer.
        raise HTTPException(status.HTTP_403_FORBIDDEN, "searching by patient data needs PHI access")
    query = (
        select(*_SUMMARY)
        .where(*_conditions(q))
        .order_by(messages.c.id.desc())
        .limit(q.limit)
        .offset(q.offset)
    )
    with ctx.services.engine.connect() as conn:
        rows = [_summary(dict(row), session) for row in conn.execute(query).mappings()]
    return {"items": rows, "limit": q.limit, "offset": q.offset}


def _conditions(q: SearchQuery) -> list[Any]:
    equal = {"channel": q.channel, "patient_id": q.patient_id, "accession": q.accession}
    conditions = [messages.c[name] == value for name, value in equal.items() if value is not None]
    if q.status is not None:
        conditions.append(messages.c.status == q.status.value)
    if q.since is not None:
        conditions.append(messages.c.received_at >= _utc(q.since))
    if q.until is not None:
        conditions.append(messages.c.received_at < _utc(q.until))
    if q.text:
        # Full-content search is a scan; the page limit keeps it bounded.
        conditions.append(messages.c.raw.contains(q.text, autoescape=True))
    return conditions


def _summary(row: dict[str, Any], session: Session) -> dict[str, Any]:
    if not session.user.can_view_phi:
        row["patient_id"] = None
    return row


@router.get("/{message_id}")
def detail(message_id: int, session: CurrentSession, ctx: Ctx) -> dict[str, Any]:
    """One message at every stage with its queue entries; content withheld without PHI access."""
    with ctx.services.engine.connect() as conn:
        row = conn.execute(select(messages).where(messages.c.id == message_id)).mappings().first()
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such message")
        entries = conn.execute(
            select(queue_entries)
            .where(queue_entries.c.message_id == message_id)
            .order_by(queue_entries.c.id)
        ).mappings()
        queue = [dict(entry) for entry in entries]
    message = dict(row)
    hidden = not session.user.can_view_phi
    if hidden:
        message["patient_id"] = None
        _withhold(message, _CONTENT)
        for entry in queue:
            _withhold(entry, _QUEUE_CONTENT)
    else:
        ctx.run_write(log_access(session.user.username, "view", message_id))
    message["queue"] = queue
    message["phi_hidden"] = hidden
    return message


def _withhold(row: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        row[name] = None


@router.post("/{message_id}/reprocess")
def reprocess(
    message_id: int,
    session: Annotated[Session, Depends(require_role("analyst"))],
    ctx: Ctx,
) -> dict[str, Any]:
    """Put the message's ERROR and SENT queue entries back on their queues, then wake them."""
    with ctx.services.engine.connect() as conn:
        found = conn.execute(select(messages.c.id).where(messages.c.id == message_id)).first()
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such message")
    moved: list[tuple[str, str]] = ctx.run_write(_reprocess_op(message_id, session.user.username))
    _wake(ctx, moved)
    return {"message_id": message_id, "requeued": len(moved)}


def _reprocess_op(message_id: int, username: str) -> Callable[[Connection], list[tuple[str, str]]]:
    def op(conn: Connection) -> list[tuple[str, str]]:
        entries = conn.execute(
            select(queue_entries.c.id, queue_entries.c.status, queue_entries.c.channel)
            .add_columns(queue_entries.c.destination)
            .where(
                queue_entries.c.message_id == message_id,
                queue_entries.c.status.in_(_REPROCESSABLE),
            )
        ).all()
        stamp = datetime.now(UTC)
        for entry in entries:
            check_transition(MessageStatus(entry.status), MessageStatus.QUEUED)
            # Guarded by status: an entry moved meanwhile is left alone.
            conn.execute(
                update(queue_entries)
                .where(queue_entries.c.id == entry.id, queue_entries.c.status == entry.status)
                .values(
                    status=MessageStatus.QUEUED.value,
                    attempts=0,
                    next_attempt_at=stamp,
                    updated_at=stamp,
                )
            )
        if entries:
            conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(status=MessageStatus.QUEUED.value, updated_at=stamp)
            )
        log_access(username, "reprocess", message_id)(conn)
        return sorted({(entry.channel, entry.destination) for entry in entries})

    return op


def _wake(ctx: AdminContext, moved: list[tuple[str, str]]) -> None:
    """Wake the workers of the destinations that got entries back (if the hub runs here)."""
    if ctx.hub is None:
        return
    for channel, destination in moved:
        runtime = ctx.hub.runtimes.get(channel)
        for worker in runtime.workers if runtime is not None else []:
            if worker.destination == destination:
                worker.notify()


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
