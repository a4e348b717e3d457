"""Message search, one message at every stage (also segment by segment), and reprocessing.

Content (raw, transformed, response, error, queue payloads) is patient data:
the list never carries it, the detail withholds it from a viewer without
``can_view_phi``, and every view of content or reprocess is written to the
access log.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, func, select, update

from admin.access_log import log_access
from admin.context import AdminContext, context
from admin.hl7_segments import Displayed, display
from admin.resubmit import resubmit_unqueued
from admin.security import CurrentSession, Session, require_role
from engine.states import MessageStatus, check_transition
from engine.store.tables import messages, queue_entries

__all__ = ["router"]

router = APIRouter(prefix="/api/messages", tags=["messages"])
Ctx = Annotated[AdminContext, Depends(context)]
Analyst = Annotated[Session, Depends(require_role("analyst"))]

#: Most ids one bulk reprocess takes (one transaction holds them all).
MAX_REPROCESS = 1000

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


class Filters(BaseModel):
    """Filters of the message search and export (all optional, combined with AND)."""

    model_config = ConfigDict(extra="forbid")

    channel: str | None = None
    status: MessageStatus | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = Field(default=None, max_length=200)
    patient_id: str | None = None
    accession: str | None = None


class SearchQuery(Filters):
    """Query of ``GET /api/messages``: the filters, a page, and whether to count every match."""

    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0)
    count: bool = Field(default=False, description="add the number of matches as `total`")


@router.get("")
def search(session: CurrentSession, ctx: Ctx, q: Annotated[SearchQuery, Query()]) -> dict[str, Any]:
    """Messages matching every filter, newest first; summaries only, no content."""
    check_search_allowed(q, session)
    conditions = conditions_of(q)
    query = (
        select(*_SUMMARY)
        .where(*conditions)
        .order_by(messages.c.id.desc())
        .limit(q.limit)
        .offset(q.offset)
    )
    with ctx.services.engine.connect() as conn:
        rows = [_summary(dict(row), session) for row in conn.execute(query).mappings()]
        answer: dict[str, Any] = {"items": rows, "limit": q.limit, "offset": q.offset}
        if q.count:
            total = select(func.count()).select_from(messages).where(*conditions)
            answer["total"] = int(conn.execute(total).scalar_one())
    return answer


def check_search_allowed(q: Filters, session: Session) -> None:
    """403 if the filters name patient data and the user may not see it."""
    if (q.patient_id or q.text) and not session.user.can_view_phi:
        # Searching by patient or content reveals PHI by its answer.
        raise HTTPException(status.HTTP_403_FORBIDDEN, "searching by patient data needs PHI access")


def conditions_of(q: Filters) -> list[Any]:
    """The WHERE conditions on ``messages`` for ``q``."""
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


@router.get("/{message_id:int}")
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


class SegmentsQuery(BaseModel):
    """Which content to show: a stage of the message, or a part of one of its queue entries."""

    model_config = ConfigDict(extra="forbid")

    stage: Literal["raw", "transformed", "response"] = "raw"
    queue_entry: int | None = Field(default=None, description="a queue entry of this message")
    part: Literal["payload", "response"] = "payload"


@router.get("/{message_id:int}/segments")
def segments(
    message_id: int, session: CurrentSession, ctx: Ctx, q: Annotated[SegmentsQuery, Query()]
) -> Displayed:
    """One stage of a message (or of one of its queue entries) segment by segment.

    HL7 v2 gets named fields; JSON is pretty-printed; anything else is text.
    Needs PHI access; the view is written to the access log.
    """
    if not session.user.can_view_phi:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "message content needs PHI access")
    with ctx.services.engine.connect() as conn:
        if q.queue_entry is None:
            column = messages.c[q.stage]
            where = [messages.c.id == message_id]
        else:
            column = queue_entries.c[q.part]
            where = [queue_entries.c.id == q.queue_entry, queue_entries.c.message_id == message_id]
        found = conn.execute(select(column).where(*where)).first()
    if found is None:
        what = "queue entry of this message" if q.queue_entry is not None else "message"
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no such {what}")
    ctx.run_write(log_access(session.user.username, "view", message_id))
    return display(found[0])


def _withhold(row: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        row[name] = None


@router.post("/{message_id:int}/reprocess")
def reprocess(message_id: int, session: Analyst, ctx: Ctx) -> dict[str, Any]:
    """Put the message's ERROR and SENT queue entries back on their queues, then wake them.

    A message that failed in the channel itself (nothing was queued) is run through
    the channel as deployed now instead: ``resubmitted_as`` names the new message.
    """
    with ctx.services.engine.connect() as conn:
        found = conn.execute(select(messages.c.id).where(messages.c.id == message_id)).first()
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such message")
    moved: list[tuple[str, str]] = ctx.run_write(_reprocess_op(message_id, session.user.username))
    _wake(ctx, moved)
    result = {"message_id": message_id, "requeued": len(moved)}
    if not moved:
        result |= _run_again(ctx, session, [message_id]).get(message_id, {})
    return result


class ReprocessMany(BaseModel):
    """Body of ``POST /api/messages/reprocess``."""

    model_config = ConfigDict(extra="forbid")

    ids: list[int] = Field(min_length=1, max_length=MAX_REPROCESS)


@router.post("/reprocess")
def reprocess_many(body: ReprocessMany, session: Analyst, ctx: Ctx) -> dict[str, Any]:
    """Reprocess each message as the single-message route does, in one transaction.

    A missing message gets ``error`` in its result; the others are reprocessed.
    """
    ids = list(dict.fromkeys(body.ids))  # a repeated id is reprocessed once
    results, moved = ctx.run_write(_reprocess_many_op(ids, session.user.username))
    _wake(ctx, moved)
    idle = [r["message_id"] for r in results if r["requeued"] == 0 and r["error"] is None]
    again = _run_again(ctx, session, idle)
    for entry in results:
        entry.update(again.get(entry["message_id"], {}))
    return {"results": results}


def _run_again(ctx: AdminContext, session: Session, ids: list[int]) -> dict[int, dict[str, Any]]:
    """Messages that failed in the channel itself (nothing to requeue) run through it again."""
    answers: dict[int, dict[str, Any]] = {}
    for message_id, outcome in resubmit_unqueued(ctx, session.user.username, ids).items():
        answer: dict[str, Any] = {"resubmitted_as": outcome.message_id, "status": outcome.status}
        if outcome.message_id is None:
            answer["error"] = outcome.error  # it could not be run (channel not running)
        elif outcome.error is not None:
            # It ran, and the channel failed it again: a result, not a failed request.
            answer["resubmit_error"] = outcome.error
        answers[message_id] = answer
    return answers


def _reprocess_many_op(
    ids: list[int], username: str
) -> Callable[[Connection], tuple[list[dict[str, Any]], list[tuple[str, str]]]]:
    def op(conn: Connection) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        existing = set(conn.execute(select(messages.c.id).where(messages.c.id.in_(ids))).scalars())
        results: list[dict[str, Any]] = []
        moved: list[tuple[str, str]] = []
        for message_id in ids:
            if message_id not in existing:
                results.append(
                    {"message_id": message_id, "requeued": 0, "error": "no such message"}
                )
                continue
            entries = _reprocess_op(message_id, username)(conn)
            results.append({"message_id": message_id, "requeued": len(entries), "error": None})
            moved += entries
        return results, moved

    return op


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
        # One item per entry put back: the count answers "how many were requeued".
        return [(entry.channel, entry.destination) for entry in entries]

    return op


def _wake(ctx: AdminContext, moved: list[tuple[str, str]]) -> None:
    """Wake the workers of the destinations that got entries back (if the hub runs here)."""
    if ctx.hub is None:
        return
    for channel, destination in sorted(set(moved)):
        runtime = ctx.hub.runtimes.get(channel)
        for worker in runtime.workers if runtime is not None else []:
            if worker.destination == destination:
                worker.notify()


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
