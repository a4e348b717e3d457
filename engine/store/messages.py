"""Write operations and queries on messages and destination queues.

Write operations are functions of a ``Connection`` meant for the
:class:`~engine.store.group_commit.GroupCommitter`; they never commit
themselves. Moves of a queue entry check the state machine in SQL
(``WHERE status = 'QUEUED'``), so marking an entry twice raises.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, case, func, insert, select, update

from engine.errors import IllegalTransition
from engine.states import MessageStatus
from engine.store.tables import duplicate_keys, messages, queue_entries

__all__ = [
    "ENTRY_COLUMNS",
    "ORDER_KEY_LENGTH",
    "InboundRecord",
    "InsertResult",
    "QueueEntry",
    "QueueHeads",
    "QueueItem",
    "aware",
    "content_hash",
    "insert_inbound",
    "key_head",
    "mark_error",
    "mark_retry",
    "mark_sent",
    "now",
    "order_key_value",
    "pending_entries",
    "queue_heads",
    "queued_in",
    "read_entry",
]

ORDER_KEY_LENGTH = 200  # the width of queue_entries.order_key


def content_hash(raw: bytes) -> str:
    """Hash of the exact bytes received, the content part of a duplicate key."""
    return hashlib.sha256(raw).hexdigest()


def now() -> datetime:
    """The store's clock: timezone-aware UTC."""
    return datetime.now(UTC)


def order_key_value(text: str | None) -> str | None:
    """The stored form of an order key: stripped, cut to the column's width; "" is None.

    None is a key too (the shared one): entries without a key keep their order among
    themselves. Cutting keeps equal keys equal, so order is never lost, at worst two long
    keys share a lane.
    """
    if text is None:
        return None
    key = text.strip()[:ORDER_KEY_LENGTH]
    return key or None


@dataclass(frozen=True, slots=True)
class QueueItem:
    """One payload for one destination, created with its message.

    ``order_key``: entries of one destination with the same key are delivered in
    arrival order (see :mod:`engine.queue`); None is the shared key.
    """

    destination: str
    payload: str
    order_key: str | None = None


@dataclass(slots=True)
class InboundRecord:
    """Everything stored about an inbound message in the transaction that accepts it."""

    channel: str
    origin: str
    raw: str
    status: MessageStatus
    response: str | None = None
    error: str | None = None
    transformed: str | None = None
    message_type: str | None = None
    sender: str | None = None
    control_id: str | None = None
    patient_id: str | None = None
    accession: str | None = None
    content_hash: str | None = None
    queue: list[QueueItem] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class InsertResult:
    """The stored message's id, or the earlier message this one duplicates."""

    message_id: int
    duplicate: bool
    response: str | None


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """A pending delivery read from a destination queue."""

    id: int
    message_id: int
    payload: str
    attempts: int
    next_attempt_at: datetime
    order_key: str | None = None
    #: The node that claimed it (several nodes on one store), None on a single node.
    claimed_by: str | None = None


@dataclass(frozen=True, slots=True)
class QueueHeads:
    """The head entries of a destination's keys: those due now, and when the next one is."""

    due: list[QueueEntry]
    next_attempt_at: datetime | None


def insert_inbound(record: InboundRecord, *, duplicate_control: bool) -> Any:
    """A write op storing ``record`` (or finding the message it duplicates)."""

    def op(conn: Connection) -> InsertResult:
        if duplicate_control and _has_duplicate_key(record):
            earlier = _find_duplicate(conn, record)
            if earlier is not None:
                return earlier
        stamp = now()
        message_id = _insert_message(conn, record, stamp)
        if record.queue:
            conn.execute(
                insert(queue_entries),
                [_queue_row(record.channel, message_id, item, stamp) for item in record.queue],
            )
        if duplicate_control and _has_duplicate_key(record):
            conn.execute(
                insert(duplicate_keys).values(
                    channel=record.channel,
                    sender=record.sender,
                    control_id=record.control_id,
                    content_hash=record.content_hash,
                    message_id=message_id,
                    received_at=stamp,
                )
            )
        return InsertResult(message_id=message_id, duplicate=False, response=record.response)

    return op


def _has_duplicate_key(record: InboundRecord) -> bool:
    return bool(record.sender is not None and record.control_id and record.content_hash)


def _find_duplicate(conn: Connection, record: InboundRecord) -> InsertResult | None:
    row = conn.execute(
        select(messages.c.id, messages.c.response)
        .join(duplicate_keys, duplicate_keys.c.message_id == messages.c.id)
        .where(
            duplicate_keys.c.channel == record.channel,
            duplicate_keys.c.sender == record.sender,
            duplicate_keys.c.control_id == record.control_id,
            duplicate_keys.c.content_hash == record.content_hash,
        )
    ).first()
    if row is None:
        return None
    return InsertResult(message_id=row.id, duplicate=True, response=row.response)


def _insert_message(conn: Connection, record: InboundRecord, stamp: datetime) -> int:
    result = conn.execute(
        insert(messages)
        .values(
            channel=record.channel,
            status=record.status.value,
            received_at=stamp,
            updated_at=stamp,
            origin=record.origin,
            message_type=record.message_type,
            sender=record.sender,
            control_id=record.control_id,
            patient_id=record.patient_id,
            accession=record.accession,
            raw=record.raw,
            transformed=record.transformed,
            response=record.response,
            error=record.error,
        )
        .returning(messages.c.id)
    )
    return int(result.scalar_one())


def _queue_row(channel: str, message_id: int, item: QueueItem, stamp: datetime) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "channel": channel,
        "destination": item.destination,
        "status": MessageStatus.QUEUED.value,
        "payload": item.payload,
        "order_key": item.order_key,
        "attempts": 0,
        "next_attempt_at": stamp,
        "created_at": stamp,
        "updated_at": stamp,
    }


def pending_entries(engine: Engine, channel: str, destination: str, limit: int) -> list[QueueEntry]:
    """The oldest queued entries of one destination, in arrival order (head first)."""
    query = (
        select(*ENTRY_COLUMNS)
        .where(*queued_in(channel, destination))
        .order_by(queue_entries.c.id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [read_entry(row) for row in conn.execute(query)]


def queue_heads(engine: Engine, channel: str, destination: str, limit: int) -> QueueHeads:
    """The oldest due head entries of one destination's keys (oldest first, at most ``limit``).

    A key's head is its oldest QUEUED entry; only a head may be delivered, so each key
    keeps its order. One statement each, so the claim can later move into SQL (``FOR
    UPDATE SKIP LOCKED`` on the heads of keys no node holds) for several hub nodes.
    """
    q = queue_entries.c
    heads = (
        select(func.min(q.id).label("id"))
        .where(*queued_in(channel, destination))
        .group_by(q.order_key)
        .subquery("heads")
    )
    current = now()
    due_query = (
        select(*ENTRY_COLUMNS)
        .join_from(queue_entries, heads, heads.c.id == q.id)
        .where(q.next_attempt_at <= current)
        .order_by(q.id)
        .limit(limit)
    )
    later_query = (
        select(func.min(q.next_attempt_at))
        .join_from(queue_entries, heads, heads.c.id == q.id)
        .where(q.next_attempt_at > current)
    )
    with engine.connect() as conn:
        due = [read_entry(row) for row in conn.execute(due_query)]
        later = conn.execute(later_query).scalar_one_or_none()
    return QueueHeads(due, aware(later) if later is not None else None)


def key_head(
    engine: Engine, channel: str, destination: str, order_key: str | None
) -> QueueEntry | None:
    """The oldest QUEUED entry of one key of a destination (None: the key has none)."""
    q = queue_entries.c
    same_key = q.order_key.is_(None) if order_key is None else q.order_key == order_key
    query = (
        select(*ENTRY_COLUMNS)
        .where(*queued_in(channel, destination), same_key)
        .order_by(q.id)
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return read_entry(row) if row is not None else None


ENTRY_COLUMNS = (
    queue_entries.c.id,
    queue_entries.c.message_id,
    queue_entries.c.payload,
    queue_entries.c.attempts,
    queue_entries.c.next_attempt_at,
    queue_entries.c.order_key,
)


def queued_in(channel: str, destination: str) -> tuple[ColumnElement[bool], ...]:
    """The WHERE clauses of one destination's QUEUED entries."""
    return (
        queue_entries.c.channel == channel,
        queue_entries.c.destination == destination,
        queue_entries.c.status == MessageStatus.QUEUED.value,
    )


def read_entry(row: Any) -> QueueEntry:
    """A :class:`QueueEntry` from a row with :data:`ENTRY_COLUMNS` (and maybe ``claimed_by``)."""
    return QueueEntry(
        id=row.id,
        message_id=row.message_id,
        payload=row.payload,
        attempts=row.attempts,
        next_attempt_at=aware(row.next_attempt_at),
        order_key=row.order_key,
        claimed_by=getattr(row, "claimed_by", None),
    )


def aware(value: datetime) -> datetime:
    """``value`` as timezone-aware UTC."""
    # SQLite returns naive datetimes; everything we store is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def mark_sent(conn: Connection, entry: QueueEntry, response: str | None) -> None:
    """Move a queue entry QUEUED → SENT (within the caller's transaction)."""
    _move(conn, entry, MessageStatus.SENT, response=response, error=None)


def mark_error(conn: Connection, entry: QueueEntry, error: str) -> None:
    """Move a queue entry QUEUED → ERROR: it needs an analyst (reprocess)."""
    _move(conn, entry, MessageStatus.ERROR, response=None, error=error)


def mark_retry(conn: Connection, entry: QueueEntry, next_attempt_at: datetime, error: str) -> None:
    """Keep an entry QUEUED with one more attempt counted and its next attempt time.

    The claim is given back: when it is due, any node may try it (still the head).
    """
    _update_queued(
        conn,
        entry,
        next_attempt_at=next_attempt_at,
        error=error,
        updated_at=now(),
        claimed_by=None,
        lease_until=None,
    )


def _update_queued(conn: Connection, entry: QueueEntry, **values: Any) -> None:
    """Update an entry that must still be QUEUED (moving it twice raises), counting an attempt.

    A claimed entry must still be claimed by the same node: a node whose lease ran
    out while it delivered cannot mark what another node has taken over.
    """
    still_ours = (
        queue_entries.c.claimed_by == entry.claimed_by if entry.claimed_by is not None else None
    )
    result = conn.execute(
        update(queue_entries)
        .where(
            queue_entries.c.id == entry.id,
            queue_entries.c.status == MessageStatus.QUEUED.value,
            *([still_ours] if still_ours is not None else []),
        )
        .values(attempts=queue_entries.c.attempts + 1, **values)
    )
    if result.rowcount != 1:
        held = f" or no longer claimed by {entry.claimed_by}" if entry.claimed_by else ""
        raise IllegalTransition(f"queue entry {entry.id} is no longer QUEUED{held}")


def _move(
    conn: Connection,
    entry: QueueEntry,
    status: MessageStatus,
    *,
    response: str | None,
    error: str | None,
) -> None:
    stamp = now()
    _update_queued(
        conn, entry, status=status.value, response=response, error=error, updated_at=stamp
    )
    _refresh_message_status(conn, entry.message_id, stamp)


def _refresh_message_status(conn: Connection, message_id: int, stamp: datetime) -> None:
    """A message is QUEUED while any copy is; then ERROR if any copy failed, else SENT.

    One statement (this runs once per delivery, inside the single writer).
    """
    copies = queue_entries.alias("copies")

    def any_copy(status: MessageStatus) -> Any:
        return (
            select(copies.c.id)
            .where(copies.c.message_id == message_id, copies.c.status == status.value)
            .exists()
        )

    conn.execute(
        update(messages)
        .where(messages.c.id == message_id, ~any_copy(MessageStatus.QUEUED))
        .values(
            status=case(
                (any_copy(MessageStatus.ERROR), MessageStatus.ERROR.value),
                else_=MessageStatus.SENT.value,
            ),
            updated_at=stamp,
        )
    )
