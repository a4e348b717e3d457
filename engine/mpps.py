"""Performed procedure steps in the store: the steps, their outbox, and the worklist they move.

Each write runs in the store writer's transaction (:class:`GroupCommitter`)
and does three things at once, so none happens without the others:

* the step is stored in ``mpps_steps`` (its attributes as DICOM JSON);
* each linked Modality Worklist item changes status through
  :meth:`WorklistStore.apply`: IN PROGRESS → STARTED, COMPLETED → COMPLETED,
  DISCONTINUED → DISCONTINUED. A STARTED item stays on the worklist, as most
  information systems keep it (the modality may resume the exam after a restart,
  or another modality perform a further step of it); COMPLETED and DISCONTINUED
  items leave it. An order the EHR canceled, or one already completed, is never
  moved by a later step;
* one :class:`~engine.mpps_step.ProcedureStepEvent` per linked order goes into
  ``mpps_events``, the outbox the ``mpps`` channel source delivers from. An
  event stays *undelivered* until the channel's handler took it, so a failing
  handler or a hub stopped at the wrong moment loses nothing: the source
  retries in the background, in order per step.

A step links to orders through its ScheduledStepAttributesSequence (see
:func:`_find_order`); an unscheduled step links to none and still makes one
event. Attribute rules live in :mod:`engine.mpps_step`. Nothing here logs PHI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom import Dataset
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    RowMapping,
    String,
    Table,
    Text,
    case,
    select,
    update,
)

from engine.mpps_step import (
    FINAL_STATUSES,
    DuplicateStepError,
    FinalStepError,
    ProcedureStepEvent,
    StepLink,
    UnknownStepError,
    build_event,
    check_create,
    check_final,
    check_set,
    merge_set,
    step_links,
    text,
)
from engine.store.db import read_rows
from engine.store.schema import Id, metadata
from engine.worklist import WorklistStore
from engine.worklist_item import WorklistItem
from engine.worklist_table import worklist_items

__all__ = ["SPS_STATUS_FOR", "MPPSStore", "PendingEvent", "mpps_events", "mpps_steps"]

#: The worklist item's Scheduled Procedure Step Status for each step status.
SPS_STATUS_FOR: dict[str, str] = {
    "IN PROGRESS": "STARTED",
    "COMPLETED": "COMPLETED",
    "DISCONTINUED": "DISCONTINUED",
}
# Items a step never moves: the EHR canceled the order, or a step already completed it.
_SETTLED = frozenset({"CANCELED", "COMPLETED"})


def _text(name: str, length: int) -> Column[str]:
    return Column(name, String(length), nullable=False, server_default="")


mpps_steps = Table(
    "mpps_steps",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    _text("calling_aet", 16),
    _text("called_aet", 16),
    Column("attributes", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# The outbox: each source delivers the events of its called AE title in id order.
mpps_events = Table(
    "mpps_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    _text("calling_aet", 16),
    _text("called_aet", 16),
    Column("payload", Text, nullable=False),
    Column("delivered", Boolean, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
    Index("ix_mpps_events_pending", "called_aet", "delivered", "id"),
    Index("ix_mpps_events_step", "sop_instance_uid", "id"),
)


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An undelivered event: the JSON to hand to the channel, who sent it to whom."""

    id: int
    sop_instance_uid: str
    calling_aet: str
    called_aet: str
    payload: str


@dataclass(frozen=True, slots=True)
class _Order:
    """A linked worklist item: its key, its SPS status and its dataset."""

    key: str
    status: str
    item: Dataset


class MPPSStore:
    """Performed procedure steps, their outbox of events, and their worklist updates."""

    def __init__(self, engine: Engine, worklist: WorklistStore) -> None:
        self._engine = engine
        self._worklist = worklist

    # -- writes (inside the writer's transaction; never commit) ---------------------------

    def create(
        self, conn: Connection, sop_instance_uid: str, attributes: dict[str, Any], *,
        calling: str, called: str,
    ) -> list[ProcedureStepEvent]:  # fmt: skip
        """Store a new IN PROGRESS step (``attributes``: DICOM JSON, see ``step_json``).

        Raises :class:`~engine.mpps_step.InvalidStepError` (PS3.4 F.7.2.1) or
        :class:`~engine.mpps_step.DuplicateStepError` if the SOP Instance UID is known.
        """
        ds = Dataset.from_json(attributes)
        check_create(ds)
        if self._current(conn, sop_instance_uid) is not None:
            raise DuplicateStepError("a performed procedure step with this SOP Instance UID exists")
        now = datetime.now(UTC)
        conn.execute(
            mpps_steps.insert(),
            {
                "sop_instance_uid": sop_instance_uid,
                "status": "IN PROGRESS",
                "calling_aet": calling,
                "called_aet": called,
                "attributes": attributes,
                "created_at": now,
                "updated_at": now,
            },
        )
        return self._advance(conn, sop_instance_uid, ds, calling, called)

    def update(
        self, conn: Connection, sop_instance_uid: str, modifications: dict[str, Any], *,
        calling: str, called: str,
    ) -> list[ProcedureStepEvent]:  # fmt: skip
        """Apply an N-SET (DICOM JSON); returns the events made (none if the status stayed).

        Raises :class:`~engine.mpps_step.UnknownStepError`,
        :class:`~engine.mpps_step.FinalStepError` (the step already ended, PS3.4
        F.7.2.2.3) or :class:`~engine.mpps_step.InvalidStepError` (a bad value, or
        the final state lacks a Type 1 attribute).
        """
        row = self._current(conn, sop_instance_uid)
        if row is None:
            raise UnknownStepError("no performed procedure step with this SOP Instance UID")
        if row["status"] in FINAL_STATUSES:
            raise FinalStepError("Performed Procedure Step Object may no longer be updated")
        changes = Dataset.from_json(modifications)
        check_set(changes)
        merged = merge_set(Dataset.from_json(row["attributes"]), changes)
        status = text(merged, "PerformedProcedureStepStatus")
        if status in FINAL_STATUSES:
            check_final(merged)
        conn.execute(
            update(mpps_steps)
            .where(mpps_steps.c.id == row["id"])
            .values(status=status, attributes=merged.to_json_dict(), updated_at=datetime.now(UTC))
        )
        if status == row["status"]:
            return []  # attributes only: nothing to tell the worklist or the EHR
        return self._advance(conn, sop_instance_uid, merged, calling, called)

    def mark_delivered(self, conn: Connection, event_id: int) -> None:
        """The channel took the event."""
        conn.execute(
            update(mpps_events)
            .where(mpps_events.c.id == event_id)
            .values(delivered=True, delivered_at=datetime.now(UTC))
        )

    def mark_failed(self, conn: Connection, event_id: int) -> None:
        """One more failed delivery attempt; the event stays pending."""
        conn.execute(
            update(mpps_events)
            .where(mpps_events.c.id == event_id)
            .values(attempts=mpps_events.c.attempts + 1)
        )

    @staticmethod
    def _current(conn: Connection, sop_instance_uid: str) -> RowMapping | None:
        query = (
            select(mpps_steps.c.id, mpps_steps.c.status, mpps_steps.c.attributes)
            .where(mpps_steps.c.sop_instance_uid == sop_instance_uid)
            .with_for_update()
        )
        return conn.execute(query).mappings().first()

    def _advance(
        self, conn: Connection, sop_instance_uid: str, ds: Dataset, calling: str, called: str
    ) -> list[ProcedureStepEvent]:
        """Move the linked worklist items; write one outbox event per linked order."""
        status = text(ds, "PerformedProcedureStepStatus")
        events: list[ProcedureStepEvent] = []
        seen: set[str] = set()
        for link in step_links(ds):
            order = _find_order(conn, link)
            if order is not None and order.key in seen:
                continue  # two references to one order: one status change
            if order is not None:
                seen.add(order.key)
                self._move(conn, order, SPS_STATUS_FOR[status])
            event = build_event(
                ds,
                sop_instance_uid=sop_instance_uid,
                link=link,
                order_key=order.key if order is not None else None,
                order=order.item if order is not None else None,
                index=len(events),
            )
            events.append(event)
            conn.execute(
                mpps_events.insert(),
                {
                    "sop_instance_uid": sop_instance_uid,
                    "status": status,
                    "calling_aet": calling,
                    "called_aet": called,
                    "payload": event.model_dump_json(),
                    "delivered": False,
                    "attempts": 0,
                    "created_at": datetime.now(UTC),
                },
            )
        return events

    def _move(self, conn: Connection, order: _Order, status: str) -> None:
        if order.status in _SETTLED or order.status == status:
            return
        # COMPLETED and DISCONTINUED are ended statuses: the store takes the item off.
        self._worklist.apply(conn, WorklistItem(action="status", key=order.key, status=status))

    # -- reads (own short connections) ----------------------------------------------------

    def undelivered(
        self, called_aet: str, *, sop_instance_uid: str | None = None, limit: int = 100
    ) -> list[PendingEvent]:
        """Pending events for the channel serving ``called_aet``, oldest first."""
        e = mpps_events.c
        query = select(e.id, e.sop_instance_uid, e.calling_aet, e.called_aet, e.payload).where(
            e.called_aet == called_aet, e.delivered.is_(False)
        )
        if sop_instance_uid is not None:
            query = query.where(e.sop_instance_uid == sop_instance_uid)
        return [PendingEvent(**row) for row in self._read(query.order_by(e.id).limit(limit))]

    def get(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """One step by SOP Instance UID as a plain dict (``attributes`` is DICOM JSON)."""
        query = select(mpps_steps).where(mpps_steps.c.sop_instance_uid == sop_instance_uid)
        rows = self._read(query)
        return rows[0] if rows else None

    def events(self, sop_instance_uid: str) -> list[dict[str, Any]]:
        """Every event of one step, delivered or not, oldest first (admin UI, tests)."""
        query = (
            select(mpps_events)
            .where(mpps_events.c.sop_instance_uid == sop_instance_uid)
            .order_by(mpps_events.c.id)
        )
        return self._read(query)

    def _read(self, query: Any) -> list[dict[str, Any]]:
        return [dict(row) for row in read_rows(self._engine, query, "MPPS")]


def _find_order(conn: Connection, link: StepLink) -> _Order | None:
    """The worklist item a link names: by accession and study UID, else by accession alone.

    Every value given must match, as in :meth:`WorklistStore.find_item`; but some
    modalities make up their own Study Instance UID even for a scheduled exam, and
    the accession number still finds the order then. Among matches the same SPS
    ID wins, then an active item, then the most recently updated. Read in the
    writer's transaction: an order applied in the same batch is seen.
    """
    c = worklist_items.c
    attempts = []
    if link.accession_number and link.study_instance_uid:
        attempts.append(
            [
                c.accession_number == link.accession_number,
                c.study_instance_uid == link.study_instance_uid,
            ]
        )
    if link.accession_number:
        attempts.append([c.accession_number == link.accession_number])
    elif link.study_instance_uid:
        attempts.append([c.study_instance_uid == link.study_instance_uid])
    same_step = case((c.sps_id == link.scheduled_procedure_step_id, 0), else_=1)
    for conditions in attempts:
        query = (
            select(c.item_key, c.status, c.attributes)
            .where(*conditions)
            .order_by(same_step, c.active.desc(), c.updated_at.desc(), c.id.desc())
            .limit(1)
        )
        row = conn.execute(query).mappings().first()
        if row is not None:
            return _Order(row["item_key"], row["status"], Dataset.from_json(row["attributes"]))
    return None
