"""The ``reading-worklist`` destination: completed studies and AI results into the readers' queue.

A :class:`~connectors.base.TransactionalDestination`: :meth:`prepare` parses
the payload and does the slow reads (the study's order, DICOM result files)
in a worker thread; :meth:`apply` writes the reading worklist and the audit
trail in the store writer's transaction, the one marking the entry sent.

``input: studies`` (on the images channel): the payload is a StudyBatch; the
study goes on the worklist at its order's priority (``worklist_added``).

``input: ai-results`` (on the results channel): the payload is an AIResult
(JSON) or a StudyBatch of DICOM results (SR/SEG/GSPS, read by
:func:`engine.ai_findings.results_from_batch`). Each result is audited
(``ai_result``) and applied in its model's mode from the hub's registry; a
model the registry does not know is treated as *shadow* (never let an
unconfigured model reorder the readers' queue), then ``worklist_reprioritized``
or ``worklist_untouched_shadow`` is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydicom import Dataset
from sqlalchemy import Connection

from connectors.base import Delivery
from engine.ai_result import AIMode, AIResult
from engine.audit import AuditEvent, record
from engine.config import AIModelConfig
from engine.errors import EngineError, RecoverableError, StoreError, TransformError
from engine.reading_worklist import ReadingWorklist, WorklistChange
from engine.study_batch import StudyBatch
from engine.validation import describe_validation_error
from engine.worklist import WorklistStore

__all__ = [
    "PreparedResults",
    "PreparedStudy",
    "ReadingWorklistDestination",
    "ReadingWorklistDestinationConfig",
]

_M = TypeVar("_M", bound=BaseModel)


class ReadingWorklistDestinationConfig(BaseModel):
    """``type: reading-worklist``; SLAs and subspecialties are the hub's (one worklist)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["reading-worklist"]
    input: Literal["studies", "ai-results"] = Field(
        description="studies: completed studies (StudyBatch) go on the worklist; "
        "ai-results: AIResult JSON or StudyBatches of DICOM results reprioritize it"
    )


@dataclass(frozen=True, slots=True)
class PreparedStudy:
    """A completed study and its order (None when the MWL has none)."""

    batch: StudyBatch
    order: Dataset | None


@dataclass(frozen=True, slots=True)
class PreparedResults:
    """The AI results of one payload, with the accession to audit them under."""

    results: list[AIResult]
    accession_number: str | None


class ReadingWorklistDestination:
    """Applies studies or AI results to the reading worklist, with their audit events."""

    def __init__(
        self,
        config: ReadingWorklistDestinationConfig,
        *,
        reading_worklist: ReadingWorklist,
        worklist_store: WorklistStore | None,
        models: Mapping[str, AIModelConfig],
        channel: str,
        destination: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self._worklist = reading_worklist
        self._orders = worklist_store
        self._models = models
        self._channel = channel
        self._destination = destination
        self._clock = clock

    # -- outside the transaction ------------------------------------------------------------

    def prepare(self, payload: str) -> PreparedStudy | PreparedResults:
        """Parse the payload and read what it needs; TransformError when it is not valid."""
        if self.config.input == "studies":
            batch = _validated(StudyBatch, payload, "a study batch")
            return PreparedStudy(batch, self._order_of(batch))
        document = _json_object(payload)
        if "instances" in document:
            batch = _validated(StudyBatch, payload, "a study batch of AI results")
            return PreparedResults(_results_from_batch(batch), _accession(batch))
        result = _validated(AIResult, payload, "an AI result")
        return PreparedResults([result], result.accession_number)

    def _order_of(self, batch: StudyBatch) -> Dataset | None:
        if self._orders is None:
            return None
        accession = _accession(batch)
        try:
            order = self._orders.find_item(study_instance_uid=batch.study_instance_uid)
            if order is None and accession:
                order = self._orders.find_item(accession_number=accession)
        except StoreError as exc:
            raise RecoverableError(f"order lookup failed: {exc}") from exc
        return order

    # -- inside the transaction -------------------------------------------------------------

    def apply(self, conn: Connection, prepared: PreparedStudy | PreparedResults) -> Delivery:
        """Write the worklist and the audit trail in ``conn``'s transaction."""
        now = self._clock()
        if isinstance(prepared, PreparedStudy):
            return Delivery(response=self._apply_study(conn, prepared, now))
        outcomes = [
            self._apply_result(conn, r, prepared.accession_number, now) for r in prepared.results
        ]
        return Delivery(response="; ".join(outcomes) or "no AI result in the payload")

    def _apply_study(self, conn: Connection, prepared: PreparedStudy, now: datetime) -> str:
        batch = prepared.batch
        change = self._worklist.add_study(conn, batch, prepared.order, now)
        if change.added:
            uid, accession = batch.study_instance_uid, _accession(batch)
            record(conn, self._event("worklist_added", now, uid, accession, detail=change.detail))
        return change.description

    def _apply_result(
        self, conn: Connection, result: AIResult, accession: str | None, now: datetime
    ) -> str:
        configured = self._models.get(result.model)
        mode: AIMode = configured.mode if configured is not None else "shadow"
        accession = result.accession_number or accession
        uid = result.study_instance_uid
        model = {"model": result.model, "model_version": result.model_version}
        answer = _result_detail(result, mode, configured)
        record(conn, self._event("ai_result", now, uid, accession, detail=answer, **model))
        change = self._worklist.apply_result(conn, result, mode, now)
        kind = "worklist_untouched_shadow" if mode == "shadow" else "worklist_reprioritized"
        detail = {"mode": mode, **_change_detail(change)}
        record(conn, self._event(kind, now, uid, accession, detail=detail, **model))
        return f"{result.model}: {change.description}"

    def _event(
        self,
        kind: Any,
        now: datetime,
        uid: str,
        accession: str | None,
        *,
        detail: dict[str, Any],
        model: str | None = None,
        model_version: str | None = None,
    ) -> AuditEvent:
        return AuditEvent(
            kind=kind,
            at=now,
            study_instance_uid=uid,
            accession_number=accession[:64] if accession else None,
            channel=self._channel,
            destination=self._destination,
            model=model,
            model_version=model_version,
            detail=detail,
        )

    async def close(self) -> None:
        """Nothing to release: the worklist and the store belong to the hub."""


def _result_detail(
    result: AIResult, mode: AIMode, configured: AIModelConfig | None
) -> dict[str, Any]:
    """What came back, for the trail: counts, critical flag and scores (labels are not PHI)."""
    detail: dict[str, Any] = {
        "mode": mode,
        "status": result.status,
        "source": result.source,
        "produced_at": result.produced_at.isoformat(),
        "findings": len(result.findings),
        "critical": result.critical,
        "max_score": max((f.score for f in result.findings), default=None),
        "scores": [[f.code, f.score, f.critical] for f in result.findings],
        "model_configured": configured is not None,
    }
    if configured is not None and configured.version != result.model_version:
        detail["configured_version"] = configured.version
    return detail


def _change_detail(change: WorklistChange) -> dict[str, Any]:
    return {
        "old": change.old_priority,
        "new": change.new_priority,
        "changed": change.reprioritized,
        "outcome": change.description,
    }


def _results_from_batch(batch: StudyBatch) -> list[AIResult]:
    try:
        # Imported when used: results ingest is its own module (and may be absent).
        from engine.ai_findings import results_from_batch
    except ImportError as exc:
        raise TransformError("DICOM AI results need engine.ai_findings, not available") from exc
    try:
        return results_from_batch(batch)
    except EngineError:
        raise
    except Exception as exc:
        # Anything else would wedge the queue; its text may quote file content, so the type only.
        raise TransformError(f"cannot read the AI results: {type(exc).__name__}") from exc


def _accession(batch: StudyBatch) -> str | None:
    value = str(batch.metadata.get("AccessionNumber") or "").strip()
    return value or None


def _json_object(payload: str) -> dict[str, Any]:
    try:
        document = json.loads(payload)
    except json.JSONDecodeError as exc:
        # The parser's message and position only: the document itself may hold PHI.
        raise TransformError(f"not JSON: {exc.msg} at character {exc.pos}") from exc
    if not isinstance(document, dict):
        raise TransformError("not an AI result or a study batch: a JSON object is expected")
    return document


def _validated(model: type[_M], payload: str, what: str) -> _M:
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        raise TransformError(f"not {what}: {describe_validation_error(exc)}") from exc
