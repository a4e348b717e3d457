"""The HL7 v2 data type of a channel: read inbound bytes, answer with an ACK.

Reading decodes by MSH-18 and parses with python-hl7; answering follows the
original (AA/AE/AR) or enhanced (MSH-15: CA/CE/CR or nothing) acknowledgment
rules. When a message cannot be parsed we still try to read its MSH so the
NAK can carry MSA-2 and the sender can match it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.datatypes.base import Outcome
from engine.errors import MessageError
from engine.formats.hl7 import (
    HL7Header,
    ParsedHL7,
    ack_code_for,
    build_ack,
    decode,
    encode,
    parse,
    parse_header,
    unescape,
)

__all__ = ["InboundHL7", "best_effort_header", "read_hl7", "reply_for"]


@dataclass(frozen=True, slots=True)
class InboundHL7:
    """A decoded, parsed inbound message and the keys the store indexes."""

    parsed: ParsedHL7
    patient_id: str | None
    accession: str | None

    @property
    def header(self) -> HL7Header:
        """The message's MSH."""
        return self.parsed.header


def read_hl7(raw: bytes, default_charset: str) -> InboundHL7:
    """Decode and parse ``raw``; raises DecodeError or ParseError with an analyst's reason."""
    parsed = parse(decode(raw, default_charset))
    return InboundHL7(
        parsed=parsed,
        patient_id=_first_component(parsed, "PID", 3),
        accession=_first_component(parsed, "OBR", 18),
    )


def best_effort_header(raw: bytes) -> HL7Header | None:
    """The MSH of a message that failed to decode or parse, if it can be read at all."""
    # MSH is ASCII in every charset we accept, so Latin-1 reads it even when the
    # rest of the message does not decode.
    msh = raw.split(b"\r", 1)[0].split(b"\n", 1)[0].decode("latin-1")
    try:
        return parse_header(msh)
    except MessageError:
        return None


def reply_for(
    header: HL7Header | None,
    outcome: Outcome,
    reason: str | None,
    default_charset: str,
    *,
    error_code: str | None = None,
) -> tuple[str | None, bytes | None]:
    """The ACK text (to store) and bytes (to send) for an outcome; (None, None) if none is due."""
    if header is None:
        code: str | None = {"accepted": "AA", "error": "AE", "rejected": "AR"}[outcome]
    else:
        code = ack_code_for(header, outcome)
    if code is None:
        return None, None
    text = build_ack(header, code, reason, error_code=error_code)
    return text, encode(text, header, default_charset)


def _first_component(parsed: ParsedHL7, segment_id: str, field: int) -> str | None:
    """First component of the first repetition of a field, unescaped; '' and absent → None.

    Not python-hl7's ``extract_field``: its unescape logs the whole field (PHI) as a
    warning when an escape sequence is malformed.
    """
    try:
        # python-hl7 raises KeyError for a missing segment, so no scan beforehand.
        segment = parsed.message.segment(segment_id)
    except KeyError:
        return None
    if field >= len(segment):
        return None
    header = parsed.header
    value = str(segment[field]).split(header.repetition_sep, 1)[0]
    value = value.split(header.component_sep, 1)[0].split(header.subcomponent_sep, 1)[0]
    return unescape(value, header.encoding_chars, header.field_sep)[:64] or None
