"""CT instances -> volumes in Hounsfield units, with the geometry the algorithm measures with.

What is analysed (:func:`not_applicable_reason`, :func:`ct_images`):

- CT images only: CT Image Storage and Enhanced CT Image Storage with pixel
  data; localizers (scouts, ``ImageType`` containing LOCALIZER) are left out.
- Head studies only: BodyPartExamined HEAD, BRAIN or SKULL; when the body
  part is empty (modalities often leave it so) the study, series or protocol
  description must mention HEAD, BRAIN or CRANI(al). A body part that says
  something else wins over a description.

How a volume is built (:func:`build_volumes`): the single-frame images of a
series form one volume; each multi-frame (Enhanced CT) instance forms its
own. Slices are sorted along the slice normal (ImagePositionPatient projected
on the cross product of ImageOrientationPatient's two directions), or by
InstanceNumber / frame number when positions are missing. The slice spacing
is the median gap between sorted positions, else SliceThickness. Stored
values become HU with each slice's own RescaleSlope/RescaleIntercept.

A series that cannot be made into a volume (sizes or pixel spacings differ,
pixel data that cannot be decoded) is skipped with a reason that quotes no
value from the data set (reasons are logged; data set values may be PHI).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.uid import UID

__all__ = [
    "CT_IMAGE_STORAGE",
    "ENHANCED_CT_IMAGE_STORAGE",
    "SliceRef",
    "Volume",
    "VolumeError",
    "build_volumes",
    "ct_images",
    "is_head",
    "not_applicable_reason",
]

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
ENHANCED_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2.1")
_CT_SOP_CLASSES = frozenset({CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE})

HEAD_BODY_PARTS = frozenset({"HEAD", "BRAIN", "SKULL"})
_HEAD_WORDS = ("HEAD", "BRAIN", "CRANI")
_DESCRIPTIONS = ("StudyDescription", "SeriesDescription", "ProtocolName")

# Where an Enhanced CT keeps, per frame or shared, what a CT image has at top level.
_FUNCTIONAL_GROUP_OF = {
    "ImageOrientationPatient": "PlaneOrientationSequence",
    "ImagePositionPatient": "PlanePositionSequence",
    "PixelSpacing": "PixelMeasuresSequence",
    "SliceThickness": "PixelMeasuresSequence",
    "RescaleSlope": "PixelValueTransformationSequence",
    "RescaleIntercept": "PixelValueTransformationSequence",
}
_SAME_MM = 1e-3  # pixel spacings closer than this are the same


class VolumeError(ValueError):
    """A series that cannot be analysed; the message quotes no data set value."""


@dataclass(frozen=True, slots=True)
class SliceRef:
    """Which image a slice of a volume is: an instance, and a frame of it if multi-frame."""

    sop_instance_uid: str
    frame_number: int | None = None  # 1-based, multi-frame instances only


@dataclass(frozen=True)
class Volume:
    """One series (or one multi-frame instance) as a HU array sorted along the slice normal."""

    series_instance_uid: str
    hu: npt.NDArray[np.float32]  # (slices, rows, columns)
    spacing: tuple[float, float, float]  # mm: between slices, between rows, between columns
    slices: tuple[SliceRef, ...]  # slices[i] is hu[i]


@dataclass(frozen=True)
class _Plane:
    """One 2D image before stacking: where it is and how to get its HU."""

    ref: SliceRef
    position: float | None  # along the slice normal, mm
    number: int  # InstanceNumber or frame number: the order when positions are missing
    shape: tuple[int, int]
    pixel_spacing: tuple[float, float]
    thickness: float | None
    slope: float
    intercept: float
    pixels: Callable[[], npt.NDArray[Any]]


def ct_images(datasets: Iterable[Dataset]) -> list[Dataset]:
    """The CT images with pixel data, localizers left out."""
    images = []
    for ds in datasets:
        if ds.get("SOPClassUID") not in _CT_SOP_CLASSES or "PixelData" not in ds:
            continue
        image_type = [str(value).upper() for value in _values(ds.get("ImageType"))]
        if "LOCALIZER" not in image_type:
            images.append(ds)
    return images


def is_head(ds: Dataset) -> bool:
    """Whether an image is of the head (body part first, descriptions when it is empty)."""
    body_part = str(ds.get("BodyPartExamined") or "").strip().upper()
    if body_part:
        return body_part in HEAD_BODY_PARTS
    text = " ".join(str(ds.get(keyword) or "") for keyword in _DESCRIPTIONS).upper()
    return any(word in text for word in _HEAD_WORDS)


def not_applicable_reason(datasets: Sequence[Dataset]) -> str | None:
    """Why the algorithm does not apply to a study, or None when it does."""
    images = ct_images(datasets)
    if not images:
        return "no CT image in the study"
    if not any(is_head(ds) for ds in images):
        return "not a head study"
    return None


def build_volumes(images: Sequence[Dataset]) -> tuple[list[Volume], list[str]]:
    """The volumes of ``images`` (series in UID order) and why some series were skipped."""
    groups: dict[str, list[Dataset]] = defaultdict(list)
    for ds in images:
        groups[str(ds.get("SeriesInstanceUID", ""))].append(ds)
    volumes: list[Volume] = []
    skipped: list[str] = []
    for series_uid in sorted(groups):
        single = [ds for ds in groups[series_uid] if _frames(ds) == 1]
        multi = [ds for ds in groups[series_uid] if _frames(ds) > 1]
        candidates = ([single] if single else []) + [[ds] for ds in multi]
        for members in candidates:
            try:
                volumes.append(_volume(series_uid, members))
            except VolumeError as exc:
                skipped.append(f"series {series_uid}: {exc}")
    return volumes, skipped


def _volume(series_uid: str, members: list[Dataset]) -> Volume:
    planes = _planes(members[0]) if _frames(members[0]) > 1 else _single_planes(members)
    planes = _sorted(planes)
    first = planes[0]
    for plane in planes:
        if plane.shape != first.shape or not np.allclose(
            plane.pixel_spacing, first.pixel_spacing, atol=_SAME_MM
        ):
            raise VolumeError("slices differ in size or pixel spacing")
    hu = np.empty((len(planes), *first.shape), dtype=np.float32)
    for index, plane in enumerate(planes):
        hu[index] = np.asarray(plane.pixels(), dtype=np.float32) * plane.slope + plane.intercept
    spacing = (_slice_spacing(planes), *first.pixel_spacing)
    return Volume(series_uid, hu, spacing, tuple(plane.ref for plane in planes))


def _single_planes(images: list[Dataset]) -> list[_Plane]:
    return [
        _plane(
            SliceRef(str(ds.SOPInstanceUID)),
            ds.get,
            int(ds.get("InstanceNumber") or 0),
            ds,
            partial(_decode, ds),
        )
        for ds in images
    ]


def _planes(ds: Dataset) -> list[_Plane]:
    """The frames of a multi-frame instance; its pixel data is decoded once, when first used."""
    decoded: list[npt.NDArray[Any]] = []

    def frame(index: int) -> npt.NDArray[Any]:
        if not decoded:
            decoded.append(_decode(ds))
        return np.asarray(decoded[0][index])

    return [
        _plane(
            SliceRef(str(ds.SOPInstanceUID), index + 1),
            _functional_groups(ds, index),
            index + 1,
            ds,
            partial(frame, index),
        )
        for index in range(_frames(ds))
    ]


def _plane(
    ref: SliceRef,
    get: Callable[[str], Any],
    number: int,
    ds: Dataset,
    pixels: Callable[[], npt.NDArray[Any]],
) -> _Plane:
    spacing = _floats(get("PixelSpacing"))
    if len(spacing) != 2 or min(spacing) <= 0:
        raise VolumeError("missing or invalid PixelSpacing")
    thickness = _floats(get("SliceThickness"))
    slope = get("RescaleSlope")
    intercept = get("RescaleIntercept")
    return _Plane(
        ref=ref,
        position=_position(get("ImagePositionPatient"), get("ImageOrientationPatient")),
        number=number,
        shape=(int(ds.Rows), int(ds.Columns)),
        pixel_spacing=(spacing[0], spacing[1]),
        thickness=thickness[0] if thickness and thickness[0] > 0 else None,
        # CT Image IOD requires both; 1 and 0 are the identity if a sender left them out.
        slope=float(slope) if slope not in (None, "") else 1.0,
        intercept=float(intercept) if intercept not in (None, "") else 0.0,
        pixels=pixels,
    )


def _functional_groups(ds: Dataset, index: int) -> Callable[[str], Any]:
    """A ``get`` for frame ``index``: the per-frame functional group first, then the shared."""
    containers = [
        *_values(ds.get("PerFrameFunctionalGroupsSequence"))[index : index + 1],
        *_values(ds.get("SharedFunctionalGroupsSequence"))[:1],
    ]

    def get(keyword: str) -> Any:
        for container in containers:
            items = container.get(_FUNCTIONAL_GROUP_OF[keyword])
            if items and keyword in items[0]:
                return items[0].get(keyword)
        return None

    return get


def _position(position: Any, orientation: Any) -> float | None:
    """Where a slice is along its normal (mm), or None without full geometry."""
    ipp, iop = _floats(position), _floats(orientation)
    if len(ipp) != 3 or len(iop) != 6:
        return None
    normal = np.cross(iop[:3], iop[3:])
    return float(np.dot(ipp, normal))


def _sorted(planes: list[_Plane]) -> list[_Plane]:
    if all(plane.position is not None for plane in planes):
        return sorted(planes, key=lambda plane: (plane.position, plane.number))
    return sorted(planes, key=lambda plane: plane.number)


def _slice_spacing(planes: list[_Plane]) -> float:
    """The median gap between slice positions, else the slice thickness (mm)."""
    positions = [plane.position for plane in planes if plane.position is not None]
    if len(positions) == len(planes) and len(planes) > 1:
        gap = float(np.median(np.diff(positions)))
        if gap <= _SAME_MM:
            raise VolumeError("several slices share one position")
        return gap
    if planes[0].thickness is not None:
        return planes[0].thickness
    raise VolumeError("no slice positions and no SliceThickness")


def _decode(ds: Dataset) -> npt.NDArray[Any]:
    try:
        pixels: npt.NDArray[Any] = ds.pixel_array
    except Exception as exc:  # decoders raise many types; the reason must not quote data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = syntax.name if isinstance(syntax, UID) else "unknown transfer syntax"
        raise VolumeError(f"cannot decode pixel data ({name}, {type(exc).__name__})") from exc
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and _frames(ds) == 1):
        raise VolumeError("pixel data is not grayscale")
    return pixels


def _frames(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames") or 1)


def _floats(value: Any) -> list[float]:
    try:
        return [float(item) for item in _values(value)]
    except (TypeError, ValueError):
        return []


def _values(value: Any) -> list[Any]:
    """A multi-valued element (or sequence) as a list; one value as a list of one."""
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)
