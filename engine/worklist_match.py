"""C-FIND matching (PS3.4 C.2.2.2) for the worklist, translated into SQL.

:func:`where_clauses` reads the matching keys of a Modality Worklist
identifier and returns SQL conditions on the indexed columns of
``worklist_items``, so the database does the matching with its indexes:

* empty value, or a value of only ``*``: universal matching (no condition);
* ``*`` / ``?`` wildcards: ``GLOB`` on SQLite (case-sensitive, index-friendly)
  and ``LIKE`` elsewhere (case-sensitive on PostgreSQL), with the pattern's own
  special characters escaped;
* PN values are matched case-insensitively on the upper-cased ``*_match``
  columns (see :func:`engine.worklist_dataset.match_form`);
* UID list matching on StudyInstanceUID (backslash-separated values);
* DA and TM range matching (``A-B``, ``A-``, ``-B``); a TM given to the minute
  covers that whole minute.

Keys that are not matching keys here are return keys only: the standard lets
an SCP not match on optional keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.multival import MultiValue
from sqlalchemy import ColumnElement, Table, and_, or_

from engine.errors import ParseError
from engine.worklist_dataset import SPS_KEYWORD, match_form, normalize_time

__all__ = ["where_clauses"]

Condition = ColumnElement[bool]


@dataclass(frozen=True, slots=True)
class _Key:
    """One matching key: the column it is matched on and how."""

    column: str
    kind: str  # "string" | "pn" | "uid" | "date" | "time"


_TOP_LEVEL_KEYS: Mapping[str, _Key] = {
    "PatientID": _Key("patient_id", "string"),
    "PatientName": _Key("patient_name_match", "pn"),
    "AccessionNumber": _Key("accession_number", "string"),
    "StudyInstanceUID": _Key("study_instance_uid", "uid"),
    "RequestedProcedureID": _Key("requested_procedure_id", "string"),
}

_STEP_KEYS: Mapping[str, _Key] = {
    "Modality": _Key("modality", "string"),
    "ScheduledStationAETitle": _Key("station_ae", "string"),
    "ScheduledProcedureStepStartDate": _Key("sps_start_date", "date"),
    "ScheduledProcedureStepStartTime": _Key("sps_start_time", "time"),
    "ScheduledProcedureStepID": _Key("sps_id", "string"),
    "ScheduledProcedureStepStatus": _Key("status", "string"),
    "ScheduledPerformingPhysicianName": _Key("performing_physician_match", "pn"),
}

_DATE = re.compile(r"^\d{8}$")


def where_clauses(identifier: Dataset, table: Table, dialect: str) -> list[Condition]:
    """SQL conditions selecting the items that match ``identifier``.

    ``dialect`` is the SQLAlchemy dialect name (wildcards use ``GLOB`` on
    "sqlite"). Raises :class:`ParseError` when a date, time or range is
    malformed (the SCP answers "identifier does not match SOP class").
    """
    conditions = list(_conditions(identifier, _TOP_LEVEL_KEYS, table, dialect))
    steps = identifier.get(SPS_KEYWORD)
    if steps:
        conditions.extend(_conditions(steps[0], _STEP_KEYS, table, dialect))
    return conditions


def _conditions(
    ds: Dataset, keys: Mapping[str, _Key], table: Table, dialect: str
) -> Iterable[Condition]:
    for keyword, key in keys.items():
        values = _values(ds.get(keyword))
        if not values:
            continue
        condition = _match(key, values, table, dialect, keyword)
        if condition is not None:
            yield condition


def _values(value: object) -> list[str]:
    """The non-empty values of one key ([] means universal matching)."""
    if value is None:
        return []
    if isinstance(value, MultiValue):
        return [str(v) for v in value if str(v)]
    text = str(value)
    return [text] if text else []


def _match(
    key: _Key, values: list[str], table: Table, dialect: str, keyword: str
) -> Condition | None:
    column = table.c[key.column]
    if key.kind == "uid":
        # UID list matching: any of the listed UIDs.
        return column.in_(values) if len(values) > 1 else column == values[0]
    if key.kind == "date":
        return _range(column, values[0], keyword, _date_bounds)
    if key.kind == "time":
        return _range(column, values[0], keyword, _time_bounds)
    if key.kind == "pn":
        values = [match_form(v) for v in values]
    alternatives = [_string_match(column, v, dialect) for v in values]
    if any(a is None for a in alternatives):
        return None  # one universal value makes the whole key universal
    present = [a for a in alternatives if a is not None]
    return present[0] if len(present) == 1 else or_(*present)


def _string_match(column: ColumnElement[str], value: str, dialect: str) -> Condition | None:
    """Single value or wildcard matching of one value."""
    if set(value) == {"*"}:
        return None
    if "*" not in value and "?" not in value:
        return column == value
    if dialect == "sqlite":
        return column.op("GLOB")(_glob_pattern(value))
    return column.like(_like_pattern(value), escape="!")


def _glob_pattern(value: str) -> str:
    """DICOM wildcards as a GLOB pattern: * and ? carry over, a literal [ is bracketed."""
    return value.replace("[", "[[]")


def _like_pattern(value: str) -> str:
    """DICOM wildcards as a LIKE pattern escaped with '!'."""
    escaped = value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return escaped.replace("*", "%").replace("?", "_")


Bounds = tuple[str | None, str | None]


def _range(
    column: ColumnElement[str],
    value: str,
    keyword: str,
    bounds_of: Callable[[str], Bounds],
) -> Condition:
    """Single value or range matching on a normalized, fixed-width text column."""
    try:
        lower, upper = bounds_of(value)
    except ValueError as exc:
        raise ParseError(f"{keyword}: invalid value or range") from exc
    # Items without a value never match a non-universal key ('' is stored).
    conditions: list[Condition] = [column != ""]
    if lower is not None:
        conditions.append(column >= lower)
    if upper is not None:
        conditions.append(column <= upper)
    return and_(*conditions)


def _split_range(value: str) -> tuple[str, str] | None:
    if value.count("-") > 1:
        raise ValueError("more than one '-'")
    if "-" not in value:
        return None
    start, end = value.split("-")
    if not start and not end:
        raise ValueError("empty range")
    return start, end


def _date(value: str) -> str:
    value = value.replace(".", "")  # ACR-NEMA style YYYY.MM.DD still appears
    if not _DATE.match(value):
        raise ValueError("invalid date")
    return value


def _date_bounds(value: str) -> Bounds:
    parts = _split_range(value)
    if parts is None:
        day = _date(value)
        return day, day
    start, end = parts
    return (_date(start) if start else None, _date(end) if end else None)


def _time_bounds(value: str) -> Bounds:
    parts = _split_range(value)
    if parts is None:
        return normalize_time(value), normalize_time(value, upper=True)
    start, end = parts
    return (
        normalize_time(start) if start else None,
        normalize_time(end, upper=True) if end else None,
    )
