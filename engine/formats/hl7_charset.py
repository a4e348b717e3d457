"""HL7 v2 character sets: bytes in (MSH-18 decides), bytes out (answer in the sender's charset).

MSH-18 is read from the raw bytes before anything is decoded: the MSH segment itself
is ASCII in every charset HL7 allows over MLLP, so its fields can be split as bytes.
"""

from __future__ import annotations

import codecs
import re
from functools import lru_cache
from typing import TYPE_CHECKING

from engine.errors import DecodeError

if TYPE_CHECKING:
    from engine.formats.hl7_message import HL7Header

__all__ = ["DEFAULT_CHARSET", "codec_for", "decode", "encode", "is_supported_msh18"]

DEFAULT_CHARSET = "UNICODE UTF-8"

# HL7 table 0211 names (and the spellings senders use in practice) -> Python codecs.
# UNICODE / UTF-16 / UTF-32 are absent on purpose: their MSH segment is not ASCII,
# so a message in them could not have declared itself in MSH-18 to begin with.
_CODECS: dict[str, str] = {
    "ASCII": "ascii",
    **{f"8859/{n}": f"iso8859-{n}" for n in range(1, 10)},
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    "ISO-8859-1": "iso8859-1",
    "ISO-8859-15": "iso8859-15",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
}

# Code-extension charsets (ISO 2022): named in a repetition after the default charset,
# e.g. "~ISO IR87" in Japanese messages; the whole message is then ISO-2022-JP.
_ISO2022_EXTENSIONS = frozenset({"ISO IR87", "ISO IR159"})
_ISO2022_CODEC = "iso2022_jp_2"

_UTF8_BOM = codecs.BOM_UTF8
_SEGMENT_END = re.compile(rb"[\r\n]")
_LEADING_WHITESPACE = (b" ", b"\t", b"\r", b"\n")
_MSH18_INDEX = 17  # fields[0] is "MSH", fields[1] is MSH-2, so MSH-n is fields[n - 1]


def _normalise_name(name: str) -> str:
    return " ".join(name.upper().split())


@lru_cache(maxsize=64)
def codec_for(charset: str) -> str:
    """Return the Python codec for an HL7 charset name (one repetition of MSH-18).

    Raises :class:`DecodeError` for names Meridian cannot decode. Use it to validate a
    channel's ``default_charset`` when the channel is loaded.
    """
    codec = _CODECS.get(_normalise_name(charset))
    if codec is None:
        raise DecodeError(f"unsupported character set: {charset.strip()[:40]}")
    return codec


def _codec_for_msh18(value: str, repetition_sep: str, default_charset: str) -> str:
    """Codec for a whole MSH-18 field: the first repetition, unless ISO 2022 extends it."""
    names = [_normalise_name(name) for name in value.split(repetition_sep)]
    if any(name in _ISO2022_EXTENSIONS for name in names):
        return _ISO2022_CODEC
    if not names[0]:
        return codec_for(default_charset)
    try:
        return codec_for(names[0])
    except DecodeError:
        raise DecodeError(f"unsupported character set in MSH-18: {value.strip()[:40]}") from None


def is_supported_msh18(value: str, repetition_sep: str) -> bool:
    """True when an MSH-18 value names a charset Meridian can encode (so an ACK may echo it)."""
    if not value.isascii():  # MSH-18 is read from raw bytes as ASCII: anything else is garbage
        return False
    try:
        _codec_for_msh18(value, repetition_sep, DEFAULT_CHARSET)
    except DecodeError:
        return False
    return True


def _msh_fields(body: bytes) -> list[bytes] | None:
    """The fields of the MSH segment as raw bytes, or None when there is no MSH."""
    start = 0
    while body[start : start + 1] in _LEADING_WHITESPACE:
        start += 1
    if body[start : start + 3] != b"MSH" or len(body) < start + 4:
        return None
    segment_end = _SEGMENT_END.search(body, start)  # stops at MSH's end: no full scan
    msh = body[start : segment_end.start() if segment_end else len(body)]
    if len(msh) < 4:  # "MSH" then a segment end: no field separator to split on
        return None
    return [b"MSH", *msh[4:].split(msh[3:4])]


def _declared_msh18(body: bytes) -> tuple[str, str]:
    """MSH-18 as sent (may be empty) and the repetition separator from MSH-2."""
    fields = _msh_fields(body)
    if fields is None or len(fields) <= _MSH18_INDEX:
        return "", "~"
    encoding_chars = fields[1]
    repetition_sep = chr(encoding_chars[1]) if len(encoding_chars) > 1 else "~"
    raw_value = fields[_MSH18_INDEX]
    try:
        return raw_value.decode("ascii"), repetition_sep
    except UnicodeDecodeError:
        shown = raw_value.decode("ascii", "replace")[:40]
        raise DecodeError(f"unsupported character set in MSH-18: {shown}") from None


def _normalise_separators(text: str) -> str:
    """All segment separators become CR; blank segments and trailing whitespace go."""
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    text = text.strip()
    if "\r\r" in text or "\r " in text:
        text = "\r".join(segment for segment in text.split("\r") if segment.strip())
    return text


def decode(raw: bytes, default_charset: str = DEFAULT_CHARSET) -> str:
    """Decode an inbound HL7 v2 message in the charset its MSH-18 declares.

    An empty MSH-18 (or no MSH at all) means ``default_charset`` (an HL7 table 0211
    name). A leading UTF-8 BOM is dropped, segment separators (CR, LF, CRLF) become CR,
    blank segments and trailing whitespace are removed.

    Raises :class:`DecodeError` for an unsupported charset or bytes that do not decode;
    the reason names the charset and the byte offset, never the content.
    """
    bom = len(_UTF8_BOM) if raw.startswith(_UTF8_BOM) else 0
    body = raw[bom:] if bom else raw
    declared, repetition_sep = _declared_msh18(body)
    codec = _codec_for_msh18(declared, repetition_sep, default_charset)
    try:
        text = body.decode(codec)
    except UnicodeDecodeError as exc:
        charset = declared.strip() or default_charset
        raise DecodeError(
            f"message is not valid {charset}: undecodable byte at offset {exc.start + bom}"
        ) from None
    return _normalise_separators(text)


def encode(text: str, header: HL7Header | None, default_charset: str = DEFAULT_CHARSET) -> bytes:
    """Encode an outbound message (an ACK) in the inbound message's charset.

    Never raises: an ACK must go out even when the inbound charset was the reason for
    rejecting the message. Falls back to ``default_charset``, then UTF-8; characters
    the charset cannot represent become ``?``.
    """
    codec = "utf-8"
    try:
        if header is not None and header.charset:
            codec = _codec_for_msh18(header.charset, header.repetition_sep, default_charset)
        else:
            codec = codec_for(default_charset)
    except DecodeError:
        try:
            codec = codec_for(default_charset)
        except DecodeError:
            codec = "utf-8"
    if codec == _ISO2022_CODEC and "\x1b" in text:
        # The codec writes its own escape sequences; a literal ESC (echoed from a broken
        # MSH) would switch the reader's character set and garble the rest of the ACK.
        text = text.replace("\x1b", "?")
    return text.encode(codec, errors="replace")
