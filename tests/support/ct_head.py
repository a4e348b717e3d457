"""Synthetic CT heads in HU: skull ring, brain, optional 70 HU blood blocks (for AI tests)."""

from __future__ import annotations

import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from tests.support.dicom_files import make_ct_instance

SIZE = 64
VOXEL_MM3 = 0.7 * 0.7 * 5.0
Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (numpy slicing order)

# A blob over instances 4-6, largest on 5: rows 18-31, columns 18-33.
BLOB: dict[int, Box] = {4: (20, 20, 30, 30), 5: (18, 18, 32, 34), 6: (20, 20, 30, 30)}
BLOB_BOX = (18, 18, 34, 32)  # x0, y0, x1, y1 on pixel edges, on instance 5
# The 3x3 median removes each block's 4 corner pixels (only 4 of their 9 neighbours are blood).
BLOB_VOXELS = (100 - 4) + (224 - 4) + (100 - 4)


def head_hu(blob: Box | None = None, *, rim_hu: float | None = None) -> np.ndarray:
    """One slice in HU: skull ring, brain, optional blood block, optional rim along the skull."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    radius = np.hypot(yy - SIZE / 2 + 0.5, xx - SIZE / 2 + 0.5)
    hu = np.full((SIZE, SIZE), -1000.0)
    hu[radius < 28] = 1000.0
    hu[radius < 25] = 30.0
    if rim_hu is not None:  # partial volume of the inner table: blood-like, hugging the bone
        hu[(radius >= 23) & (radius < 25)] = rim_hu
    if blob is not None:
        y0, x0, y1, x1 = blob
        hu[y0:y1, x0:x1] = 70.0
    return hu


def head_series(
    blobs: dict[int, Box] | None = None,
    *,
    slices: int = 10,
    study_uid: str | None = None,
    body_part: str = "HEAD",
    rim_hu: float | None = None,
) -> list[Dataset]:
    """A CT head series (instances 1..slices) with 70 HU blocks on the given instances."""
    study_uid = study_uid or str(generate_uid())
    series_uid = str(generate_uid())
    blobs = blobs or {}
    datasets = []
    for number in range(1, slices + 1):
        ds = make_ct_instance(
            study_uid, series_uid, number=number, rows=SIZE, columns=SIZE, body_part=body_part,
            study_description=f"CT {body_part} W/O CONTRAST",
        )  # fmt: skip
        hu = head_hu(blobs.get(number), rim_hu=rim_hu)
        ds.PixelData = (hu + 1024).astype("<u2").tobytes()  # intercept -1024, slope 1
        datasets.append(ds)
    return datasets
