"""Read what the archive needs from a received DICOM instance, without decoding it all.

A Storage SCP receives a data set as bytes in the negotiated transfer syntax.
:func:`read_instance` checks it is structurally complete (every element's
length fits, every undefined-length sequence is closed: a truncated transfer
is refused, not archived) and picks the few top-level attributes the archive
indexes on the way. Pixel data is never decoded or even copied: the walk
skips values by length. No pydicom decoding either: it would cost more than
the walk and its validation warnings can quote values (PHI) into the log.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from engine.errors import ParseError

__all__ = ["InstanceHeader", "check_complete", "file_head", "read_instance"]

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# pynetdicom's, as its own file meta would say: the hub writes what pynetdicom received.
IMPLEMENTATION_CLASS_UID = PYNETDICOM_IMPLEMENTATION_UID
IMPLEMENTATION_VERSION_NAME = PYNETDICOM_IMPLEMENTATION_VERSION
_UID_MAX = 64
_INDEXED = {
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "PatientID": 0x00100020,
    "AccessionNumber": 0x00080050,
    "Modality": 0x00080060,
    "SpecificCharacterSet": 0x00080005,
}
_WANTED = frozenset(_INDEXED.values())
_TEXT = frozenset({"PatientID", "AccessionNumber"})  # LO/SH: in the data set's character set
_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

# VRs whose explicit-VR header has 2 reserved bytes and a 4-byte length.
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The identifiers of one instance; patient/accession are PHI: index them, never log them."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str | None = None
    accession_number: str | None = None
    modality: str | None = None


def read_instance(dataset: bytes | memoryview, transfer_syntax: str) -> InstanceHeader:
    """Check an encoded data set (no file meta) and read its identifiers.

    One pass over the element headers both checks the framing and picks the
    indexed values (top level only). Raises :class:`ParseError` (a reason
    safe to send back) when the data set is truncated or malformed, or lacks
    one of the four UIDs the archive files it under.
    """
    raw = check_complete(dataset, transfer_syntax)
    values = _decode(raw)
    for keyword in _REQUIRED:
        _check_uid(keyword, values[keyword])
    return InstanceHeader(
        sop_class_uid=str(values["SOPClassUID"]),
        sop_instance_uid=str(values["SOPInstanceUID"]),
        study_instance_uid=str(values["StudyInstanceUID"]),
        series_instance_uid=str(values["SeriesInstanceUID"]),
        transfer_syntax_uid=str(transfer_syntax),
        patient_id=values["PatientID"],
        accession_number=values["AccessionNumber"],
        modality=values["Modality"],
    )


def file_head(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """Preamble, ``DICM`` and the file meta of a Part 10 file (before its data set).

    Encoded by hand: pydicom's writer took longer than everything else the
    SCP does per image except the disk and the index. The source AE title
    (0002,0016) records which peer sent the instance.
    """
    group = b"".join(
        (
            struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
            _meta_text(0x0002, "UI", sop_class_uid),
            _meta_text(0x0003, "UI", sop_instance_uid),
            _meta_text(0x0010, "UI", transfer_syntax),
            _meta_text(0x0012, "UI", IMPLEMENTATION_CLASS_UID),
            _meta_text(0x0013, "SH", IMPLEMENTATION_VERSION_NAME),
            _meta_text(0x0016, "AE", source_ae),
        )
    )
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group))
    return b"\x00" * 128 + b"DICM" + length + group


def _meta_text(element: int, vr: str, value: str) -> bytes:
    raw = value.encode("ascii", errors="replace")
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return struct.pack("<HH2sH", 0x0002, element, vr.encode(), len(raw)) + raw


def _decode(raw: dict[int, bytes]) -> dict[str, str | None]:
    """The captured values as text: UIDs and codes are ASCII; IDs follow the character set."""
    charsets = _ascii(raw.get(_INDEXED["SpecificCharacterSet"]))
    try:
        encodings = convert_encodings(charsets.split("\\") if charsets else None)
        values: dict[str, str | None] = {}
        for keyword, tag in _INDEXED.items():
            value = raw.get(tag)
            if keyword in _TEXT:
                text = decode_bytes(value, encodings, set()) if value is not None else None
                values[keyword] = _strip(text)
            else:
                values[keyword] = _ascii(value)
    except (LookupError, UnicodeError, ValueError) as exc:
        raise ParseError(f"cannot decode the data set ({type(exc).__name__})") from exc
    return values


def _ascii(value: bytes | None) -> str | None:
    return _strip(value.decode("ascii", errors="replace")) if value is not None else None


def _strip(text: str | None) -> str | None:
    if text is None:
        return None
    return text.strip("\x00 ") or None


def _check_uid(keyword: str, value: str | None) -> None:
    # UIDs become directory and file names: only digits and dots may pass.
    if value is None:
        raise ParseError(f"missing {keyword}")
    if len(value) > _UID_MAX or not _UID.match(value):
        raise ParseError(f"invalid {keyword}")


def check_complete(dataset: memoryview | bytes, transfer_syntax: str) -> dict[int, bytes]:
    """Raise :class:`ParseError` unless ``dataset`` is a complete, well-framed data set.

    Returns the raw values of the indexed top-level attributes it met.
    """
    data = memoryview(dataset)
    uid = UID(transfer_syntax)
    if uid == DeflatedExplicitVRLittleEndian:
        data = memoryview(_inflate(data))
    captured: dict[int, bytes] = {}
    try:
        _walk(
            data, 0, len(data),
            explicit=not uid.is_implicit_VR, little=uid.is_little_endian,
            stop=None, capture=captured,
        )  # fmt: skip
    except struct.error as exc:
        raise ParseError("truncated data set") from exc
    return captured


def _inflate(data: memoryview) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data) + inflater.flush()
    except zlib.error as exc:
        raise ParseError("corrupt deflated data set") from exc
    if not inflater.eof:
        raise ParseError("truncated deflated data set")
    return inflated


def _walk(
    data: memoryview,
    pos: int,
    end: int,
    *,
    explicit: bool,
    little: bool,
    stop: int | None,
    capture: dict[int, bytes] | None = None,
) -> int:
    """Skip elements from ``pos``; return the position after ``stop`` (a delimiter) or ``end``.

    Values of :data:`_INDEXED` tags met at this level go into ``capture``.
    """
    order = "<" if little else ">"
    while pos < end:
        group, element = struct.unpack_from(order + "HH", data, pos)
        tag = group << 16 | element
        if group == 0xFFFE:
            if tag == stop:
                return pos + 8
            raise ParseError(f"unexpected delimiter ({group:04X},{element:04X})")
        vr = bytes(data[pos + 4 : pos + 6]) if explicit else b""
        if explicit and vr in _LONG_VRS:
            (length,) = struct.unpack_from(order + "L", data, pos + 8)
            pos += 12
        elif explicit:
            (length,) = struct.unpack_from(order + "H", data, pos + 6)
            pos += 8
        else:
            (length,) = struct.unpack_from(order + "L", data, pos + 4)
            pos += 8
        if length == _UNDEFINED:
            # UN of undefined length holds an implicit VR little endian sequence.
            implicit_content = vr == b"UN"
            pos = _walk_items(
                data,
                pos,
                end,
                explicit=explicit and not implicit_content,
                little=little or implicit_content,
            )
        else:
            if capture is not None and tag in _WANTED and pos + length <= end:
                capture[tag] = bytes(data[pos : pos + length])
            pos += length
    if stop is not None or pos != end:
        raise ParseError("truncated data set")
    return pos


def _walk_items(data: memoryview, pos: int, end: int, *, explicit: bool, little: bool) -> int:
    """Skip the items of an undefined-length sequence (or encapsulated pixel data)."""
    order = "<" if little else ">"
    while True:
        group, element, length = struct.unpack_from(order + "HHL", data, pos)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise ParseError(f"expected an item, found ({group:04X},{element:04X})")
        if length == _UNDEFINED:
            pos = _walk(data, pos, end, explicit=explicit, little=little, stop=_ITEM_END)
        else:
            pos += length
            if pos > end:
                raise ParseError("truncated data set")
