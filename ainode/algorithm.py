"""Hyperdense-region detection on CT head: small, deterministic, explainable.

Acute blood is denser than brain: fresh clot measures about 50-90 HU against
20-45 HU for grey and white matter, while bone is several hundred HU and more.
The algorithm, on each volume (one series, slices sorted along the normal;
see :mod:`ainode.volume`), with the defaults of :class:`Params`:

1. **Denoise**: a 3x3 median filter in each slice. CT noise makes single
   brain pixels cross 50 HU; a median removes such specks yet keeps edges
   (and never invents intermediate values between brain and bone).
2. **Threshold**: candidate voxels have a filtered value in [50, 90] HU.
3. **Exclude the skull rim**: voxels within 2 mm (in the slice) of bone,
   > 200 HU, are dropped. Partial-volume pixels along the inner table of the
   skull measure exactly like blood and are the main false positive; a margin
   is simpler and more robust than segmenting the brain, and it keeps the
   inner part of a collection lying against the skull (a subdural, say).
4. **Connect**: 3D connected components (faces touching, across slices),
   ``scipy.ndimage.label``.
5. **Keep** components of at least 100 mm^3 (0.1 mL); voxel volume = slice
   spacing x PixelSpacing rows x columns.
6. **Score** = 1 / (1 + (V50 / V)^k), a logistic in log-volume: 0.5 at
   V50 = 500 mm^3, k = 2 sets the steepness (100 mm^3 -> 0.04, 1 mL -> 0.8,
   5 mL -> 0.99). Bigger is more likely real and more urgent; the score is
   not a calibrated probability.
7. **Critical** when V >= 1000 mm^3 (1 mL).

Each finding is reported on its key slice, the slice where the component's
cross-section is largest (the first such slice along the normal on a tie),
with the bounding box of that cross-section in pixel coordinates
``(x0, y0, x1, y1)``: x is the column, y the row, and the box runs along pixel
*edges* (x1 = last column + 1), as DICOM's PIXEL annotation units and SR
SCOORDs count (0,0 is the top left corner of the top left pixel). Volume and
mean HU (of the unfiltered values) are those of the whole 3D component.

Not a medical device: no calcification, contrast or beam-hardening handling.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from scipy import ndimage

from ainode.volume import Volume, build_volumes, ct_images, not_applicable_reason

__all__ = ["Analysis", "Finding", "Params", "Region", "analyse", "detect", "find_regions", "score"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    """The algorithm's settings; the defaults are the documented algorithm."""

    low_hu: float = 50.0
    high_hu: float = 90.0
    bone_hu: float = 200.0
    bone_margin_mm: float = 2.0
    median_size: int = 3  # pixels, in-plane; 1 turns the filter off
    min_volume_mm3: float = 100.0
    critical_volume_mm3: float = 1000.0
    score_half_volume_mm3: float = 500.0
    score_steepness: float = 2.0

    def describe(self) -> list[str]:
        """The settings as ``name=value`` strings (recorded in the SR's algorithm parameters)."""
        return [f"{name}={value:g}" for name, value in vars(self).items()]


@dataclass(frozen=True)
class Region:
    """A component found in a HU array: where (slice index, box), how big, how dense, how sure."""

    slice_index: int
    bounding_box: tuple[int, int, int, int]  # x0, y0, x1, y1 on pixel edges
    volume_mm3: float
    mean_hu: float
    score: float
    critical: bool
    slice_count: int


@dataclass(frozen=True)
class Finding:
    """A region placed on its source image."""

    series_instance_uid: str
    sop_instance_uid: str
    frame_number: int | None  # multi-frame sources only (1-based)
    bounding_box: tuple[int, int, int, int]
    volume_mm3: float
    mean_hu: float
    score: float
    critical: bool
    slice_count: int


@dataclass(frozen=True)
class Analysis:
    """What the algorithm said about a study, including why it said nothing."""

    findings: list[Finding]
    applicable: bool
    reason: str | None = None  # why not applicable (no PHI)
    volumes_analysed: int = 0
    skipped: list[str] = field(default_factory=list)  # series that could not be analysed


def detect(datasets: Sequence[Dataset], params: Params | None = None) -> list[Finding]:
    """The hyperdense regions in a study's instances (none for non-CT or non-head studies)."""
    return analyse(datasets, params).findings


def analyse(datasets: Sequence[Dataset], params: Params | None = None) -> Analysis:
    """:func:`detect`, with whether the study was applicable and what was skipped."""
    params = params or Params()
    reason = not_applicable_reason(datasets)
    if reason is not None:
        return Analysis(findings=[], applicable=False, reason=reason)
    volumes, skipped = build_volumes(ct_images(datasets))
    findings = [finding for volume in volumes for finding in _findings(volume, params)]
    # Most suspicious first; UIDs and box break ties so the order never depends on input order.
    findings.sort(key=lambda f: (-f.score, f.series_instance_uid, f.sop_instance_uid,
                                 f.bounding_box))  # fmt: skip
    return Analysis(findings, applicable=True, volumes_analysed=len(volumes), skipped=skipped)


def _findings(volume: Volume, params: Params) -> list[Finding]:
    regions = find_regions(volume.hu, volume.spacing, params)
    findings = []
    for region in regions:
        ref = volume.slices[region.slice_index]
        findings.append(
            Finding(
                series_instance_uid=volume.series_instance_uid,
                sop_instance_uid=ref.sop_instance_uid,
                frame_number=ref.frame_number,
                bounding_box=region.bounding_box,
                volume_mm3=region.volume_mm3,
                mean_hu=region.mean_hu,
                score=region.score,
                critical=region.critical,
                slice_count=region.slice_count,
            )
        )
    return findings


def find_regions(
    hu: npt.NDArray[np.floating], spacing: tuple[float, float, float], params: Params | None = None
) -> list[Region]:
    """The hyperdense regions of a (slices, rows, columns) HU array; ``spacing`` in mm, same order.

    Pure function of its arguments: same input, same output, in slice then box order.
    """
    params = params or Params()
    if hu.ndim != 3:
        raise ValueError("hu must be a (slices, rows, columns) array")
    candidates = _candidates(hu, spacing, params)
    # Faces only (6-connectivity): diagonal contact between noise specks does not chain them.
    labels, count = ndimage.label(candidates, structure=ndimage.generate_binary_structure(3, 1))
    if count == 0:
        return []
    voxel_mm3 = float(np.prod(spacing))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    boxes = ndimage.find_objects(labels)
    regions = []
    for label in range(1, count + 1):
        volume = float(sizes[label]) * voxel_mm3
        if volume >= params.min_volume_mm3:
            box = boxes[label - 1]
            regions.append(_region(hu[box], labels[box] == label, box, volume, params))
    regions.sort(key=lambda region: (region.slice_index, region.bounding_box))
    return regions


def _candidates(
    hu: npt.NDArray[np.floating], spacing: tuple[float, float, float], params: Params
) -> npt.NDArray[np.bool_]:
    """Voxels in the blood window, denoised, away from bone."""
    size = params.median_size
    smoothed = ndimage.median_filter(hu, size=(1, size, size)) if size > 1 else hu
    candidates = (smoothed >= params.low_hu) & (smoothed <= params.high_hu)
    bone = hu > params.bone_hu
    if bone.any():
        margin_px = max(1, int(np.ceil(params.bone_margin_mm / min(spacing[1], spacing[2]))))
        in_plane = np.zeros((3, 3, 3), dtype=bool)
        in_plane[1] = True  # a 3x3 square in the slice, nothing across slices
        near_bone = ndimage.binary_dilation(bone, structure=in_plane, iterations=margin_px)
        candidates &= ~near_bone
    result: npt.NDArray[np.bool_] = candidates
    return result


def _region(
    hu: npt.NDArray[np.floating],
    mask: npt.NDArray[np.bool_],
    box: tuple[slice, slice, slice],
    volume: float,
    params: Params,
) -> Region:
    """Measure one component: ``hu`` and ``mask`` are cut to ``box``, its extent in the volume."""
    areas = mask.sum(axis=(1, 2))
    key = int(np.argmax(areas))  # argmax takes the first of equal maxima
    rows, columns = np.nonzero(mask[key])
    y0, x0 = box[1].start, box[2].start
    bounding_box = (
        int(x0 + columns.min()),
        int(y0 + rows.min()),
        int(x0 + columns.max() + 1),
        int(y0 + rows.max() + 1),
    )
    mean_hu = float(hu[mask].mean())
    return Region(
        slice_index=int(box[0].start + key),
        bounding_box=bounding_box,
        volume_mm3=round(volume, 1),
        mean_hu=round(mean_hu, 1),
        score=round(score(volume, params), 4),
        critical=volume >= params.critical_volume_mm3,
        slice_count=int(np.count_nonzero(areas)),
    )


def score(volume_mm3: float, params: Params | None = None) -> float:
    """1 / (1 + (V50 / V)^k): 0.5 at V50, rising with volume (logistic in log-volume)."""
    params = params or Params()
    if volume_mm3 <= 0:
        return 0.0
    ratio = params.score_half_volume_mm3 / volume_mm3
    return float(1.0 / (1.0 + ratio**params.score_steepness))
