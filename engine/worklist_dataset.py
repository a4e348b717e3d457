"""Worklist items as pydicom datasets: building, merging and the indexed columns.

A :class:`~engine.worklist_item.WorklistItem` carries DICOM keywords to plain
values. This module turns them into a validated :class:`pydicom.Dataset`,
merges an update into a stored item, sets the Scheduled Procedure Step Status
and derives the values of the indexed match columns of ``worklist_items``.

One worklist item is one Scheduled Procedure Step (PS3.4 K.6: each C-FIND
response carries exactly one item in ScheduledProcedureStepSequence), so an
item with more than one SPS is refused: the transform emits one item per SPS.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydicom import DataElement, Dataset, Sequence
from pydicom.config import IGNORE, RAISE
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.multival import MultiValue

from engine.errors import TransformError

__all__ = [
    "ENDED_STATUSES",
    "SPS_KEYWORD",
    "SPS_STATUSES",
    "dataset_from_attributes",
    "index_columns",
    "match_form",
    "merge_item",
    "normalize_time",
    "sps_status",
    "with_sps_status",
]

SPS_KEYWORD = "ScheduledProcedureStepSequence"
_SPS_TAG = 0x00400100

#: Defined terms of Scheduled Procedure Step Status (0040,0020), PS3.3 C.4.10.
SPS_STATUSES = frozenset(
    {
        "SCHEDULED",
        "ARRIVED",
        "READY",
        "STARTED",
        "DEPARTED",
        "COMPLETED",
        "CANCELED",
        "DISCONTINUED",
    }
)
#: Statuses after which the item leaves the worklist (no query returns it): a
#: completed procedure is not work for a modality any more.
ENDED_STATUSES = frozenset({"COMPLETED", "CANCELED", "DISCONTINUED"})

_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")


def dataset_from_attributes(attributes: Mapping[str, Any], path: str = "") -> Dataset:
    """Build a dataset from keyword → value pairs, validating every value by its VR.

    Raises :class:`TransformError` naming the keyword (with its path inside
    sequences) when a keyword is unknown or a value is invalid for its VR.
    """
    ds = Dataset()
    for keyword, value in attributes.items():
        where = f"{path}{keyword}"
        if keyword == "SpecificCharacterSet":
            # Values are Unicode here; the character set is chosen per response.
            continue
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise TransformError(f"{where}: unknown DICOM keyword")
        vr = dictionary_VR(tag)
        if vr == "SQ":
            ds.add(DataElement(tag, vr, _sequence(value, where)))
        else:
            ds.add(_element(tag, vr, value, where))
    if len(ds.get(SPS_KEYWORD, [])) > 1:
        raise TransformError(
            f"{path}{SPS_KEYWORD}: a worklist item is one scheduled procedure step; "
            "emit one item per step"
        )
    return ds


def _sequence(value: Any, where: str) -> Sequence:
    if value is None:
        return Sequence()
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise TransformError(f"{where}: a sequence must be a list of keyword mappings")
    return Sequence(
        [dataset_from_attributes(item, f"{where}[{i}].") for i, item in enumerate(value)]
    )


def _element(tag: int, vr: str, value: Any, where: str) -> DataElement:
    """A data element whose value pydicom validates for its VR (raising, not warning)."""
    try:
        return DataElement(tag, vr, value, validation_mode=RAISE)
    except (ValueError, TypeError) as exc:
        # pydicom's message names the VR and the length, never the value's meaning.
        raise TransformError(f"{where}: {exc}") from exc


def merge_item(existing: Dataset, incoming: Dataset) -> Dataset:
    """Return ``existing`` updated by ``incoming`` (a new dataset; inputs untouched).

    Top-level attributes of ``incoming`` replace those of ``existing``. The
    single SPS item is merged key by key, so an update that only moves the
    start time keeps the station, modality and the rest of the step.
    StudyInstanceUID is kept unless ``incoming`` carries one (it then wins).
    """
    # Copies: the merged item is modified afterwards (its status) and must
    # share no element objects with either input.
    merged = _clone(existing)
    addition = _clone(incoming)
    for elem in addition:
        if elem.keyword != SPS_KEYWORD:
            merged.add(elem)
    if SPS_KEYWORD in addition:
        steps = [*merged.get(SPS_KEYWORD, [])[:1], *addition.ScheduledProcedureStepSequence]
        step = Dataset()
        for source in steps:
            step.update(source)
        merged[_SPS_TAG] = DataElement(_SPS_TAG, "SQ", Sequence([step] if steps else []))
    return merged


def _clone(ds: Dataset) -> Dataset:
    """A copy with its own element objects (values are immutable or replaced, never mutated).

    Much cheaper than ``copy.deepcopy``, which dominated the cost of apply().
    """
    copied = Dataset()
    for elem in ds:
        if elem.VR == "SQ":
            value: Any = Sequence([_clone(item) for item in elem.value])
        else:
            value = elem.value
        copied.add(DataElement(elem.tag, elem.VR, value, validation_mode=IGNORE))
    return copied


def sps_status(ds: Dataset) -> str | None:
    """The Scheduled Procedure Step Status of the item's step, if it has one."""
    steps = ds.get(SPS_KEYWORD)
    if not steps:
        return None
    value = steps[0].get("ScheduledProcedureStepStatus")
    return str(value) if value else None


def with_sps_status(ds: Dataset, status: str) -> Dataset:
    """Set ScheduledProcedureStepStatus in the item's step (creating the step if absent)."""
    if status not in SPS_STATUSES:
        allowed = ", ".join(sorted(SPS_STATUSES))
        raise TransformError(f"ScheduledProcedureStepStatus: {status!r} is not one of {allowed}")
    if not ds.get(SPS_KEYWORD):
        ds.ScheduledProcedureStepSequence = Sequence([Dataset()])
    ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = status
    return ds


def match_form(person_name: str) -> str:
    """The case-folded form PN values are matched on.

    PS3.4 C.2.2.2.1 lets an SCP match PN values case-insensitively, and
    modalities' operators type names in any case. Both the stored column and
    the query value go through this same Python function, so SQLite and
    PostgreSQL compare identical strings whatever their collations.
    """
    return person_name.upper()


def normalize_time(value: str, *, upper: bool = False) -> str:
    """A DICOM TM as 12 fixed-width digits ``HHMMSSffffff`` that sort as times.

    Missing components are filled with their lowest value, or with their
    highest when ``upper`` is set: as the upper bound of a range, "0900"
    covers the whole minute 09:00. Raises ``ValueError`` on a malformed TM.
    """
    found = _TIME.match(value.replace(":", ""))
    if found is None:
        raise ValueError(f"invalid time {value!r}")
    hours, minutes, seconds, fraction = found.groups()
    fill_minute, fill_fraction = ("59", "9") if upper else ("00", "0")
    return (
        hours
        + (minutes or fill_minute)
        + (seconds or fill_minute)
        + (fraction or "").ljust(6, fill_fraction)
    )


def index_columns(ds: Dataset) -> dict[str, str | None]:
    """The values of the indexed match columns for one item dataset."""
    step = ds[SPS_KEYWORD][0] if ds.get(SPS_KEYWORD) else Dataset()
    patient_name = _text(ds, "PatientName")
    performing = _text(step, "ScheduledPerformingPhysicianName")
    start_time = _text(step, "ScheduledProcedureStepStartTime")
    try:
        normalized_time = normalize_time(start_time) if start_time else ""
    except ValueError as exc:
        raise TransformError(f"{SPS_KEYWORD}[0].ScheduledProcedureStepStartTime: {exc}") from exc
    return {
        "patient_id": _text(ds, "PatientID"),
        "patient_name": patient_name,
        "patient_name_match": match_form(patient_name),
        "accession_number": _text(ds, "AccessionNumber"),
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "requested_procedure_id": _text(ds, "RequestedProcedureID"),
        "modality": _text(step, "Modality"),
        "station_ae": _text(step, "ScheduledStationAETitle"),
        "sps_start_date": _text(step, "ScheduledProcedureStepStartDate"),
        "sps_start_time": normalized_time,
        "sps_id": _text(step, "ScheduledProcedureStepID"),
        "performing_physician_match": match_form(performing),
        "status": sps_status(ds) or "",
    }


def _text(ds: Dataset, keyword: str) -> str:
    """An attribute as text ('' when absent); multi-valued attributes index their first value."""
    value = ds.get(keyword)
    if value is None or value == "":
        return ""
    if isinstance(value, MultiValue):
        # VM 1-n (several station AE titles, say): the first value is indexed.
        return str(value[0]) if value else ""
    return str(value)
