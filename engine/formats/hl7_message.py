"""HL7 v2 message structure: the MSH header and a checked parse with python-hl7.

The header is read by splitting the MSH segment directly (cheap, and it works even
when the rest of the message is broken, so an ACK can still echo MSH-10); the body is
parsed once by python-hl7.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hl7

from engine.errors import ParseError

__all__ = ["HL7Header", "ParsedHL7", "parse", "parse_header"]

_SEGMENT_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ENCODING_CHARS_LENGTHS = (4, 5)  # MSH-2; the fifth (truncation) arrived in HL7 2.7
_BATCH_HEADERS = ("FHS", "BHS")


@dataclass(frozen=True, slots=True)
class HL7Header:
    """What Meridian needs from MSH. Values are as sent (still escaped), so an ACK
    can echo them byte for byte; ``version`` and ``processing_id`` keep only their
    first component."""

    field_sep: str
    encoding_chars: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str  # "ORM^O01": MSH-9.1 and MSH-9.2 only, always joined with "^"
    control_id: str
    processing_id: str
    version: str
    accept_ack_type: str
    app_ack_type: str
    charset: str  # MSH-18, every repetition, as sent

    @property
    def sender(self) -> str:
        """``APP^FAC`` (MSH-3 and MSH-4): with MSH-10, the key for duplicate detection."""
        return f"{self.sending_application}^{self.sending_facility}"

    @property
    def trigger_event(self) -> str:
        """MSH-9.2, e.g. ``O01`` (empty when the sender left it out)."""
        _, _, trigger = self.message_type.partition("^")
        return trigger

    @property
    def component_sep(self) -> str:
        return self.encoding_chars[0]

    @property
    def repetition_sep(self) -> str:
        return self.encoding_chars[1]

    @property
    def subcomponent_sep(self) -> str:
        return self.encoding_chars[3]


@dataclass(frozen=True, slots=True)
class ParsedHL7:
    """A decoded, checked HL7 v2 message: its text (CR separated), header and parse tree."""

    text: str
    header: HL7Header
    message: Any  # hl7.Message (python-hl7 ships no type information)


def _check_delimiters(field_sep: str, encoding_chars: str) -> None:
    delimiters = field_sep + encoding_chars
    if (
        len(encoding_chars) not in _ENCODING_CHARS_LENGTHS
        or len(set(delimiters)) != len(delimiters)
        or any(char.isalnum() or char.isspace() for char in delimiters)
    ):
        raise ParseError(
            "MSH-1/MSH-2 (delimiters) are invalid: expected a field separator and 4 distinct "
            "encoding characters such as |^~\\&"
        )


def _first_component(value: str, component_sep: str) -> str:
    return value.split(component_sep, 1)[0]


def _message_type(msh9: str, component_sep: str) -> str:
    parts = msh9.split(component_sep)
    if len(parts) > 1 and parts[1]:
        return f"{parts[0]}^{parts[1]}"
    return parts[0]


def parse_header(text: str) -> HL7Header:
    """Read the MSH segment of decoded text, without parsing or checking the rest.

    Lenient on purpose: MSH-9 and MSH-10 may be empty, so a rejection ACK can still
    echo whatever the sender did send. Raises :class:`ParseError` only when there is
    no usable MSH segment.
    """
    if not text.startswith("MSH"):
        if text.startswith(_BATCH_HEADERS):
            raise ParseError("HL7 batches (FHS/BHS) are not supported: send one message per frame")
        raise ParseError("not an HL7 v2 message: does not start with MSH")
    end = text.find("\r")
    msh = text if end == -1 else text[:end]
    if len(msh) < 8:
        raise ParseError("MSH segment is too short to hold its delimiters (MSH-1, MSH-2)")
    field_sep = msh[3]
    fields = ["MSH", *msh[4:].split(field_sep)]  # so MSH-n is fields[n - 1]
    fields += [""] * (18 - len(fields))
    encoding_chars = fields[1]
    _check_delimiters(field_sep, encoding_chars)
    component_sep = encoding_chars[0]
    return HL7Header(
        field_sep=field_sep,
        encoding_chars=encoding_chars,
        sending_application=fields[2],
        sending_facility=fields[3],
        receiving_application=fields[4],
        receiving_facility=fields[5],
        message_type=_message_type(fields[8], component_sep),
        control_id=fields[9],
        processing_id=_first_component(fields[10], component_sep),
        version=_first_component(fields[11], component_sep),
        accept_ack_type=fields[14].strip(),
        app_ack_type=fields[15].strip(),
        charset=fields[17],
    )


def _check_required_fields(header: HL7Header) -> None:
    if not header.message_type:
        raise ParseError("MSH-9 (message type) is empty")
    if not header.control_id:
        raise ParseError("MSH-10 (message control ID) is empty")


def _check_segments(text: str, field_sep: str) -> None:
    """Every segment starts with a 3-character ID; only the first is an MSH."""
    for number, segment in enumerate(text.split("\r"), start=1):
        segment_id = segment[:3]
        if (
            len(segment_id) != 3
            or not _SEGMENT_ID_CHARS.issuperset(segment_id)
            or (len(segment) > 3 and segment[3] != field_sep)
        ):
            raise ParseError(
                f"segment {number} does not start with a valid segment ID "
                "(3 uppercase letters or digits, then the field separator)"
            )
        if segment_id == "MSH" and number > 1:
            raise ParseError(
                f"segment {number} is a second MSH: send one message per frame "
                "(batches are not supported)"
            )


def parse(text: str) -> ParsedHL7:
    """Check and parse one decoded HL7 v2 message (CR separated, as :func:`decode` returns).

    Raises :class:`ParseError` with a reason an interface analyst can act on: not HL7,
    invalid delimiters, empty MSH-9 or MSH-10, a malformed segment ID, or several
    messages in one frame.
    """
    header = parse_header(text)
    _check_required_fields(header)
    _check_segments(text, header.field_sep)
    try:
        message = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises assorted types on malformed input
        raise ParseError(f"message structure is invalid ({type(exc).__name__})") from exc
    return ParsedHL7(text=text, header=header, message=message)
