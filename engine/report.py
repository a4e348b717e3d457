"""The contract for reports going back to the EHR: one study's report, whatever made it.

A preliminary report drafted from AI results (assistant-mode models), or a
final report signed in the reporting system (ORU in, or the admin API),
becomes one :class:`StudyReport`. The results-to-ehr channel turns it into an
ORU^R01 (HL7 v2.5.1, over MLLP) and FHIR R4 resources (DiagnosticReport with
Observations and an ImagingStudy reference, basedOn the ServiceRequest).
A final report supersedes the preliminary one for the same accession.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.ai_result import AIFinding

__all__ = ["ReportObservation", "ReportPatient", "ReportProcedure", "StudyReport"]

#: HL7 result status (OBR-25/OBX-11): P preliminary, F final, C correction.
ReportStatus = Literal["P", "F", "C"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReportPatient(_Strict):
    """Who the study belongs to (from the order)."""

    id: str = Field(min_length=1)
    issuer: str | None = None
    name: str = Field(default="", description="DICOM PN: FAMILY^GIVEN^MIDDLE")
    birth_date: str | None = Field(default=None, description="YYYYMMDD")
    sex: str | None = Field(default=None, description="M, F, O, U")


class ReportProcedure(_Strict):
    """What was ordered and done."""

    code: str = ""
    description: str = ""
    coding_system: str = Field(default="L", description="HL7 coding system of the code")
    modality: str = ""


class ReportObservation(_Strict):
    """One OBX / FHIR Observation: a finding or a measurement."""

    code: str = Field(min_length=1)
    label: str = Field(min_length=1)
    coding_system: str = "99MERIDIAN"
    value: str | float
    unit: str | None = None
    critical: bool = False


class StudyReport(_Strict):
    """One study's report, preliminary (AI-drafted) or final (signed)."""

    study_instance_uid: str = Field(min_length=1)
    accession_number: str = Field(min_length=1)
    placer_order_number: str | None = None
    filler_order_number: str | None = None
    patient: ReportPatient
    procedure: ReportProcedure = Field(default_factory=ReportProcedure)
    status: ReportStatus
    text: str = Field(default="", description="the report text (lines separated by \\n)")
    observations: list[ReportObservation] = Field(default_factory=list)
    findings: list[AIFinding] = Field(default_factory=list)
    ai_models: list[str] = Field(default_factory=list, description="'name version' of models")
    author: str | None = Field(default=None, description="the signing radiologist (final)")
    observed_at: datetime | None = Field(default=None, description="when the study was done")
    reported_at: datetime

    @field_validator("observed_at", "reported_at")
    @classmethod
    def _zoned(cls, value: datetime | None) -> datetime | None:
        # An HL7 TS without an offset is the sender's local time, which for a
        # hospital's own systems is the hub's: FHIR needs the zone spelled out.
        if value is not None and value.tzinfo is None:
            return value.astimezone()
        return value
