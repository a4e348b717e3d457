"""A radiologist's report as the admin API takes it, and the StudyReport it becomes.

The body names the study (accession number and/or Study Instance UID), the status
and the text; what the EHR also needs (patient, procedure, order numbers) is taken
from the study's order in the Modality Worklist when the body leaves it out. Given
values that contradict the order are refused: a report filed against the wrong
patient is worse than no report.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydicom import Dataset

from engine.errors import MessageError
from engine.report import ReportObservation, ReportProcedure, ReportStatus, StudyReport
from engine.validation import describe_validation_error

__all__ = ["PatientIn", "ProcedureIn", "ReportSubmission", "build_report"]

_UID = r"^[0-9]+(\.[0-9]+)*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PatientIn(_Strict):
    """The patient, when the study has no order in the worklist (or to check against it)."""

    id: str = Field(min_length=1, max_length=64)
    issuer: str | None = Field(default=None, max_length=64)
    name: str | None = Field(default=None, max_length=200, description="DICOM PN FAMILY^GIVEN")
    birth_date: str | None = Field(default=None, pattern=r"^\d{8}$")
    sex: str | None = Field(default=None, pattern=r"^[MFOU]$")


class ProcedureIn(_Strict):
    """What was done, when the order does not say."""

    code: str = Field(default="", max_length=64)
    description: str = Field(default="", max_length=200)
    coding_system: str = Field(default="L", max_length=20)
    modality: str = Field(default="", max_length=16)


class ReportSubmission(_Strict):
    """Body of ``POST /api/reports``: one study's report, signed by ``author``."""

    accession_number: str | None = Field(default=None, min_length=1, max_length=64)
    study_instance_uid: str | None = Field(default=None, max_length=64, pattern=_UID)
    status: ReportStatus = Field(default="F", description="F final, P preliminary, C corrected")
    text: str = Field(default="", max_length=100_000, description="the report text")
    findings: str = Field(default="", max_length=100_000)
    impression: str = Field(default="", max_length=100_000)
    author: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="the reading radiologist, DICOM PN FAMILY^GIVEN (required for F and C)",
    )
    observed_at: datetime | None = Field(default=None, description="when the study was done")
    reported_at: datetime | None = Field(default=None, description="default: now")
    patient: PatientIn | None = None
    procedure: ProcedureIn | None = None
    placer_order_number: str | None = Field(default=None, max_length=64)
    filler_order_number: str | None = Field(default=None, max_length=64)
    observations: list[ReportObservation] = Field(default_factory=list, max_length=200)

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if not (self.accession_number or self.study_instance_uid):
            raise ValueError("give accession_number and/or study_instance_uid")
        if not (self.text.strip() or self.findings.strip() or self.impression.strip()):
            raise ValueError("the report has no text (text, findings or impression)")
        if self.status in ("F", "C") and not self.author:
            raise ValueError("a final or corrected report needs its author (the radiologist)")
        return self

    def report_text(self) -> str:
        """The text as the EHR shows it: free text, then FINDINGS and IMPRESSION paragraphs."""
        parts = [self.text.strip()] if self.text.strip() else []
        if self.findings.strip():
            parts.append(f"FINDINGS: {self.findings.strip()}")
        if self.impression.strip():
            parts.append(f"IMPRESSION: {self.impression.strip()}")
        return "\n\n".join(parts)


def build_report(
    body: ReportSubmission, order: Dataset | None, *, now: datetime | None = None
) -> StudyReport:
    """The StudyReport for ``body``, completed from ``order``; MessageError says what is wrong."""
    if order is not None:
        _check_against_order(body, order)
    accession = body.accession_number or _text(order, "AccessionNumber")
    study_uid = body.study_instance_uid or _text(order, "StudyInstanceUID")
    patient = _patient(body, order)
    procedure = _procedure(body, order)
    missing = [
        what
        for what, value in (
            ("accession_number", accession),
            ("study_instance_uid", study_uid),
            ("patient.id", patient["id"]),
            ("procedure.code or procedure.description", procedure.code or procedure.description),
        )
        if not value
    ]
    if missing:
        where = "the study's order in the worklist lacks" if order else "no order in the worklist:"
        raise MessageError(f"{where} give {', '.join(missing)}")
    try:
        return StudyReport.model_validate(
            {
                "study_instance_uid": study_uid,
                "accession_number": accession,
                "placer_order_number": body.placer_order_number
                or _text(order, "PlacerOrderNumberImagingServiceRequest"),
                "filler_order_number": body.filler_order_number
                or _text(order, "FillerOrderNumberImagingServiceRequest"),
                "patient": patient,
                "procedure": procedure,
                "status": body.status,
                "text": body.report_text(),
                "observations": body.observations,
                "author": body.author,
                "observed_at": body.observed_at,
                "reported_at": body.reported_at or now or datetime.now(UTC),
            }
        )
    except ValidationError as exc:
        raise MessageError(f"not a valid report: {describe_validation_error(exc)}") from exc


def _check_against_order(body: ReportSubmission, order: Dataset) -> None:
    """Values the body gives must be the order's (no values quoted: they are PHI)."""
    checks = (
        ("accession_number", body.accession_number, "AccessionNumber"),
        ("study_instance_uid", body.study_instance_uid, "StudyInstanceUID"),
        ("patient.id", body.patient.id if body.patient else None, "PatientID"),
    )
    for name, given, keyword in checks:
        known = _text(order, keyword)
        if given and known and given != known:
            raise MessageError(f"{name} does not match the study's order in the worklist")


def _patient(body: ReportSubmission, order: Dataset | None) -> dict[str, str | None]:
    """The patient's fields (validated as :class:`ReportPatient` with the report)."""
    given = body.patient
    return {
        "id": (given.id if given else None) or _text(order, "PatientID") or "",
        "issuer": (given.issuer if given else None) or _text(order, "IssuerOfPatientID"),
        "name": (given.name if given else None) or _text(order, "PatientName") or "",
        "birth_date": (given.birth_date if given else None) or _text(order, "PatientBirthDate"),
        "sex": (given.sex if given else None) or _text(order, "PatientSex"),
    }


def _procedure(body: ReportSubmission, order: Dataset | None) -> ReportProcedure:
    given = body.procedure or ProcedureIn()
    codes = (order.get("RequestedProcedureCodeSequence") or []) if order else []
    code = codes[0] if codes else Dataset()
    steps = (order.get("ScheduledProcedureStepSequence") or []) if order else []
    if given.code or given.description:
        return ReportProcedure(**given.model_dump())
    return ReportProcedure(
        code=_text(code, "CodeValue") or "",
        description=_text(order, "RequestedProcedureDescription") or "",
        coding_system=_text(code, "CodingSchemeDesignator") or "L",
        modality=given.modality or (_text(steps[0], "Modality") or "" if steps else ""),
    )


def _text(ds: Dataset | None, keyword: str) -> str | None:
    value = ds.get(keyword) if ds is not None else None
    return str(value) if value not in (None, "") else None
