"""A performed procedure step's attributes: PS3.4 F.7.2 rules, links to orders, its event.

The Modality Performed Procedure Step SOP Class (PS3.4 F.7) has the SCU (the
modality) N-CREATE a step IN PROGRESS, then N-SET it to COMPLETED or
DISCONTINUED. This module knows the attribute rules of Table F.7.2-1: Type 1
attributes on N-CREATE and in the final state, the attributes an N-SET may not
change. Type 2 attributes are not required to be present, since many modalities
omit empty ones; "not allowed" attributes resent in an N-SET are ignored (the
N-CREATE values stay) rather than refused, for the same reason.

:class:`ProcedureStepEvent` is what the ``mpps`` channel receives, one per status
change and linked order. A refusal is a :class:`StepRefusedError`; its
``reason`` never quotes a value (no PHI), and the SCP turns its kind into a
DIMSE status.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict
from pydicom import Dataset

from engine.errors import MessageError, ParseError

__all__ = [
    "FINAL_STATUSES",
    "NOT_SETTABLE",
    "STEP_STATUSES",
    "DuplicateStepError",
    "FinalStepError",
    "InvalidStepError",
    "ProcedureStepEvent",
    "StepLink",
    "StepRefusedError",
    "StepStatus",
    "UnknownStepError",
    "build_event",
    "check_create",
    "check_final",
    "check_set",
    "merge_set",
    "step_json",
    "step_links",
    "text",
]

StepStatus = Literal["IN PROGRESS", "COMPLETED", "DISCONTINUED"]
STEP_STATUSES: frozenset[str] = frozenset(get_args(StepStatus))
FINAL_STATUSES = frozenset({"COMPLETED", "DISCONTINUED"})

# PS3.4 Table F.7.2-1: Type 1 on N-CREATE, and Type 1 in the final state.
_CREATE_TYPE1 = (
    "ScheduledStepAttributesSequence",
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepStatus",
    "Modality",
)
_FINAL_TYPE1 = ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime")
#: "Not allowed" in an N-SET (Table F.7.2-1): who, what and when the step was.
NOT_SETTABLE = frozenset(
    {
        "ScheduledStepAttributesSequence",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "ReferencedPatientSequence",
        "PerformedProcedureStepID",
        "PerformedStationAETitle",
        "PerformedStationName",
        "PerformedLocation",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "Modality",
        "StudyID",
    }
)
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_SPECIFIC_CHARACTER_SET = "00080005"


class ProcedureStepEvent(BaseModel):
    """One status change of a performed procedure step, for one linked order.

    Dates are DICOM DA ``YYYYMMDD``, times TM ``HHMMSS[.f]``, the patient name a
    DICOM PN; absent values are ''. ``event_id`` is the same each time the same
    event is delivered (a channel can drop the duplicate); ``control_id``
    (20 characters, derived from ``event_id``) is meant for MSH-10.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str
    control_id: str
    sop_instance_uid: str
    status: StepStatus
    worklist_key: str | None = None
    accession_number: str = ""
    study_instance_uid: str = ""
    requested_procedure_id: str = ""
    scheduled_procedure_step_id: str = ""
    placer_order_number: str = ""
    filler_order_number: str = ""
    procedure_code: str = ""
    procedure_coding_scheme: str = ""
    procedure_description: str = ""
    performed_procedure_step_id: str = ""
    modality: str = ""
    station_ae_title: str = ""
    performed_start_date: str = ""
    performed_start_time: str = ""
    performed_end_date: str = ""
    performed_end_time: str = ""
    discontinuation_reason: str = ""
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""


# -- refusals -----------------------------------------------------------------------------


class StepRefusedError(MessageError):
    """An N-CREATE or N-SET that must be refused; ``reason`` names no value (no PHI)."""


class DuplicateStepError(StepRefusedError):
    """N-CREATE of a SOP Instance UID already known."""


class UnknownStepError(StepRefusedError):
    """N-SET of a SOP Instance UID never created."""


class FinalStepError(StepRefusedError):
    """N-SET of a step already COMPLETED or DISCONTINUED."""


class InvalidStepError(StepRefusedError):
    """An attribute is ``missing`` (absent), ``empty`` (Type 1 without value) or ``invalid``."""

    def __init__(self, keyword: str, problem: Literal["missing", "empty", "invalid"]) -> None:
        self.keyword = keyword
        self.problem = problem
        super().__init__(f"{keyword}: {problem}")


# -- rules ----------------------------------------------------------------------------------


def step_json(ds: Dataset) -> dict[str, Any]:
    """An N-CREATE/N-SET data set as DICOM JSON, its values decoded to Unicode.

    Called before the writer's transaction: a data set that cannot be decoded is
    a :class:`ParseError` here, not a failed commit. Specific Character Set is
    dropped: the values are Unicode from now on, which is also how PS3.4
    F.7.2.2.3 wants the character sets of an N-SET combined with earlier ones.
    """
    try:
        attributes = ds.to_json_dict()
    except Exception as exc:  # pydicom decodes lazily: any element may fail here
        raise ParseError(f"the attribute list cannot be decoded ({type(exc).__name__})") from exc
    attributes.pop(_SPECIFIC_CHARACTER_SET, None)
    return attributes


def check_create(ds: Dataset) -> None:
    """PS3.4 F.7.2.1: Type 1 attributes present and valued, dates/times valid, IN PROGRESS."""
    _require(ds, _CREATE_TYPE1)
    for item in ds.ScheduledStepAttributesSequence:
        _require(item, ("StudyInstanceUID",))
    _check_dates(ds)
    if text(ds, "PerformedProcedureStepStatus") != "IN PROGRESS":
        # F.7.2.1.3: a step is created IN PROGRESS and nothing else (0106H).
        raise InvalidStepError("PerformedProcedureStepStatus", "invalid")


def check_set(modifications: Dataset) -> None:
    """An N-SET's own values: a known status, valid dates/times."""
    status = modifications.get("PerformedProcedureStepStatus")
    if status is not None and text(modifications, "PerformedProcedureStepStatus") not in (
        STEP_STATUSES
    ):
        raise InvalidStepError("PerformedProcedureStepStatus", "invalid")
    _check_dates(modifications)


def check_final(ds: Dataset) -> None:
    """The final state's Type 1 attributes: end date and time; a series when COMPLETED."""
    _require(ds, _FINAL_TYPE1)
    if text(ds, "PerformedProcedureStepStatus") == "COMPLETED":
        _require(ds, ("PerformedSeriesSequence",))


def merge_set(current: Dataset, modifications: Dataset) -> Dataset:
    """``current`` with an N-SET's values (a sequence is replaced whole, as F.7.2.2 says)."""
    for element in modifications:
        if element.keyword not in NOT_SETTABLE:
            current[element.tag] = element
    return current


def _require(ds: Dataset, keywords: Iterable[str]) -> None:
    for keyword in keywords:
        if keyword not in ds:
            raise InvalidStepError(keyword, "missing")
        if ds[keyword].is_empty:
            raise InvalidStepError(keyword, "empty")


def _check_dates(ds: Dataset) -> None:
    for prefix in ("PerformedProcedureStepStart", "PerformedProcedureStepEnd"):
        for suffix, pattern in (("Date", _DATE), ("Time", _TIME)):
            value = text(ds, prefix + suffix)
            # ACR-NEMA style "HH:MM:SS" is still sent by old modalities.
            if value and not pattern.fullmatch(value.replace(":", "")):
                raise InvalidStepError(prefix + suffix, "invalid")


def text(ds: Dataset, keyword: str) -> str:
    """An attribute as stripped text ('' when absent or empty)."""
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _first(ds: Dataset, keyword: str) -> Dataset:
    items = ds.get(keyword)
    return items[0] if items else Dataset()


# -- links and events -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepLink:
    """One ScheduledStepAttributesSequence item: the scheduled step that was performed."""

    accession_number: str
    study_instance_uid: str
    scheduled_procedure_step_id: str
    requested_procedure_id: str


def step_links(ds: Dataset) -> list[StepLink]:
    """The distinct scheduled steps a step performed; an unscheduled step has one empty link."""
    links = [
        StepLink(
            text(item, "AccessionNumber"),
            text(item, "StudyInstanceUID"),
            text(item, "ScheduledProcedureStepID"),
            text(item, "RequestedProcedureID"),
        )
        for item in ds.get("ScheduledStepAttributesSequence") or []
    ]
    return list(dict.fromkeys(links)) or [StepLink("", "", "", "")]


def build_event(
    ds: Dataset,
    *,
    sop_instance_uid: str,
    link: StepLink,
    order_key: str | None,
    order: Dataset | None,
    index: int,
) -> ProcedureStepEvent:
    """The event of the step's current status for one linked order (``order``: its item).

    Values of the step win; the worklist item fills in what a step does not carry
    (order numbers, the requested procedure code) or left empty.
    """
    item = order if order is not None else Dataset()
    status = text(ds, "PerformedProcedureStepStatus")
    # The code of what was performed; else the one of what was ordered.
    code = _first(ds, "ProcedureCodeSequence")
    if not code.get("CodeValue"):
        code = _first(item, "RequestedProcedureCodeSequence")
    event_id = f"{sop_instance_uid}|{status}|{index}"
    reason = _first(ds, "PerformedProcedureStepDiscontinuationReasonCodeSequence")
    return ProcedureStepEvent.model_validate(
        {
            "event_id": event_id,
            "control_id": "MPPS" + hashlib.sha256(event_id.encode()).hexdigest()[:16].upper(),
            "sop_instance_uid": sop_instance_uid,
            "status": status,
            "worklist_key": order_key,
            "accession_number": link.accession_number or text(item, "AccessionNumber"),
            "study_instance_uid": link.study_instance_uid or text(item, "StudyInstanceUID"),
            "requested_procedure_id": link.requested_procedure_id
            or text(item, "RequestedProcedureID"),
            "scheduled_procedure_step_id": link.scheduled_procedure_step_id,
            "placer_order_number": text(item, "PlacerOrderNumberImagingServiceRequest"),
            "filler_order_number": text(item, "FillerOrderNumberImagingServiceRequest"),
            "procedure_code": text(code, "CodeValue"),
            "procedure_coding_scheme": text(code, "CodingSchemeDesignator"),
            "procedure_description": text(ds, "PerformedProcedureStepDescription")
            or text(code, "CodeMeaning"),
            "performed_procedure_step_id": text(ds, "PerformedProcedureStepID"),
            "modality": text(ds, "Modality"),
            "station_ae_title": text(ds, "PerformedStationAETitle"),
            "performed_start_date": text(ds, "PerformedProcedureStepStartDate"),
            "performed_start_time": text(ds, "PerformedProcedureStepStartTime"),
            "performed_end_date": text(ds, "PerformedProcedureStepEndDate"),
            "performed_end_time": text(ds, "PerformedProcedureStepEndTime"),
            "discontinuation_reason": text(reason, "CodeMeaning"),
            "patient_id": text(ds, "PatientID") or text(item, "PatientID"),
            "issuer_of_patient_id": text(ds, "IssuerOfPatientID")
            or text(item, "IssuerOfPatientID"),
            "patient_name": text(ds, "PatientName") or text(item, "PatientName"),
        }
    )
