"""HL7 v2 escape sequences (ER7): the delimiters, hex data and line breaks inside a value.

``unescape`` turns what the wire carries into the text a person means; ``escape`` does
the inverse so any text (a rejection reason, a transformed value) can travel inside a
field without breaking the message structure.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["DEFAULT_ENCODING_CHARS", "escape", "unescape"]

DEFAULT_ENCODING_CHARS = "^~\\&"  # MSH-2: component, repetition, escape, subcomponent
_LINE_BREAK = ".br"
_TRUNCATION_CHARS_LEN = 5  # HL7 2.7 added a fifth encoding character: truncation "#"


def _delimiters(encoding_chars: str, field_sep: str) -> dict[str, str]:
    """Escape code -> the delimiter it stands for, for one message's delimiters."""
    codes = {
        "F": field_sep,
        "S": encoding_chars[0],
        "R": encoding_chars[1],
        "E": encoding_chars[2],
        "T": encoding_chars[3],
    }
    if len(encoding_chars) >= _TRUNCATION_CHARS_LEN:
        codes["P"] = encoding_chars[4]
    return codes


@lru_cache(maxsize=16)
def _unescape_table(encoding_chars: str, field_sep: str) -> dict[str, str]:
    return {**_delimiters(encoding_chars, field_sep), _LINE_BREAK: "\n"}


@lru_cache(maxsize=16)
def _escape_table(encoding_chars: str, field_sep: str) -> dict[int, str]:
    esc = encoding_chars[2]
    delimiters = _delimiters(encoding_chars, field_sep)
    table = {ord(char): f"{esc}{code}{esc}" for code, char in delimiters.items()}
    line_break = f"{esc}{_LINE_BREAK}{esc}"
    table[ord("\n")] = line_break
    table[ord("\r")] = line_break
    return table


def _hex_data(code: str) -> str | None:
    """Text for a ``\\Xhh..\\`` sequence: UTF-8 when the bytes are UTF-8, else Latin-1."""
    if len(code) < 3 or code[0] != "X" or len(code) % 2 == 0:
        return None
    try:
        data = bytes.fromhex(code[1:])
    except ValueError:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def unescape(value: str, encoding_chars: str = DEFAULT_ENCODING_CHARS, field_sep: str = "|") -> str:
    """Decode the escape sequences of one value.

    ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` become the message's own delimiters, ``\\Xhh..\\``
    the bytes it names, ``\\.br\\`` a newline. Unknown sequences (``\\H\\``, ``\\Zxx\\``,
    other formatting commands) and an escape character without a closing one are left
    exactly as they are, so nothing is lost.
    """
    esc = encoding_chars[2]
    if esc not in value:
        return value
    table = _unescape_table(encoding_chars, field_sep)
    parts: list[str] = []
    pos = 0
    while (start := value.find(esc, pos)) != -1:
        end = value.find(esc, start + 1)
        if end == -1:
            break
        code = value[start + 1 : end]
        replacement = table[code] if code in table else _hex_data(code)
        if replacement is None:
            parts.append(value[pos : end + 1])
        else:
            parts.append(value[pos:start])
            parts.append(replacement)
        pos = end + 1
    parts.append(value[pos:])
    return "".join(parts)


def escape(value: str, encoding_chars: str = DEFAULT_ENCODING_CHARS, field_sep: str = "|") -> str:
    """Escape the delimiters and line breaks of one value so it fits inside a field.

    The inverse of :func:`unescape` for the delimiters; CR, LF and CRLF all become
    ``\\.br\\`` (a raw CR would otherwise end the segment).
    """
    if "\r\n" in value:
        value = value.replace("\r\n", "\n")
    return value.translate(_escape_table(encoding_chars, field_sep))
