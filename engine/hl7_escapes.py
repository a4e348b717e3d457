"""HL7 v2 escape sequences (chapter 2.7/2.10): decode on the way in, encode on the way out.

Kept deliberately small and self-contained so the templating layer does not depend on
the wire-format module (``engine.formats.hl7``); once that module settles, the two can
share one implementation.

Decoding rules (what a template sees):

* ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` -> the message's own field, component, subcomponent,
  repetition and escape characters (read from MSH-1/MSH-2, not assumed).
* ``\\Xhh...\\`` -> the bytes ``hh...`` decoded as UTF-8, or Latin-1 when they are not
  valid UTF-8 (the sender's MSH-18 charset is already applied to the message text).
* ``\\.br\\`` -> a newline; ``\\.sp\\`` -> a newline; other formatting commands -> dropped.
* ``\\H\\``/``\\N\\`` (highlight on/off), ``\\Cxxyy\\``/``\\Mxxyyzz\\`` (charset switches)
  and ``\\Z...\\`` (locally defined) -> dropped: they carry no text.
* An escape character without a closing one is kept literally (nothing is lost).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_ENCODING", "EncodingChars", "escape", "unescape"]


@dataclass(frozen=True, slots=True)
class EncodingChars:
    """The five delimiters of an ER7 message: MSH-1 and the four characters of MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @classmethod
    def from_msh(cls, field_separator: str, msh2: str) -> EncodingChars:
        """Build from MSH-1 and MSH-2 (``^~\\&`` in almost every message)."""
        chars = (msh2 + "^~\\&"[len(msh2) :])[:4]
        return cls(field_separator, chars[0], chars[1], chars[2], chars[3])


DEFAULT_ENCODING = EncodingChars()

_FORMATTING: dict[str, str] = {".br": "\n", ".sp": "\n"}
_HEX_SEQUENCE = re.compile(r"X([0-9A-Fa-f]{2})+")


def unescape(value: str, encoding: EncodingChars = DEFAULT_ENCODING) -> str:
    """Decode every HL7 escape sequence in ``value`` (see the module docstring)."""
    esc = encoding.escape
    if esc not in value:
        return value
    out: list[str] = []
    position = 0
    while position < len(value):
        start = value.find(esc, position)
        end = value.find(esc, start + 1) if start >= 0 else -1
        if start < 0 or end < 0:
            out.append(value[position:])
            break
        out.append(value[position:start])
        out.append(_decode_sequence(value[start + 1 : end], encoding))
        position = end + 1
    return "".join(out)


def _decode_sequence(sequence: str, encoding: EncodingChars) -> str:
    delimiters = {
        "F": encoding.field,
        "S": encoding.component,
        "T": encoding.subcomponent,
        "R": encoding.repetition,
        "E": encoding.escape,
    }
    if sequence in delimiters:
        return delimiters[sequence]
    if _HEX_SEQUENCE.fullmatch(sequence):
        return _decode_hex(sequence[1:])
    if sequence.startswith("."):
        return _FORMATTING.get(sequence, "")
    return ""


def _decode_hex(hex_digits: str) -> str:
    raw = bytes.fromhex(hex_digits)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def escape(value: str, encoding: EncodingChars = DEFAULT_ENCODING) -> str:
    """Escape the delimiters in ``value`` so it is one field/component of data.

    Line breaks (CR, LF, CRLF) become ``\\.br\\``: a raw CR would end the segment.
    """
    esc = encoding.escape
    replacements = {
        esc: f"{esc}E{esc}",
        encoding.field: f"{esc}F{esc}",
        encoding.component: f"{esc}S{esc}",
        encoding.subcomponent: f"{esc}T{esc}",
        encoding.repetition: f"{esc}R{esc}",
    }
    text = value.replace("\r\n", "\n").replace("\r", "\n")
    out = [replacements.get(char, char) for char in text]
    return "".join(out).replace("\n", f"{esc}.br{esc}")
