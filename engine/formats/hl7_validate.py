"""Structure validation of the HL7 v2 messages Meridian emits, with hl7apy.

Two layers, both run before a message may be queued for a destination:

1. **The standard** (hl7apy, ``VALIDATION_LEVEL.STRICT``): segment order and groups of
   the message structure, required segments and fields, cardinality, data types of
   every field (a timestamp that is not a DTM, a value longer than its type allows).
2. **What an EHR needs of a result** (:func:`validate_oru_r01` only), rules hl7apy
   does not check because the standard makes them conditional or leaves them to
   tables: a PID (the PATIENT group is optional in the standard, but a result
   without a patient cannot be filed); OBR-25 present and from table 0123; every
   OBX with a value has a value type (OBX-2, table 0125), an NM value that is a
   number, OBX-8 from table 0078 and OBX-11 from table 0085.

Failures are :class:`~engine.errors.TransformError` whose reason names the segment
and field (``OBX 3: OBX-2 (value type) is empty but OBX-5 has a value``), never a
value: the reason is stored in the message browser and may be logged, and the values
of a result are PHI. hl7apy's own exception texts sometimes quote values, so they are
never passed on; the failing field is located by parsing segment by segment instead.

Use as a :data:`engine.transform.HL7Validator`::

    Transformer(config, env, hl7_validators=[validate_oru_r01])
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hl7apy import load_reference
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import (
    ChildNotFound,
    HL7apyException,
    InvalidEncodingChars,
    MaxChildLimitReached,
    MaxLengthReached,
    ParserError,
    UnsupportedVersion,
    ValidationError,
)
from hl7apy.parser import parse_field, parse_message, parse_segment

from engine.errors import TransformError

__all__ = ["VALIDATORS", "validate", "validate_oru_r01", "validator_for"]


def _table(codes: str) -> frozenset[str]:
    return frozenset(codes.split())


# HL7 v2.5.1 tables. hl7apy ships older copies (its 0125 lacks CWE), so they live here.
_VALUE_TYPES = _table(  # 0125 (OBX-2)
    "AD CE CF CK CN CNE CP CWE CX DR DT DTM ED FT ID IS MA MO NA NM PN RP SN ST TM TN TS TX "
    "XAD XCN XON XPN XTN"
)
_RESULT_STATUSES = _table("A C F I O P R S X Y Z")  # 0123 (OBR-25)
_OBSERVATION_STATUSES = _table("C D F I N O P R S U W X")  # 0085 (OBX-11)
_ABNORMAL_FLAGS = _table("L H LL HH < > N A AA U D B W S R I MS VS")  # 0078 (OBX-8)
_CONTROL = re.compile("[\x00-\x08\x0a-\x0c\x0e-\x1f\x7f]")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")  # the NM data type

# hl7apy's validation errors name elements (MSH.MSH_10, ORU_R01_PATIENT_RESULT.ORU_R01_...).
_MISSING = re.compile(r"Missing required child (?P<parent>\w+)\.(?P<child>\w+)")
_FIELD_NAME = re.compile(r"(?P<segment>[A-Z][A-Z0-9]{2})_(?P<number>\d+)")
_SAFE_VALIDATION_TEXT = re.compile(r"[\w .,:()\[\]<>'-]*")


@dataclass(frozen=True, slots=True)
class _Segment:
    """One segment split into fields (``fields[n]`` is field n, MSH included)."""

    name: str
    ordinal: int  # 1 = the first segment with this name
    fields: list[str]

    def field(self, number: int) -> str:
        return self.fields[number] if number < len(self.fields) else ""

    @property
    def label(self) -> str:
        """How a reason names this segment: ``OBX 3`` (the third OBX)."""
        return f"{self.name} {self.ordinal}"


def validate(text: str, message_structure: str) -> None:
    """Validate ER7 ``text`` (CR between segments) as ``message_structure``, e.g. ``ORU_R01``.

    Raises :class:`TransformError` naming the segment and field at fault.
    """
    try:
        _validate_standard(text, message_structure)
    except TransformError as exc:
        raise TransformError(f"{message_structure}: {exc}") from None


def validate_oru_r01(text: str) -> None:
    """Validate an ORU^R01 result: the v2 standard (hl7apy), then what an EHR needs."""
    validate(text, "ORU_R01")
    try:
        _check_result(_split(text))
    except TransformError as exc:
        raise TransformError(f"ORU_R01: {exc}") from None


#: Validators by message structure, for a channel setting that names one.
VALIDATORS: dict[str, Callable[[str], None]] = {"ORU_R01": validate_oru_r01}


def validator_for(message_structure: str) -> Callable[[str], None]:
    """The validator of a message structure: a specific one when known, else the standard."""
    specific = VALIDATORS.get(message_structure)
    if specific is not None:
        return specific

    def check(text: str) -> None:
        validate(text, message_structure)

    return check


# --- layer 1: hl7apy ---------------------------------------------------------------------


def _validate_standard(text: str, message_structure: str) -> None:
    _check_control_characters(text)
    message = _parse(text)
    if message.name != message_structure:
        raise TransformError(f"MSH-9 gives message structure {_safe_name(message.name)}")
    _check_segment_ids(text, message.version)
    try:
        message.validate()
    except ValidationError as exc:
        raise TransformError(_validation_reason(exc)) from None
    except (HL7apyException, ValueError, TypeError, KeyError, IndexError) as exc:
        raise TransformError(f"hl7apy could not validate it ({type(exc).__name__})") from None


def _check_control_characters(text: str) -> None:
    """No control characters but CR (segment end) and TAB: 0x0B/0x1C would break MLLP framing."""
    match = _CONTROL.search(text)
    if match is None:
        return
    segment_number = text.count("\r", 0, match.start()) + 1
    line_start = text.rfind("\r", 0, match.start()) + 1
    segment_id = _safe_name(text[line_start : line_start + 3])
    field_number = text.count(text[3:4] or "|", line_start, match.start())
    field_number += segment_id == "MSH"  # MSH-1 is the separator itself
    raise TransformError(
        f"segment {segment_number} ({segment_id}), field {field_number}: control character "
        f"0x{ord(match.group()):02X} (only CR may end a segment)"
    )


def _parse(text: str) -> Any:
    """hl7apy's strict parse; any failure becomes a PHI-free TransformError."""
    try:
        return parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    except UnsupportedVersion:
        raise TransformError("MSH-12: HL7 version not supported by the validator") from None
    except InvalidEncodingChars:
        raise TransformError("MSH-2: invalid encoding characters") from None
    except ParserError:
        raise TransformError("not an HL7 v2 message (no parseable MSH)") from None
    except MaxChildLimitReached as exc:
        child, parent = _group_name(exc.child.name), _group_name(exc.parent.name)
        raise TransformError(f"{child} repeats more often than {parent} allows") from None
    except (HL7apyException, ValueError, TypeError, KeyError, IndexError) as exc:
        raise TransformError(_locate_parse_fault(text, exc)) from None


def _check_segment_ids(text: str, version: str) -> None:
    """An unknown segment otherwise surfaces as a confusing "group missing" error."""
    for segment in _split(text):
        if segment.name.startswith("Z"):
            continue  # Z segments are site-defined: allowed where the structure allows
        try:
            load_reference(segment.name, "Segment", version)
        except ChildNotFound:
            raise TransformError(
                f"segment {_safe_name(segment.name)} is not an HL7 v{version} segment"
            ) from None


def _locate_parse_fault(text: str, exc: Exception) -> str:
    """Name the field hl7apy choked on by parsing one segment, then one field, at a time."""
    segments = _split(text)
    if not segments or segments[0].name != "MSH":
        return "not an HL7 v2 message (no MSH)"
    msh = segments[0]
    version = msh.field(12).split(msh.field(2)[:1] or "^")[0] or None
    chars = _encoding_chars(msh)
    for segment in segments[1:]:
        line = chars["FIELD"].join(segment.fields)
        try:
            parse_segment(line, version, chars, VALIDATION_LEVEL.STRICT)
        except Exception:  # hl7apy raises assorted types: find the field instead
            return f"{segment.label}: {_field_fault(segment, version, chars)}"
    return f"hl7apy could not parse the message ({type(exc).__name__})"


def _encoding_chars(msh: _Segment) -> dict[str, str]:
    """hl7apy's description of the delimiters, from MSH-1 and MSH-2."""
    chars = (msh.field(2) + "^~\\&"[len(msh.field(2)) :])[:4]
    return {
        "FIELD": msh.field(1),
        "COMPONENT": chars[0],
        "REPETITION": chars[1],
        "ESCAPE": chars[2],
        "SUBCOMPONENT": chars[3],
        "GROUP": "\r",
        "SEGMENT": "\r",
    }


def _field_fault(segment: _Segment, version: str | None, chars: dict[str, str]) -> str:
    for number in range(1, len(segment.fields)):
        value = segment.fields[number]
        if not value:
            continue
        name = f"{segment.name}_{number}"
        try:
            parse_field(value, name, version, chars, VALIDATION_LEVEL.STRICT)
        except MaxLengthReached as exc:
            return f"{segment.name}-{number} is longer than its data type allows ({exc.limit})"
        except Exception:
            return f"{segment.name}-{number} is not a valid {_datatype(name, version)}"
    return "the segment does not parse"


def _datatype(name: str, version: str | None) -> str:
    """The data type hl7apy expects of a field (``TS``), for the reason's wording."""
    try:
        field = parse_field("", name, version)
    except Exception:  # an unknown field: the reason stays generic
        return "value"
    return str(field.datatype or "value")


def _validation_reason(exc: ValidationError) -> str:
    """hl7apy's validation error in an analyst's words (its texts name elements only)."""
    text = str(exc)
    missing = _MISSING.fullmatch(text)
    if missing is not None:
        child = missing.group("child")
        field = _FIELD_NAME.fullmatch(child)
        if field is not None:
            return f"{field.group('segment')}-{field.group('number')} is required but empty"
        return f"{_group_name(child)} is required in {_group_name(missing.group('parent'))}"
    if _SAFE_VALIDATION_TEXT.fullmatch(text):
        return text
    return "the message does not match its structure"


def _group_name(name: object) -> str:
    """``ORU_R01_ORDER_OBSERVATION`` → ``ORDER_OBSERVATION group``; ``OBR`` → ``OBR segment``."""
    text = _safe_name(name)
    if len(text) == 3:
        return f"{text} segment"
    parts = text.split("_", 2)
    return f"{parts[2]} group" if len(parts) == 3 else text


def _safe_name(name: object) -> str:
    """An element name as hl7apy gives it, or a placeholder: never echo arbitrary text."""
    text = str(name)
    return text if re.fullmatch(r"[A-Z0-9_]{1,40}", text) else "(unknown)"


# --- layer 2: what an EHR needs of a result ------------------------------------------------


def _split(text: str) -> list[_Segment]:
    """Segments and fields, by the message's own field separator (MSH-1)."""
    lines = [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
    separator = lines[0][3] if lines and lines[0].startswith("MSH") and len(lines[0]) > 3 else "|"
    counts: dict[str, int] = {}
    segments = []
    for line in lines:
        fields = line.split(separator)
        name = fields[0]
        if name == "MSH":
            fields.insert(1, separator)  # MSH-1 is the separator itself: realign numbering
        counts[name] = counts.get(name, 0) + 1
        segments.append(_Segment(name, counts[name], fields))
    return segments


def _check_result(segments: list[_Segment]) -> None:
    if not any(segment.name == "PID" for segment in segments):
        raise TransformError(
            "PID segment is missing: an EHR cannot file a result without a patient"
        )
    component = segments[0].field(2)[:1] or "^"
    repetition = segments[0].field(2)[1:2] or "~"
    for segment in segments:
        if segment.name == "OBR":
            _check_obr(segment)
        elif segment.name == "OBX":
            _check_obx(segment, component, repetition)


def _check_obr(obr: _Segment) -> None:
    status = obr.field(25)
    if not status:
        raise TransformError(f"{obr.label}: OBR-25 (result status) is empty")
    if status not in _RESULT_STATUSES:
        raise TransformError(f"{obr.label}: OBR-25 (result status) is not in HL7 table 0123")


def _check_obx(obx: _Segment, component: str, repetition: str) -> None:
    value_type = obx.field(2).split(component)[0]
    value = obx.field(5)
    if not value_type:
        if value:
            raise TransformError(f"{obx.label}: OBX-2 (value type) is empty but OBX-5 has a value")
    elif value_type not in _VALUE_TYPES:
        raise TransformError(f"{obx.label}: OBX-2 (value type) is not in HL7 table 0125")
    if value_type == "NM" and value and not _NUMBER.fullmatch(value):
        raise TransformError(f"{obx.label}: OBX-5 is not a number but OBX-2 says NM")
    flags = [flag for flag in obx.field(8).split(repetition) if flag]
    if any(flag.split(component)[0] not in _ABNORMAL_FLAGS for flag in flags):
        raise TransformError(f"{obx.label}: OBX-8 (abnormal flags) is not in HL7 table 0078")
    if obx.field(11) not in _OBSERVATION_STATUSES:
        raise TransformError(f"{obx.label}: OBX-11 (result status) is not in HL7 table 0085")
