"""Read what the archive needs from a received DICOM instance, without decoding it all.

A Storage SCP receives a data set as bytes in the negotiated transfer syntax.
:func:`read_instance` checks it is structurally complete (every element's
length fits, every undefined-length sequence is closed: a truncated transfer
is refused, not archived) and reads the few attributes the archive indexes.
Pixel data is never decoded or even copied: the walk skips values by length.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from engine.errors import ParseError

__all__ = ["InstanceHeader", "check_complete", "read_instance"]

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
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


def read_instance(part10: bytes, dataset_offset: int, transfer_syntax: str) -> InstanceHeader:
    """Check a Part 10 file's data set (from ``dataset_offset``) and read its identifiers.

    Raises :class:`ParseError` (a reason safe to send back) when the data set
    is truncated or malformed, or lacks one of the four UIDs the archive files
    it under.
    """
    check_complete(memoryview(part10)[dataset_offset:], transfer_syntax)
    try:
        ds = dcmread(
            BytesIO(part10), stop_before_pixels=True, specific_tags=list(_INDEXED.values())
        )
        values = {keyword: _text(ds.get(keyword)) for keyword in _INDEXED}
    except Exception as exc:  # pydicom raises many types; the message may quote values (PHI)
        raise ParseError(f"cannot read the data set ({type(exc).__name__})") from exc
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


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip("\x00 ")
    return text or None


def _check_uid(keyword: str, value: str | None) -> None:
    # UIDs become directory and file names: only digits and dots may pass.
    if value is None:
        raise ParseError(f"missing {keyword}")
    if len(value) > _UID_MAX or not _UID.match(value):
        raise ParseError(f"invalid {keyword}")


def check_complete(dataset: memoryview | bytes, transfer_syntax: str) -> None:
    """Raise :class:`ParseError` unless ``dataset`` is a complete, well-framed data set."""
    data = memoryview(dataset)
    uid = UID(transfer_syntax)
    if uid == DeflatedExplicitVRLittleEndian:
        data = memoryview(_inflate(data))
    explicit = not uid.is_implicit_VR
    little = uid.is_little_endian
    try:
        _walk(data, 0, len(data), explicit=explicit, little=little, stop=None)
    except struct.error as exc:
        raise ParseError("truncated data set") from exc


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
    data: memoryview, pos: int, end: int, *, explicit: bool, little: bool, stop: int | None
) -> int:
    """Skip elements from ``pos``; return the position after ``stop`` (a delimiter) or ``end``."""
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
