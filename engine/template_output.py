"""How ``{{ expression }}`` values are written into each kind of template output.

Like HTML autoescaping, but for the formats a hub emits. Every expression a template
prints passes through the *finalizer* of the template's output kind:

* ``yaml`` / ``json`` — the value becomes a JSON literal: strings are quoted and escaped,
  ``None`` becomes ``null``, numbers and booleans stay as they are, lists and mappings
  become JSON flow collections. A patient name containing quotes, colons, ``#`` or
  newlines therefore stays one string value and can never change the document's
  structure. Write ``key: {{ value }}``, never ``key: "{{ value }}"``; to build a string,
  concatenate inside the expression: ``{{ sender ~ "|" ~ order_no }}``.
* ``hl7`` — the value has its HL7 delimiters escaped (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, line
  breaks as ``\\.br\\``) for the standard delimiters ``|^~\\&``, so it is exactly one
  field/component of data; ``None`` prints as nothing.
* ``text`` — the value as text; ``None`` prints as nothing.

``{{ value | raw }}`` opts out in every kind: the text is written exactly as is. Use it
only for text that is deliberately markup (an HL7 fragment with its delimiters, a macro's
output). An undefined variable is an error in every kind (``StrictUndefined``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from jinja2 import Undefined

from engine.errors import TransformError
from engine.formats.hl7 import escape as hl7_escape

__all__ = ["OUTPUT_KINDS", "Raw", "finalizer_for", "raw"]

OUTPUT_KINDS = ("yaml", "json", "hl7", "text")

# Characters PyYAML refuses, plus the Unicode line breaks it would fold inside a
# double-quoted scalar (NEL, LS, PS): these must travel as escapes.
_YAML_UNSAFE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


class Raw(str):
    """Text a template marked as markup: written without quoting or escaping."""

    __slots__ = ()


def raw(value: object) -> Raw:
    """The ``raw`` filter: ``{{ fragment | raw }}`` writes ``fragment`` unescaped."""
    _fail_if_undefined(value)
    return Raw("" if value is None else str(value))


def _fail_if_undefined(value: object) -> None:
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises its UndefinedError, naming the variable


def _json_literal(value: object) -> str:
    if isinstance(value, str):
        value = str(value)  # HL7Text and other str subclasses: plain text
    elif not isinstance(value, bool | int | float | list | tuple | dict) and value is not None:
        raise TransformError(
            f"cannot write a {type(value).__name__} value; select a field or convert it to text"
        )
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TransformError(f"cannot write value as JSON: {exc}") from exc


def finalize_json(value: object) -> str:
    """``{{ value }}`` in JSON output: a JSON literal."""
    _fail_if_undefined(value)
    return value if isinstance(value, Raw) else _json_literal(value)


def finalize_yaml(value: object) -> str:
    """``{{ value }}`` in YAML output: a JSON literal that YAML reads back unchanged."""
    _fail_if_undefined(value)
    if isinstance(value, Raw):
        return value
    return _YAML_UNSAFE.sub(_yaml_escape, _json_literal(value))


def _yaml_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def finalize_hl7(value: object) -> str:
    """``{{ value }}`` in HL7 output: delimiters escaped, ``None`` as nothing."""
    _fail_if_undefined(value)
    if isinstance(value, Raw):
        return value
    if value is None:
        return ""
    if isinstance(value, str | int | float):
        return hl7_escape(str(value))
    raise TransformError(
        f"cannot write a {type(value).__name__} value into HL7; select a field or component"
    )


def finalize_text(value: object) -> str:
    """``{{ value }}`` in text output: as text, ``None`` as nothing."""
    _fail_if_undefined(value)
    return "" if value is None else str(value)


_FINALIZERS: dict[str, Callable[[Any], str]] = {
    "yaml": finalize_yaml,
    "json": finalize_json,
    "hl7": finalize_hl7,
    "text": finalize_text,
}


def finalizer_for(output: str) -> Callable[[Any], str]:
    """The finalizer of an output kind (one of :data:`OUTPUT_KINDS`)."""
    return _FINALIZERS[output]
