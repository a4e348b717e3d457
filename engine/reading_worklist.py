"""The reading worklist: the radiologists' queue of studies to read, most urgent first.

Separate from the Modality Worklist (orders for modalities): an item is a
*completed study*. Its priority (:func:`engine.priority.priority_score`)
comes from the order's priority, how long it has waited against its SLA and
what AI said about it; :meth:`ReadingWorklist.reprioritize` is run
periodically (:class:`Reprioritizer`) so waiting raises a study.

Writes take the caller's connection and never commit: they run in the store
writer's transaction (the one that marks the queue entry sent), so a study or
an AI result is applied exactly once. Reads open their own short connections.

AI modes: *shadow* results never touch the worklist (they are stored and
audited elsewhere); *triage* and *assistant* results update the item's AI
summary and priority. A result for a study not on the worklist yet (the AI
was faster than the images channel's queue) is kept on a ``PENDING``
placeholder row, invisible as work, and applied when the study arrives: the
worklist never waits for AI, and AI never waits for the worklist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydicom import Dataset
from sqlalchemy import Connection, Engine, RowMapping, bindparam, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from engine.ai_result import AIMode, AIResult
from engine.errors import StoreError
from engine.periodic import PeriodicTask
from engine.priority import normalize_order_priority, priority_score
from engine.reading_config import Radiologist, ReadingWorklistConfig
from engine.reading_tables import (
    OPEN_STATUSES,
    ReadingItem,
    ReadingStatus,
    draft_report,
    merge_result,
    reading_items,
    summary_flags,
    utc,
)
from engine.store.db import read_rows
from engine.store.group_commit import GroupCommitter
from engine.study_batch import StudyBatch

__all__ = [
    "ReadingItem",
    "ReadingWorklist",
    "ReadingWorklistConfig",
    "Reprioritizer",
    "WorklistChange",
    "choose_assignee",
    "reading_items",
]

Order = Literal["priority", "received", "sla"]

_T = reading_items
_ORDERS = {
    "priority": (_T.c.priority_score.desc(), _T.c.received_at, _T.c.id),
    "received": (_T.c.received_at, _T.c.id),
    "sla": (_T.c.sla_due_at, _T.c.id),
}
_REPRIORITIZE = (
    update(_T)
    .where(_T.c.id == bindparam("row_id"))
    .values(priority_score=bindparam("score"), updated_at=bindparam("now"))
)


@dataclass(frozen=True, slots=True)
class WorklistChange:
    """What a write did; ``str()`` is its one-line description (no PHI)."""

    study_instance_uid: str
    description: str
    added: bool = False
    old_priority: float | None = None
    new_priority: float | None = None
    #: What the audit trail keeps about the change (no PHI).
    detail: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.description

    @property
    def reprioritized(self) -> bool:
        """True when the item's priority score changed."""
        return self.new_priority is not None and self.new_priority != self.old_priority


class ReadingWorklist:
    """Reading worklist items in the ``reading_items`` table."""

    def __init__(self, engine: Engine, config: ReadingWorklistConfig) -> None:
        self._engine = engine
        self.config = config

    # -- writes (inside the caller's transaction) -------------------------------------------

    def add_study(
        self, conn: Connection, batch: StudyBatch, order: Dataset | None, now: datetime
    ) -> WorklistChange:
        """Put a completed study on the worklist; a study already there is left as it is.

        ``order`` is its Modality Worklist item, if any (order priority,
        identifiers when the images lack them). AI results already kept on a
        placeholder count from the start.
        """
        now, uid = utc(now), batch.study_instance_uid
        row = _locked(conn, uid)
        if row is not None and row["status"] != "PENDING":
            return WorklistChange(uid, "already on the reading worklist")
        values = self._study_values(batch, order)
        critical, score = summary_flags(dict(row["ai_findings"]) if row is not None else {})
        sla = self.config.sla_for(values["order_priority"])
        new = priority_score(values["order_priority"], critical, score, 0.0, sla)
        values.update(
            received_at=now,
            sla_due_at=now + timedelta(minutes=sla),
            ai_critical=critical,
            ai_score=score,
            priority_score=new,
            status="UNREAD",
            updated_at=now,
        )
        if row is None:
            _write(conn, insert(_T).values(**values, ai_findings={}, created_at=now))
        else:
            _write(conn, update(_T).where(_T.c.id == row["id"]).values(**values))
        pending = " (with the AI results that came first)" if row is not None else ""
        text = f"added to the reading worklist as {values['order_priority']}{pending}"
        detail = {
            "order_priority": values["order_priority"],
            "subspecialty": values["subspecialty"],
            "priority": new,
            "sla_due_at": values["sla_due_at"].isoformat(),
            "ai_results_first": row is not None,
            "batch": batch.batch,
        }
        return WorklistChange(uid, text, added=True, new_priority=new, detail=detail)

    def apply_result(
        self, conn: Connection, result: AIResult, mode: AIMode, now: datetime
    ) -> WorklistChange:
        """Apply an AI result in ``mode``: shadow leaves the worklist untouched.

        Triage and assistant update the item's AI summary and recompute its
        priority; for a study not on the worklist yet the result is kept on a
        placeholder and counts when the study arrives.
        """
        now, uid = utc(now), result.study_instance_uid
        if mode == "shadow":
            return WorklistChange(uid, "shadow mode: reading worklist untouched")
        row = _locked(conn, uid)
        if row is None:
            return self._placeholder(conn, result, now)
        summary = merge_result(dict(row["ai_findings"]), result)
        if summary is None:
            old = float(row["priority_score"])
            text = "older than the result already applied: ignored"
            return WorklistChange(uid, text, old_priority=old, new_priority=old)
        critical, score = summary_flags(summary)
        values: dict[str, Any] = {
            "ai_findings": summary,
            "ai_critical": critical,
            "ai_score": score,
            "updated_at": now,
        }
        if mode == "assistant":
            values["report_draft"] = draft_report(result.model, summary[result.model])
        if row["status"] != "PENDING":
            values["priority_score"] = self._score(row, critical, score, now)
        _write(conn, update(_T).where(_T.c.id == row["id"]).values(**values))
        return _result_change(uid, row, values.get("priority_score"), critical)

    def reprioritize(self, conn: Connection, now: datetime) -> int:
        """Recompute the priority of every open item at ``now``; returns how many changed."""
        now = utc(now)
        columns = (_T.c.id, _T.c.order_priority, _T.c.ai_critical, _T.c.ai_score)
        query = select(*columns, _T.c.received_at, _T.c.priority_score).where(
            _T.c.status.in_(OPEN_STATUSES)
        )
        changes = []
        for row in conn.execute(query).mappings():
            score = self._score(row, bool(row["ai_critical"]), row["ai_score"], now)
            if score != row["priority_score"]:
                changes.append({"row_id": row["id"], "score": score, "now": now})
        if changes:
            _write(conn, _REPRIORITIZE, changes)
        return len(changes)

    def set_status(
        self,
        conn: Connection,
        study_instance_uid: str,
        status: ReadingStatus,
        now: datetime,
        *,
        assigned_to: str | None = None,
    ) -> bool:
        """Move an item (UNREAD/IN_PROGRESS/READ) and set its reader; False if unknown.

        ``assigned_to=None`` keeps the current reader.
        """
        if status == "PENDING":
            raise ValueError("PENDING is the placeholder of an AI result, not a reading status")
        values: dict[str, Any] = {"status": status, "updated_at": utc(now)}
        if assigned_to is not None:
            values["assigned_to"] = assigned_to
        statement = (
            update(_T)
            .where(_T.c.study_instance_uid == study_instance_uid, _T.c.status != "PENDING")
            .values(**values)
        )
        return _write(conn, statement) > 0

    def _placeholder(self, conn: Connection, result: AIResult, now: datetime) -> WorklistChange:
        summary = merge_result({}, result) or {}
        critical, score = summary_flags(summary)
        values = {
            "study_instance_uid": result.study_instance_uid,
            "accession_number": _clip(result.accession_number, 64),
            "order_priority": "ROUTINE",
            "ai_critical": critical,
            "ai_score": score,
            "ai_findings": summary,
            "priority_score": 0.0,
            "status": "PENDING",
            "created_at": now,
            "updated_at": now,
        }
        _write(conn, insert(_T).values(**values))
        text = "study not on the reading worklist yet: result kept until it arrives"
        return WorklistChange(result.study_instance_uid, text)

    def _score(self, row: RowMapping, critical: bool, score: float | None, now: datetime) -> float:
        sla = self.config.sla_for(row["order_priority"])
        waited = (now - utc(row["received_at"])).total_seconds() / 60
        return priority_score(row["order_priority"], critical, score, waited, sla)

    def _study_values(self, batch: StudyBatch, order: Dataset | None) -> dict[str, Any]:
        meta = batch.metadata
        ordered = order if order is not None else Dataset()
        steps = ordered.get("ScheduledProcedureStepSequence") or [Dataset()]
        # A multi-valued Modality ("CT\\SR") reads as its first value.
        modality = _text(meta.get("Modality")) or _text(steps[0].get("Modality"))
        modality = modality.split("\\")[0].upper()
        body_part = _text(meta.get("BodyPartExamined")).upper()
        return {
            "study_instance_uid": batch.study_instance_uid,
            "accession_number": _clip(
                _text(meta.get("AccessionNumber")) or _text(ordered.get("AccessionNumber")), 64
            ),
            "patient_id": _clip(
                _text(meta.get("PatientID")) or _text(ordered.get("PatientID")), 64
            ),
            "modality": modality[:16],
            "body_part": body_part[:64],
            "description": _text(
                meta.get("StudyDescription") or ordered.get("RequestedProcedureDescription")
            )[:200],
            "order_priority": normalize_order_priority(ordered.get("RequestedProcedurePriority")),
            "subspecialty": self.config.subspecialty_for(modality, body_part),
        }

    # -- reads -------------------------------------------------------------------------------

    def items(
        self,
        *,
        order: Order = "priority",
        limit: int = 100,
        statuses: Sequence[ReadingStatus] = OPEN_STATUSES,
        subspecialty: str | None = None,
    ) -> list[ReadingItem]:
        """Items to read, most urgent first by default (``received``: oldest; ``sla``: due)."""
        query = select(_T).where(_T.c.status.in_(statuses))
        if subspecialty is not None:
            query = query.where(_T.c.subspecialty == subspecialty)
        query = query.order_by(*_ORDERS[order]).limit(limit)
        return [ReadingItem.from_row(row) for row in self._read(query)]

    def item(self, study_instance_uid: str) -> ReadingItem | None:
        """One item (any status, placeholders included) by its study."""
        rows = self._read(select(_T).where(_T.c.study_instance_uid == study_instance_uid))
        return ReadingItem.from_row(rows[0]) if rows else None

    def workloads(self) -> dict[str, int]:
        """Open items per reader: IN_PROGRESS plus UNREAD assigned to them."""
        query = (
            select(_T.c.assigned_to, func.count().label("open_items"))
            .where(_T.c.assigned_to.is_not(None), _T.c.status.in_(OPEN_STATUSES))
            .group_by(_T.c.assigned_to)
        )
        return {row["assigned_to"]: int(row["open_items"]) for row in self._read(query)}

    def suggest_assignee(
        self, item: ReadingItem, radiologists: Sequence[Radiologist] | None = None
    ) -> str | None:
        """Who should read ``item`` (:func:`choose_assignee`; default: the configured readers)."""
        readers = self.config.radiologists if radiologists is None else radiologists
        return choose_assignee(item.subspecialty, readers, self.workloads())

    def _read(self, query: Any) -> list[RowMapping]:
        return read_rows(self._engine, query, "reading worklist")


def choose_assignee(
    subspecialty: str | None, radiologists: Sequence[Radiologist], workloads: dict[str, int]
) -> str | None:
    """The reader with the lowest workload among those of the study's subspecialty.

    When nobody reads that subspecialty (or the study has none) every reader
    is a candidate: a study must never be left without a suggestion because of
    a gap in the rota. Ties go to the reader listed first. None without readers.
    """
    matching = [r for r in radiologists if subspecialty and subspecialty in r.subspecialties]
    candidates = matching or list(radiologists)
    if not candidates:
        return None
    return min(candidates, key=lambda r: workloads.get(r.name, 0)).name


class Reprioritizer(PeriodicTask):
    """Recomputes the worklist's priorities every ``interval_seconds`` through the writer."""

    def __init__(
        self, worklist: ReadingWorklist, committer: GroupCommitter, interval_seconds: float = 60
    ) -> None:
        super().__init__("reading-worklist-reprioritize", interval_seconds, self.run_once)
        self._worklist = worklist
        self._committer = committer

    async def run_once(self) -> int:
        """One pass; returns how many items changed priority."""
        worklist = self._worklist
        return await self._committer.run_async(
            lambda conn: worklist.reprioritize(conn, datetime.now(UTC))
        )


def _locked(conn: Connection, study_instance_uid: str) -> RowMapping | None:
    query = select(_T).where(_T.c.study_instance_uid == study_instance_uid).with_for_update()
    return conn.execute(query).mappings().first()


def _write(conn: Connection, statement: Any, parameters: Any = None) -> int:
    try:
        result = conn.execute(statement, parameters)
    except SQLAlchemyError as exc:
        raise StoreError(f"reading worklist write failed: {type(exc).__name__}") from exc
    return int(result.rowcount)


def _result_change(uid: str, row: RowMapping, new: float | None, critical: bool) -> WorklistChange:
    if row["status"] == "PENDING":
        return WorklistChange(uid, "study not on the reading worklist yet: result kept")
    old = float(row["priority_score"])
    state = "critical finding" if critical else "no critical finding"
    verb = "reprioritized" if new != old else "priority unchanged"
    read = " (study already read)" if row["status"] == "READ" else ""
    return WorklistChange(uid, f"{verb}: {state}{read}", old_priority=old, new_priority=new)


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _clip(value: str | None, length: int) -> str | None:
    return value[:length] if value else None
