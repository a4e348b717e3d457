"""Synthetic DICOM instances for tests and benchmarks: small valid CT images, no numpy needed.

Typical use::

    study = write_study(tmp_path / "in", series=3, per_series=4)
    # study.paths: every file written; study.study_uid, study.series_uids
    # storescu ... +sd tmp_path/"in"

    datasets = make_ct_series(study_uid, series_uid, count=10, rows=64, columns=64)

Every instance is a CT Image Storage Part 10 file in Explicit VR Little Endian
with 16-bit pixel data (``rows * columns * 2`` bytes; 512x512 gives 512 KB).
UIDs come from pydicom's ``generate_uid`` unless given. The pixel data is a
deterministic pattern (different per instance) so byte comparisons mean
something and compressors have real work to do.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    generate_uid,
)

__all__ = [
    "CT_IMAGE_STORAGE",
    "StudyFiles",
    "compress",
    "make_ct_instance",
    "make_ct_series",
    "write_dataset",
    "write_study",
]

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")


@dataclass(frozen=True)
class Patient:
    """Who the synthetic study belongs to (all made up)."""

    patient_id: str = "SYN0001"
    name: str = "Synthetic^Patient"
    birth_date: str = "19700101"
    sex: str = "O"


@dataclass
class StudyFiles:
    """What :func:`write_study` wrote."""

    study_uid: str
    series_uids: list[str]
    paths: list[Path] = field(default_factory=list)
    sop_uids: list[str] = field(default_factory=list)


def _pixels(rows: int, columns: int, seed: int) -> bytes:
    """16-bit little-endian pixels: a ramp offset by ``seed`` (cheap, deterministic)."""
    line = bytes((x + seed) & 0xFF for x in range(columns * 2))
    return (line * rows)[: rows * columns * 2]


def make_ct_instance(
    study_uid: str,
    series_uid: str,
    *,
    number: int = 1,
    sop_uid: str | None = None,
    rows: int = 64,
    columns: int = 64,
    patient: Patient | None = None,
    accession: str = "ACC0001",
    body_part: str = "CHEST",
    study_description: str = "CT CHEST W/O CONTRAST",
    series_description: str = "AXIAL 5mm",
    series_number: int = 1,
    station: str = "CTSTATION1",
    institution: str = "Meridian Test Hospital",
) -> Dataset:
    """One CT image (with file meta) of the given study and series."""
    patient = patient or Patient()
    sop_uid = sop_uid or str(generate_uid())
    ds = Dataset()
    ds.file_meta = _file_meta(sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20240105"
    ds.StudyTime = "083000"
    ds.AccessionNumber = accession
    ds.Modality = "CT"
    ds.Manufacturer = "Meridian"
    ds.InstitutionName = institution
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StationName = station
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.BodyPartExamined = body_part
    ds.SliceThickness = "5"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [0, 0, -5 * number]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame-of-reference"])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [0.7, 0.7]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.PixelData = _pixels(rows, columns, number * 7 + series_number)
    return ds


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def make_ct_series(
    study_uid: str,
    series_uid: str,
    count: int,
    *,
    series_number: int = 1,
    series_description: str = "AXIAL 5mm",
    **instance: object,
) -> list[Dataset]:
    """``count`` CT images of one series; ``instance`` goes to :func:`make_ct_instance`."""
    return [
        make_ct_instance(
            study_uid,
            series_uid,
            number=n,
            series_number=series_number,
            series_description=series_description,
            **instance,  # type: ignore[arg-type]
        )
        for n in range(1, count + 1)
    ]


def write_dataset(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a Part 10 file (preamble, meta) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_study(
    directory: Path,
    *,
    series: int = 3,
    per_series: int = 4,
    study_uid: str | None = None,
    series_uids: Sequence[str] | None = None,
    **instance: object,
) -> StudyFiles:
    """Write a study of ``series`` x ``per_series`` CT images under ``directory``.

    Files are named ``<series>_<instance>.dcm`` (no PHI, sorted in send order).
    ``instance`` keywords (rows, columns, patient, body_part, ...) go to
    :func:`make_ct_instance`.
    """
    study_uid = study_uid or str(generate_uid())
    uids = (
        [str(u) for u in series_uids]
        if series_uids
        else [str(generate_uid()) for _ in range(series)]
    )
    files = StudyFiles(study_uid, uids)
    for index, series_uid in enumerate(uids, start=1):
        datasets = make_ct_series(
            study_uid, series_uid, per_series, series_number=index,
            series_description=f"SERIES {index}", **instance,
        )  # fmt: skip
        for ds in datasets:
            path = write_dataset(ds, directory / f"{index:03}_{ds.InstanceNumber:04}.dcm")
            files.paths.append(path)
            files.sop_uids.append(str(ds.SOPInstanceUID))
    return files


def compress(source: Path, target: Path, kind: str) -> Path:
    """Re-encode a file with dcmtk: ``kind`` is "rle", "jpeg-lossless" or "jpeg-ls"."""
    tools = {
        "rle": ["dcmcrle"],
        "jpeg-lossless": ["dcmcjpeg", "+e1"],  # process 14, first-order prediction (SV1)
        "jpeg-ls": ["dcmcjpls"],
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [*tools[kind], str(source), str(target)], check=True, capture_output=True, timeout=30
    )
    return target
