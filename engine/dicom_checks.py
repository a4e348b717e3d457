"""Cheap checks that transform output is well-formed DICOM: keywords and VR basics.

Run on every worklist item a template emits, before it leaves the transform step, so an
analyst sees ``item 1: attributes.ScheduledProcedureStepSequence[0].Modality: ...``
instead of a failure deep in the worklist store. Messages name the attribute path, the
VR and the rule, never the value (values are PHI: a birth date, a name).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from pydicom.config import RAISE
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import RE_VALID_UID
from pydicom.valuerep import validate_value

from engine.errors import TransformError

__all__ = ["check_attributes", "check_element"]

# Maximum value lengths (PS3.5 table 6.2-1) of the string VRs checked here.
_MAX_LENGTH = {"AE": 16, "AS": 4, "CS": 16, "DS": 16, "IS": 12, "LO": 64, "SH": 16, "UI": 64}
_TEXT_VRS = frozenset({"LT", "ST", "UT", "UC", "UR"})  # may contain a backslash
_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_CS_CHARS = re.compile(r"[A-Z0-9 _]*")
_TM = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?")
_PN_GROUPS = 3
_PN_COMPONENTS = 5
_PN_GROUP_LENGTH = 64


def check_attributes(attributes: Mapping[str, Any], path: str = "attributes") -> None:
    """Check every keyword (recursively in sequences) and value; raise on the first fault.

    The :class:`TransformError` message starts with the attribute path, e.g.
    ``attributes.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate``.
    """
    for keyword, value in attributes.items():
        where = f"{path}.{keyword}"
        check_element(keyword, value, where)


def check_element(keyword: str, value: Any, where: str) -> None:
    """Check one keyword and its value; ``where`` starts the error message."""
    if not isinstance(keyword, str) or tag_for_keyword(keyword) is None:
        raise TransformError(f"{where}: not a DICOM keyword")
    vr = dictionary_VR(keyword)
    if vr == "SQ":
        _check_sequence(value, where)
    else:
        _check_values(vr, value, where)


def _check_sequence(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise TransformError(f"{where}: a sequence (SQ) must be a list of keyword mappings")
    for index, item in enumerate(value):
        check_attributes(item, f"{where}[{index}]")


def _check_values(vr: str, value: Any, where: str) -> None:
    values = value if isinstance(value, list) else [value]
    for one in values:
        if one is None or one == "":
            continue  # empty: allowed for type 2 attributes, the SCP decides beyond that
        if isinstance(one, Mapping | list):
            raise TransformError(f"{where}: a {vr} value must be a single value, not a structure")
        _check_value(vr, one, where)


def _check_value(vr: str, value: Any, where: str) -> None:
    if vr in _NUMERIC_VRS or vr in {"IS", "DS"}:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise TransformError(f"{where}: {vr} must be a number")
        return
    if not isinstance(value, str):
        raise TransformError(
            f"{where}: {vr} must be text, not {type(value).__name__} (quote it or use {{{{ }}}})"
        )
    if vr not in _TEXT_VRS and "\\" in value:
        raise TransformError(f"{where}: {vr} value contains a backslash (DICOM value separator)")
    specific = _VR_CHECKS.get(vr)
    if specific is not None:
        specific(value, where)
    if vr in _MAX_LENGTH and len(value) > _MAX_LENGTH[vr]:
        raise TransformError(
            f"{where}: {vr} value is {len(value)} characters, max {_MAX_LENGTH[vr]}"
        )
    _pydicom_check(vr, value, where)


def _check_da(value: str, where: str) -> None:
    try:
        valid = len(value) == 8 and value.isdigit() and bool(datetime.strptime(value, "%Y%m%d"))
    except ValueError:
        valid = False
    if not valid:
        raise TransformError(f"{where}: DA must be a valid date YYYYMMDD")


def _check_tm(value: str, where: str) -> None:
    match = _TM.fullmatch(value)
    limits = (23, 59, 60)  # 60: a leap second
    if match is None or any(
        int(g) > lim for g, lim in zip(match.groups(), limits, strict=True) if g
    ):
        raise TransformError(f"{where}: TM must be HH[MM[SS[.FFFFFF]]] digits")


def _check_pn(value: str, where: str) -> None:
    groups = value.split("=")
    if len(groups) > _PN_GROUPS:
        raise TransformError(f"{where}: PN has {len(groups)} component groups, max {_PN_GROUPS}")
    for group in groups:
        if group.count("^") + 1 > _PN_COMPONENTS:
            raise TransformError(
                f"{where}: PN has {group.count('^') + 1} components, max {_PN_COMPONENTS} "
                "(family^given^middle^prefix^suffix)"
            )
        if len(group) > _PN_GROUP_LENGTH:
            raise TransformError(f"{where}: PN component group longer than {_PN_GROUP_LENGTH}")


def _check_cs(value: str, where: str) -> None:
    if not _CS_CHARS.fullmatch(value):
        raise TransformError(f"{where}: CS allows only upper-case letters, digits, space and _")


def _check_ui(value: str, where: str) -> None:
    if len(value) > 64 or not re.fullmatch(RE_VALID_UID, value):
        raise TransformError(f"{where}: UI must be a valid UID (digits and dots, max 64)")


_VR_CHECKS: dict[str, Callable[[str, str], None]] = {
    "DA": _check_da,
    "TM": _check_tm,
    "PN": _check_pn,
    "CS": _check_cs,
    "UI": _check_ui,
}


def _pydicom_check(vr: str, value: str, where: str) -> None:
    # Backstop for rules not written out above; pydicom's message quotes the value,
    # so only the VR is reported.
    try:
        validate_value(vr, value, RAISE)
    except (ValueError, TypeError) as exc:
        raise TransformError(f"{where}: not a valid {vr} value") from exc
