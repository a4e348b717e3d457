"""``type: report`` — draft a preliminary report from AI results and hand it to the EHR channel.

For assistant-mode models: the AI's findings, the order's patient and
procedure (from the Modality Worklist item of the same accession or study)
and the drafted text become a :class:`~engine.report.StudyReport` with status
P, forwarded to the channel that talks to the EHR (ORU^R01, FHIR). The
radiologist's signed report later supersedes it (status F).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydicom import Dataset

from connectors.base import Delivery
from engine.ai_result import AIResult
from engine.errors import PermanentError, TransformError
from engine.reading_tables import draft_report
from engine.reading_tables import merge_result as summarize
from engine.report import ReportObservation, ReportPatient, ReportProcedure, StudyReport
from engine.study_batch import StudyBatch
from engine.worklist import WorklistStore

__all__ = ["ReportBuilder", "ReportBuilderConfig", "build_report"]

Forward = Callable[[bytes], Awaitable[bytes | None]]


class ReportBuilderConfig(BaseModel):
    """Draft reports go to the channel ``report_channel`` (e.g. results-to-ehr)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["report"]
    report_channel: str = Field(min_length=1)


class ReportBuilder:
    """Turns AI results (AIResult JSON or DICOM result batches) into preliminary reports."""

    def __init__(self, config: ReportBuilderConfig, *, worklist: WorklistStore, forward: Forward):
        self.config = config
        self._worklist = worklist
        self._forward = forward

    async def send(self, payload: str) -> Delivery:
        """Build one report per study of the payload and forward each."""
        reports = await asyncio.to_thread(self._reports, payload)
        for report in reports:
            await self._forward(report.model_dump_json().encode("utf-8"))
        return Delivery(response=f"{len(reports)} preliminary report(s) forwarded")

    async def close(self) -> None:
        """Nothing to release."""

    def _reports(self, payload: str) -> list[StudyReport]:
        results = _results(payload)
        reports = []
        for result in results:
            order = self._worklist.find_item(
                accession_number=result.accession_number,
                study_instance_uid=None if result.accession_number else result.study_instance_uid,
            )
            if order is None:
                raise PermanentError(
                    f"no order for the AI result of study {result.study_instance_uid}: "
                    "a report needs the order's patient and accession"
                )
            reports.append(build_report(result, order))
        return reports


def _results(payload: str) -> list[AIResult]:
    try:
        document = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise TransformError(f"not JSON: {exc.msg}") from exc
    if isinstance(document, dict) and "instances" in document:
        from engine.ai_findings import results_from_batch

        return results_from_batch(StudyBatch.model_validate(document))
    return [AIResult.model_validate(document)]


def build_report(result: AIResult, order: Dataset, *, now: datetime | None = None) -> StudyReport:
    """A preliminary StudyReport from one AI result and its order's worklist dataset."""
    entry = summarize({}, result)
    assert entry is not None  # an empty summary never holds a newer result
    text = draft_report(result.model, entry[result.model])
    return StudyReport(
        study_instance_uid=result.study_instance_uid,
        accession_number=str(order.get("AccessionNumber") or result.accession_number or ""),
        placer_order_number=_text(order, "PlacerOrderNumberImagingServiceRequest"),
        filler_order_number=_text(order, "FillerOrderNumberImagingServiceRequest"),
        patient=ReportPatient(
            id=str(order.get("PatientID") or ""),
            issuer=_text(order, "IssuerOfPatientID"),
            name=str(order.get("PatientName") or ""),
            birth_date=_text(order, "PatientBirthDate"),
            sex=_text(order, "PatientSex"),
        ),
        procedure=_procedure(order),
        status="P",
        text=text,
        observations=[_observation(f.model_dump()) for f in result.findings],
        findings=result.findings,
        ai_models=[f"{result.model} {result.model_version}"],
        reported_at=now or datetime.now(UTC),
    )


def _procedure(order: Dataset) -> ReportProcedure:
    codes = order.get("RequestedProcedureCodeSequence") or []
    code = codes[0] if codes else Dataset()
    steps = order.get("ScheduledProcedureStepSequence") or []
    return ReportProcedure(
        code=str(code.get("CodeValue") or ""),
        description=str(order.get("RequestedProcedureDescription") or ""),
        coding_system=str(code.get("CodingSchemeDesignator") or "L"),
        modality=str(steps[0].get("Modality") or "") if steps else "",
    )


def _observation(finding: dict[str, Any]) -> ReportObservation:
    return ReportObservation(
        code=finding["code"],
        label=finding["label"],
        value=round(float(finding["score"]), 3),
        unit="1",
        critical=bool(finding["critical"]),
    )


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value) if value not in (None, "") else None
