"""Claims on queue entries when several hub nodes share one PostgreSQL store.

Every node runs every channel's destination workers, so two nodes must never
deliver the same entry, and entries of one order key (or, with one delivery
lane, all entries of a destination) must still go out in arrival order. A node
*claims* entries before delivering them:

* A claim is ``claimed_by`` (the node's id) and ``lease_until`` on the entry.
  The node renews its leases while it lives (:meth:`QueueClaimer.renew`); a node
  that dies stops renewing, and once its leases expire the other nodes claim
  its entries and deliver them (at least once: an entry it had sent but not yet
  marked is sent again, which receivers de-duplicate by control ID/UID).
* Only a *head* is ever claimed on its own: the oldest QUEUED entry of a key
  (keyed lanes) or of the destination (one lane). The entries behind a head are
  not heads, so no other node can take them while the head is out; once the
  head is marked SENT (committed), the next entry becomes the head. That is
  what keeps the order across nodes.
* The head row is locked with ``FOR UPDATE SKIP LOCKED`` while it is claimed:
  two nodes claiming at the same instant never wait on each other and never
  both get it. The head is computed as ``min(id)`` first and then locked, so a
  locked head yields *nothing*, never the entry behind it.
* With one lane, the node that owns the destination's head claims the run of
  entries behind it too (a batch), and owns the destination until the run is
  delivered: nobody else can claim the head meanwhile.

Marks (:func:`engine.store.messages.mark_sent` etc.) check ``claimed_by``, so
a node whose lease was taken over cannot mark an entry another node now owns.
SQLite stores have one node and never claim (``claimed_by`` stays NULL).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Select, func, or_, select, update

from engine.states import MessageStatus
from engine.store.messages import (
    ENTRY_COLUMNS,
    QueueEntry,
    QueueHeads,
    aware,
    now,
    queued_in,
    read_entry,
)
from engine.store.tables import queue_entries

__all__ = ["QueueClaimer"]

_q = queue_entries.c


@dataclass(frozen=True, slots=True)
class QueueClaimer:
    """One node's claims on queue entries in a shared PostgreSQL store."""

    node: str
    lease_seconds: float

    # -- one lane: the destination's head and the run behind it --------------------

    def claim_run(
        self, engine: Engine, channel: str, destination: str, limit: int
    ) -> list[QueueEntry] | None:
        """The destination's oldest QUEUED entries, claimed for this node (head first).

        None when another node holds the head (it is delivering the destination);
        empty when nothing is queued. When the head is not due yet it is returned
        alone, unclaimed, so the worker knows how long to wait.
        """
        with engine.begin() as conn:
            head = self._lock_head(conn, queued_in(channel, destination))
            if head is None:
                # Nothing queued, or another node is claiming the head this instant.
                return [] if self._nothing_queued(conn, channel, destination) else None
            if self._held_by_other(head):
                return None
            entry = read_entry(head)
            if entry.next_attempt_at > now():
                return [entry]
            run = (
                select(_q.id)
                .where(*queued_in(channel, destination), _q.id >= entry.id)
                .order_by(_q.id)
                .limit(limit)
            )
            # Owning the head means owning the destination: the run behind it is
            # taken even from a node whose claims went stale.
            return self._claim(conn, _q.id.in_(run.scalar_subquery()))

    # -- keyed lanes: heads of keys, and the next entry of a key -------------------

    def claim_heads(self, engine: Engine, channel: str, destination: str, limit: int) -> QueueHeads:
        """Due heads of keys no other node holds, claimed for this node (oldest first)."""
        where = queued_in(channel, destination)
        heads = select(func.min(_q.id)).where(*where).group_by(_q.order_key).scalar_subquery()
        current = now()
        with engine.begin() as conn:
            free = conn.execute(
                select(_q.id)
                .where(*where, _q.id.in_(heads), _q.next_attempt_at <= current, self._free(current))
                .order_by(_q.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).scalars()
            due = self._claim(conn, _q.id.in_(list(free)))
            later = conn.execute(
                select(func.min(_q.next_attempt_at)).where(
                    *where, _q.id.in_(heads), _q.next_attempt_at > current
                )
            ).scalar_one_or_none()
        return QueueHeads(due, aware(later) if later is not None else None)

    def claim_key_head(
        self, engine: Engine, channel: str, destination: str, order_key: str | None
    ) -> QueueEntry | None:
        """The next entry of one key, claimed for this node (None: none, or not ours)."""
        same_key = _q.order_key.is_(None) if order_key is None else _q.order_key == order_key
        with engine.begin() as conn:
            head = self._lock_head(conn, (*queued_in(channel, destination), same_key))
            if head is None or self._held_by_other(head):
                return None
            claimed = self._claim(conn, _q.id == head.id)
        return claimed[0] if claimed else None

    # -- leases -------------------------------------------------------------------

    def renew(self, engine: Engine) -> int:
        """Extend the lease of every entry this node holds; the number renewed."""
        with engine.begin() as conn:
            result = conn.execute(
                update(queue_entries)
                .where(_q.claimed_by == self.node, _q.status == MessageStatus.QUEUED.value)
                .values(lease_until=self._until())
            )
        return int(result.rowcount)

    def release(self, engine: Engine, channel: str, destination: str) -> int:
        """Give back the entries of one destination this node holds (its worker stopped).

        The other nodes take them at once instead of waiting for the leases to run out.
        """
        with engine.begin() as conn:
            result = conn.execute(
                update(queue_entries)
                .where(
                    _q.claimed_by == self.node,
                    _q.status == MessageStatus.QUEUED.value,
                    _q.channel == channel,
                    _q.destination == destination,
                )
                .values(claimed_by=None, lease_until=None)
            )
        return int(result.rowcount)

    # -- helpers -------------------------------------------------------------------

    def _until(self) -> datetime:
        return now() + timedelta(seconds=self.lease_seconds)

    def _free(self, current: datetime) -> ColumnElement[bool]:
        """Held by nobody, by this node, or by a node whose lease ran out."""
        return or_(_q.claimed_by.is_(None), _q.claimed_by == self.node, _q.lease_until < current)

    def _held_by_other(self, row: Any) -> bool:
        if row.claimed_by is None or row.claimed_by == self.node:
            return False
        return row.lease_until is not None and aware(row.lease_until) >= now()

    def _lock_head(self, conn: Connection, where: tuple[ColumnElement[bool], ...]) -> Any:
        """The oldest entry matching ``where``, locked; None if none or another node locks it.

        ``min(id)`` is computed before locking: SKIP LOCKED on an ordered scan would
        hand out the entry *behind* a locked head and break the order. The status is
        checked again on the locked row (it may have been sent since the snapshot).
        """
        oldest = select(func.min(_q.id)).where(*where).scalar_subquery()
        query: Select[Any] = (
            select(*ENTRY_COLUMNS, _q.claimed_by, _q.lease_until)
            .where(_q.id == oldest, _q.status == MessageStatus.QUEUED.value)
            .with_for_update(skip_locked=True)
        )
        return conn.execute(query).first()

    @staticmethod
    def _nothing_queued(conn: Connection, channel: str, destination: str) -> bool:
        query = select(_q.id).where(*queued_in(channel, destination)).limit(1)
        return conn.execute(query).first() is None

    def _claim(self, conn: Connection, which: ColumnElement[bool]) -> list[QueueEntry]:
        rows = conn.execute(
            update(queue_entries)
            .where(which, _q.status == MessageStatus.QUEUED.value)
            .values(claimed_by=self.node, lease_until=self._until())
            .returning(*ENTRY_COLUMNS, _q.claimed_by)
        ).all()
        return sorted((read_entry(row) for row in rows), key=lambda entry: entry.id)
