"""HL7 v2 content for Meridian: decode, parse, escape, acknowledge, encode. No network.

The usual inbound path, each step once::

    text = decode(raw, channel.default_charset)     # MSH-18 picks the charset
    parsed = parse(text)                            # header + python-hl7 tree
    code = ack_code_for(parsed.header, "accepted")  # MSH-15/16 decide; None: send nothing
    reply = encode(build_ack(parsed.header, code), parsed.header, channel.default_charset)

When ``parse`` fails, :func:`parse_header` usually still reads MSH, so the rejection
ACK can echo MSH-10 in MSA-2.

The implementation lives in small modules (``hl7_charset``, ``hl7_escape``,
``hl7_message``, ``hl7_ack``); import from here.
"""

from __future__ import annotations

from engine.formats.hl7_ack import (
    ACK_CODES,
    ERROR_CODES,
    AckMode,
    AckOutcome,
    ack_code_for,
    ack_mode,
    build_ack,
)
from engine.formats.hl7_charset import DEFAULT_CHARSET, codec_for, decode, encode
from engine.formats.hl7_escape import DEFAULT_ENCODING_CHARS, escape, unescape
from engine.formats.hl7_message import HL7Header, ParsedHL7, parse, parse_header

__all__ = [
    "ACK_CODES",
    "DEFAULT_CHARSET",
    "DEFAULT_ENCODING_CHARS",
    "ERROR_CODES",
    "AckMode",
    "AckOutcome",
    "HL7Header",
    "ParsedHL7",
    "ack_code_for",
    "ack_mode",
    "build_ack",
    "codec_for",
    "decode",
    "encode",
    "escape",
    "parse",
    "parse_header",
    "unescape",
]
