"""Stored message content split for display: HL7 v2 segment by segment, JSON pretty-printed.

HL7 fields are shown as sent (repetitions ``~`` and components ``^`` raw, escapes
not decoded): the analyst sees what was on the wire, with the field's standard
name beside it. MSH is numbered as the standard does: MSH-1 is the field
separator itself, MSH-2 the encoding characters.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from typing_extensions import TypedDict

from admin.hl7_fields import field_name, segment_description

__all__ = ["Displayed", "display", "hl7_segments", "is_hl7"]

Format = Literal["hl7", "json", "text"]

# Receivers disagree on the segment terminator; accept CR, LF and CRLF alike.
_SEGMENT_BREAK = re.compile(r"\r\n|\r|\n")
_HEADERS = ("MSH", "FHS", "BHS")
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")


class Field(TypedDict):
    """One field of a segment: ``PID-3``, its standard name, its raw value."""

    position: str
    name: str
    value: str


class Segment(TypedDict):
    """One segment (``index`` counts from 0 in message order)."""

    index: int
    name: str
    description: str
    fields: list[Field]


class Displayed(TypedDict):
    """The answer of ``GET /api/messages/{id}/segments``."""

    format: Format
    version: str | None
    text: str
    segments: list[Segment]


def is_hl7(content: str) -> bool:
    """True if ``content`` reads as an ER7 HL7 v2 message (or batch) with its delimiters."""
    head = content.lstrip("\ufeff \t\r\n")
    return head[:3] in _HEADERS and len(head) > 3 and not head[3].isalnum()


def display(content: str | None) -> Displayed:
    """``content`` as the message browser shows it (an absent stage reads as empty text)."""
    if content is None or not content.strip():
        return {"format": "text", "version": None, "text": content or "", "segments": []}
    if is_hl7(content):
        return hl7_segments(content)
    pretty = _pretty_json(content)
    if pretty is not None:
        return {"format": "json", "version": None, "text": pretty, "segments": []}
    return {"format": "text", "version": None, "text": content, "segments": []}


def hl7_segments(content: str) -> Displayed:
    """Split an HL7 v2 message into named segments and fields (names from its MSH-12 version)."""
    lines = [line for line in _SEGMENT_BREAK.split(content.lstrip("\ufeff \t\r\n")) if line]
    separator = lines[0][3]
    version = _version(lines[0], separator)
    segments = [_segment(i, line, separator, version) for i, line in enumerate(lines)]
    return {
        "format": "hl7",
        "version": version,
        # One segment per line whatever the terminator was, so the text view reads well.
        "text": "\n".join(lines),
        "segments": segments,
    }


def _version(header: str, separator: str) -> str | None:
    if not header.startswith("MSH"):
        return None
    values = _values(header, separator)
    declared = values[11] if len(values) > 11 else ""
    # MSH-12 is a VID: the version is its first component.
    component = _component_separator(values)
    first = declared.split(component, 1)[0].strip()
    return first or None


def _component_separator(values: list[str]) -> str:
    encoding = values[1] if len(values) > 1 else ""
    return encoding[:1] or "^"


def _values(line: str, separator: str) -> list[str]:
    """Field values by position - 1: ``[MSH-1, MSH-2, ...]`` or ``[PID-1, PID-2, ...]``."""
    parts = line.split(separator)
    if parts[0] in _HEADERS:
        # The separator right after the name *is* field 1 of a header segment.
        return [separator, *parts[1:]]
    return parts[1:]


def _segment(index: int, line: str, separator: str, version: str | None) -> Segment:
    name = line[:3]
    known = bool(_SEGMENT_NAME.match(name)) and (len(line) == 3 or line[3] == separator)
    if not known:
        # Not a segment (a wrapped line, garbage): shown whole as one unnamed value.
        return {
            "index": index,
            "name": "",
            "description": "",
            "fields": [{"position": "", "name": "", "value": line}],
        }
    lookup = version or ""
    fields: list[Field] = [
        {
            "position": f"{name}-{position}",
            "name": field_name(name, position, lookup),
            "value": value,
        }
        for position, value in enumerate(_values(line, separator), start=1)
    ]
    return {
        "index": index,
        "name": name,
        "description": segment_description(name),
        "fields": fields,
    }


def _pretty_json(content: str) -> str | None:
    head = content.lstrip()[:1]
    if head not in ("{", "["):
        return None
    try:
        parsed: Any = json.loads(content)
    except ValueError:
        return None
    return json.dumps(parsed, indent=2, ensure_ascii=False)
