"""A read-only, template-friendly view of an HL7 v2 message.

Templates receive ``msg`` (a :class:`MessageView`) and read fields by their HL7 position::

    {{ msg.seg("PID")["5.1"] }}          PID-5.1, escapes decoded
    {% for order in msg.order_groups() %}{{ order.obr["18"] }}{% endfor %}

Rules a template author can rely on:

* Positions are written as in the HL7 specification: ``"5"`` (field, first repetition),
  ``"5.1"`` (component), ``"5.1.2"`` (subcomponent). MSH is numbered as in the
  standard: MSH-1 is the field separator, MSH-2 the encoding characters.
* Every value is text with HL7 escape sequences decoded (:func:`engine.formats.hl7.unescape`:
  ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, ``\\Xhh\\``, ``\\.br\\`` as a newline; other
  sequences such as ``\\H\\`` are kept as received).
* Anything absent (segment, field, component) reads as ``""``: HL7 fields are optional, and
  a template decides what is required. The HL7 explicit null ``""`` also reads as ``""``.
* A missing segment is an empty, false :class:`SegmentView` (not ``None``), so
  ``msg.seg("PV1")["3.1"]`` is ``""`` when there is no PV1 and ``{% if msg.seg("PV1") %}``
  still works.
* Values are :class:`HL7Text`: ordinary strings that remember their components, so
  ``pid["5"]`` prints as ``DOE^JOHN`` and helpers such as ``xpn_to_pn`` split it exactly
  even when a name contained an escaped delimiter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, SupportsIndex, overload

import hl7

from engine.errors import ParseError, TransformError
from engine.formats.hl7 import unescape

__all__ = [
    "EncodingChars",
    "HL7Text",
    "HL7View",
    "MessageView",
    "OrderGroup",
    "SegmentView",
    "context_for",
]


@dataclass(frozen=True, slots=True)
class EncodingChars:
    """The delimiters of an ER7 message: MSH-1 and the four characters of MSH-2."""

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

    @property
    def msh2(self) -> str:
        """The encoding characters as MSH-2 writes them."""
        return f"{self.component}{self.repetition}{self.escape}{self.subcomponent}"


_PATH = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")
_HL7_NULL = '""'


class HL7Text(str):
    """Decoded HL7 text that keeps its structure: ``value["2"]`` is component 2.

    Integer indexes and slices behave as for ``str``; a string index is an HL7 position
    relative to this value (components of a field, subcomponents of a component).
    """

    __slots__ = ("_parts",)
    _parts: tuple[HL7Text, ...]

    def __new__(cls, text: str, parts: tuple[HL7Text, ...] = ()) -> HL7Text:
        obj = super().__new__(cls, text)
        obj._parts = parts
        return obj

    @property
    def parts(self) -> tuple[HL7Text, ...]:
        """Components (or subcomponents); empty when the value has no separators."""
        return self._parts

    def part(self, index: int) -> HL7Text:
        """The 1-based component/subcomponent; an undivided value is its own part 1."""
        if not self._parts:
            return self if index == 1 else EMPTY
        return self._parts[index - 1] if 1 <= index <= len(self._parts) else EMPTY

    @overload
    def __getitem__(self, key: str) -> HL7Text: ...
    @overload
    def __getitem__(self, key: SupportsIndex | slice) -> str: ...
    def __getitem__(self, key: str | SupportsIndex | slice) -> str:
        if not isinstance(key, str):
            return str.__getitem__(self, key)
        value = self
        for index in _parse_relative_path(key):
            value = value.part(index)
        return value


EMPTY = HL7Text("")


def _parse_relative_path(path: str) -> list[int]:
    pieces = path.split(".")
    if not all(piece.isdigit() and int(piece) > 0 for piece in pieces) or len(pieces) > 2:
        raise TransformError(f"bad HL7 component position {path!r} (expected e.g. '1' or '1.2')")
    return [int(piece) for piece in pieces]


def _leaf(raw: str, encoding: EncodingChars) -> HL7Text:
    if raw == _HL7_NULL:
        return EMPTY
    return HL7Text(unescape(raw, encoding.msh2, encoding.field))


def _component(raw: str, encoding: EncodingChars) -> HL7Text:
    if encoding.subcomponent not in raw:
        return _leaf(raw, encoding)
    subs = tuple(_leaf(sub, encoding) for sub in raw.split(encoding.subcomponent))
    return HL7Text(encoding.subcomponent.join(subs), subs)


def decode_repetition(raw: str, encoding: EncodingChars) -> HL7Text:
    """Decode one field repetition into :class:`HL7Text` (components, subcomponents)."""
    if encoding.component not in raw:
        only = _component(raw, encoding)
        if not only.parts:
            return only
        # One component that has subcomponents (4711&HOUSE&GREGORY): it is
        # component 1; its subcomponents must not pass for components.
        return HL7Text(str(only), (only,))
    comps = tuple(_component(comp, encoding) for comp in raw.split(encoding.component))
    return HL7Text(encoding.component.join(comps), comps)


class SegmentView:
    """One segment; ``seg["5.1"]`` reads PID-5.1. False when the segment is absent."""

    __slots__ = ("_encoding", "_fields", "_name")

    def __init__(self, raw: str, encoding: EncodingChars) -> None:
        self._encoding = encoding
        fields = raw.split(encoding.field) if raw else []
        self._name = fields[0] if fields else ""
        if self._name == "MSH":
            # MSH-1 *is* the field separator, so MSH-n sits at fields[n - 1]: realign.
            fields.insert(1, encoding.field)
        self._fields = fields

    @classmethod
    def absent(cls, name: str) -> SegmentView:
        """The empty view returned for a segment the message does not carry."""
        view = cls("", EncodingChars())
        view._name = name
        return view

    @property
    def name(self) -> str:
        """Segment ID, e.g. ``"PID"``."""
        return self._name

    def __bool__(self) -> bool:
        return bool(self._fields)

    def __repr__(self) -> str:
        # Never the content: segments carry PHI and reprs end up in logs.
        return f"<SegmentView {self._name}{'' if self else ' (absent)'}>"

    def __getitem__(self, path: str | int) -> HL7Text:
        field_no, comp_no, sub_no = _parse_path(path)
        raw = self._raw_field(field_no)
        if self._name == "MSH" and field_no <= 2:
            return HL7Text(raw)  # the delimiters themselves: never split or decode
        value = decode_repetition(raw.split(self._encoding.repetition)[0], self._encoding)
        if comp_no:
            value = value.part(comp_no)
        if sub_no:
            value = value.part(sub_no)
        return value

    def raw(self, field: str | int) -> str:
        """The field exactly as received: all repetitions, escapes not decoded."""
        field_no, comp_no, _ = _parse_path(field)
        if comp_no:
            raise TransformError(f"raw() takes a field number, not {field!r}")
        return self._raw_field(field_no)

    def reps(self, field: str | int) -> list[HL7Text]:
        """Every repetition of a field, decoded; ``[]`` when the field is empty."""
        field_no, comp_no, _ = _parse_path(field)
        if comp_no:
            raise TransformError(f"reps() takes a field number, not {field!r}")
        raw = self._raw_field(field_no)
        if not raw:
            return []
        return [
            decode_repetition(rep, self._encoding) for rep in raw.split(self._encoding.repetition)
        ]

    def _raw_field(self, field_no: int) -> str:
        return self._fields[field_no] if field_no < len(self._fields) else ""


def _parse_path(path: str | int) -> tuple[int, int, int]:
    match = _PATH.fullmatch(str(path))
    if match is None or int(match.group(1)) == 0:
        raise TransformError(
            f"bad HL7 field position {path!r} (expected e.g. '5', '5.1' or '5.1.2')"
        )
    field_no, comp, sub = match.groups()
    return int(field_no), int(comp or 0), int(sub or 0)


class _SegmentList:
    """Lookup helpers shared by a message and an order group."""

    __slots__ = ()
    _segments: list[SegmentView]

    def seg(self, name: str) -> SegmentView:
        """The first segment with this ID, or an empty (false) view when there is none."""
        return next((s for s in self._segments if s.name == name), SegmentView.absent(name))

    def segs(self, name: str) -> list[SegmentView]:
        """Every segment with this ID, in message order."""
        return [s for s in self._segments if s.name == name]


class OrderGroup(_SegmentList):
    """One ORC and the segments after it up to the next ORC (OBR, TQ1, IPC, ZDS, OBX...).

    ``group.obr`` is shorthand for ``group.seg("OBR")``, for any three-letter segment ID;
    use ``group.segs("IPC")`` for all repetitions.
    """

    __slots__ = ("_segments",)

    def __init__(self, segments: list[SegmentView]) -> None:
        self._segments = segments

    @property
    def segments(self) -> list[SegmentView]:
        """All segments of the group, ORC first."""
        return list(self._segments)

    def __getattr__(self, name: str) -> SegmentView:
        if re.fullmatch(r"[a-z][a-z0-9]{2}", name):
            return self.seg(name.upper())
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"<OrderGroup {' '.join(s.name for s in self._segments)}>"


class MessageView(_SegmentList):
    """The ``msg`` object templates read; wraps a parsed :class:`hl7.Message`."""

    __slots__ = ("_encoding", "_segments")

    def __init__(self, message: Any) -> None:
        raw_segments = [str(segment) for segment in message]
        if not raw_segments or not raw_segments[0].startswith("MSH"):
            raise ParseError("HL7 message does not start with an MSH segment")
        msh = raw_segments[0]
        field_separator = msh[3]
        self._encoding = EncodingChars.from_msh(field_separator, msh[4:].split(field_separator)[0])
        self._segments = [SegmentView(raw, self._encoding) for raw in raw_segments]

    @classmethod
    def from_text(cls, text: str) -> MessageView:
        """Parse ER7 text (CR, LF or CRLF between segments) with python-hl7 and wrap it."""
        lines = [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
        if not lines or not lines[0].startswith("MSH"):
            raise ParseError("HL7 message does not start with an MSH segment")
        try:
            message = hl7.parse("\r".join(lines))
        except (hl7.ParseException, ValueError, IndexError) as exc:
            raise ParseError(f"not an HL7 v2 message: {exc}") from exc
        return cls(message)

    @property
    def encoding(self) -> EncodingChars:
        """The delimiters of this message (MSH-1, MSH-2)."""
        return self._encoding

    @property
    def type(self) -> str:
        """Message type and trigger event, e.g. ``"ORM^O01"`` (MSH-9.1^MSH-9.2)."""
        msh = self.seg("MSH")
        return f"{msh['9.1']}^{msh['9.2']}" if msh["9.2"] else str(msh["9.1"])

    @property
    def control_id(self) -> str:
        """MSH-10."""
        return str(self.seg("MSH")["10"])

    @property
    def version(self) -> str:
        """MSH-12.1, e.g. ``"2.5.1"``."""
        return str(self.seg("MSH")["12.1"])

    @property
    def sending_application(self) -> str:
        """MSH-3.1."""
        return str(self.seg("MSH")["3.1"])

    @property
    def sending_facility(self) -> str:
        """MSH-4.1."""
        return str(self.seg("MSH")["4.1"])

    @property
    def sender(self) -> str:
        """``application^facility`` (MSH-3.1^MSH-4.1, trailing empty part dropped).

        Used to namespace order numbers: two senders may both have placer order 1234.
        """
        app, facility = self.sending_application, self.sending_facility
        return f"{app}^{facility}" if facility else app

    def order_groups(self) -> list[OrderGroup]:
        """One :class:`OrderGroup` per ORC, in message order."""
        groups: list[OrderGroup] = []
        current: list[SegmentView] | None = None
        for segment in self._segments:
            if segment.name == "ORC":
                current = [segment]
                groups.append(OrderGroup(current))
            elif current is not None:
                current.append(segment)
        return groups

    def __repr__(self) -> str:
        return f"<MessageView {self.type} {len(self._segments)} segments>"


#: The name the pipeline imports: the view given to filters and templates as ``msg``.
HL7View = MessageView


def context_for(message: Any, **extra: Any) -> dict[str, Any]:
    """The template context for an order transform: ``{"msg": MessageView(message), ...}``."""
    return {"msg": MessageView(message), **extra}
