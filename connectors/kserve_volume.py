"""A study batch's series as one tensor of Hounsfield units, ready for a model.

The model sees one series: the largest of the batch (most instances; the
first such in batch order on a tie), which for CT is the thin-slice volume
rather than a scout or a dose report. Slices are put in patient order
(ascending position along the slice normal, from ImagePositionPatient and
ImageOrientationPatient; InstanceNumber when positions are missing) because
slice order is what 3-D models depend on, and the order files arrived in is
arbitrary.

Files are read twice on purpose: headers first (to sort and size the
volume), then pixels straight into a preallocated array, so the peak memory
is one volume, not the volume plus every decoded slice. Call
:func:`load_volume` from a worker thread: it does disk I/O and decoding.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import Dataset, dcmread
from pydicom.uid import UID

from engine.errors import PermanentError
from engine.study_batch import InstanceRef, StudyBatch

__all__ = ["Volume", "largest_series", "load_volume"]


@dataclass(frozen=True)
class Volume:
    """``tensor[i]`` is the slice of ``sop_instance_uids[i]``, in Hounsfield units."""

    tensor: npt.NDArray[Any]
    sop_instance_uids: list[str]
    accession_number: str | None


@dataclass(frozen=True)
class _Slice:
    ref: InstanceRef
    rows: int
    columns: int
    order: tuple[float, ...]
    accession_number: str | None


def largest_series(batch: StudyBatch) -> list[InstanceRef]:
    """The instances of the batch's largest series, in batch order."""
    counts = Counter(ref.series_instance_uid for ref in batch.instances)
    # max() keeps the first of equals; Counter keeps first-seen order: ties go to batch order.
    chosen = max(counts, key=lambda uid: counts[uid])
    return [ref for ref in batch.instances if ref.series_instance_uid == chosen]


def load_volume(refs: Sequence[InstanceRef], dtype: np.dtype[Any]) -> Volume:
    """The slices of ``refs`` sorted in patient order, as HU in ``dtype`` (float or int16)."""
    slices = _sorted([_header(ref) for ref in refs])
    first = slices[0]
    for item in slices:
        if (item.rows, item.columns) != (first.rows, first.columns):
            raise PermanentError(
                f"instance {item.ref.sop_instance_uid} is {item.rows}x{item.columns}, "
                f"the series is {first.rows}x{first.columns}: not one volume"
            )
    tensor = np.empty((len(slices), first.rows, first.columns), dtype=dtype)
    for index, item in enumerate(slices):
        tensor[index] = _as_dtype(_hounsfield(item.ref), dtype)
    accession = next((s.accession_number for s in slices if s.accession_number), None)
    return Volume(tensor, [s.ref.sop_instance_uid for s in slices], accession)


def _read(ref: InstanceRef, *, pixels: bool) -> Dataset:
    try:
        return dcmread(ref.path, stop_before_pixels=not pixels)
    except OSError as exc:
        reason = exc.strerror or "I/O error"
        raise PermanentError(f"cannot read instance {ref.sop_instance_uid}: {reason}") from exc
    except Exception as exc:  # pydicom on a damaged file; its text may quote values (PHI)
        raise PermanentError(
            f"cannot read instance {ref.sop_instance_uid} ({type(exc).__name__})"
        ) from exc


def _header(ref: InstanceRef) -> _Slice:
    """What sorting and sizing need, read without the pixel data."""
    ds = _read(ref, pixels=False)
    uid = ref.sop_instance_uid
    if "Rows" not in ds or "Columns" not in ds:
        raise PermanentError(f"instance {uid} is not an image")
    if int(ds.get("SamplesPerPixel") or 1) != 1:
        raise PermanentError(f"instance {uid} is not a grayscale image")
    if int(ds.get("NumberOfFrames") or 1) != 1:
        raise PermanentError(f"instance {uid} is multi-frame: only single-frame slices are read")
    accession = str(ds.get("AccessionNumber") or "") or None
    return _Slice(ref, int(ds.Rows), int(ds.Columns), _order(ds), accession)


def _order(ds: Dataset) -> tuple[float, ...]:
    """The slice's sort key: (position along the normal,) or (instance number,) or ()."""
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    if position is not None and orientation is not None and len(orientation) == 6:
        row = np.array(orientation[:3], dtype=float)
        column = np.array(orientation[3:], dtype=float)
        return (float(np.dot(np.cross(row, column), np.array(position, dtype=float))),)
    number = ds.get("InstanceNumber")
    return (float(number),) if number is not None and str(number) != "" else ()


def _sorted(slices: list[_Slice]) -> list[_Slice]:
    """Patient order when every slice has a position; else instance numbers; else as given.

    Mixing the two keys (or sorting only some slices) would give an order that
    is neither, so the weaker key is used for all as soon as one slice lacks
    the stronger.
    """
    kinds = {len(s.order) for s in slices}
    if kinds == {1}:
        return sorted(slices, key=lambda s: s.order)  # stable: ties keep batch order
    return slices


def _hounsfield(ref: InstanceRef) -> npt.NDArray[np.float32]:
    """One slice's pixels rescaled to HU (RescaleSlope/Intercept; 1/0 when absent)."""
    ds = _read(ref, pixels=True)
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", ref.transfer_syntax_uid))
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # no decoder for this syntax, or damaged pixel data
        if syntax.is_compressed:
            raise PermanentError(
                f"instance {ref.sop_instance_uid} is compressed ({syntax.name}) and no decoder "
                "for it is installed: send it uncompressed or install pylibjpeg/gdcm"
            ) from exc
        raise PermanentError(
            f"cannot decode the pixels of instance {ref.sop_instance_uid} ({type(exc).__name__})"
        ) from exc
    slope = _number(ds, "RescaleSlope", 1.0)
    intercept = _number(ds, "RescaleIntercept", 0.0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _number(ds: Dataset, keyword: str, default: float) -> float:
    value = ds.get(keyword)
    return default if value is None or str(value) == "" else float(value)


def _as_dtype(hu: npt.NDArray[np.float32], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """HU in the tensor's dtype; integers are rounded and clipped, never wrapped around."""
    if np.issubdtype(dtype, np.integer):
        limits = np.iinfo(dtype)
        return np.clip(np.rint(hu), limits.min, limits.max).astype(dtype)
    return hu.astype(dtype, copy=False)
