"""Synthetic data for the demo: three ORM^O01 orders and CT studies made with pydicom.

Every name, ID and date is made up. The CT head is a 64x64 phantom in
Hounsfield units (air, a skull ring, brain at 30 HU) with a 70 HU block
across the middle slices: a "hyperdense region" of about 2 mL, which the
reference AI node reports as critical (from 1 mL).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

__all__ = ["CT_IMAGE_STORAGE", "DemoOrder", "ct_series", "demo_orders", "orm_message"]

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
SIZE = 64
PIXEL_MM = 0.7
SLICE_MM = 5.0
# Boxes (y0, x0, y1, x1) of the 70 HU block: larger on the middle three slices.
_SMALL_BOX = (20, 20, 30, 30)
_LARGE_BOX = (18, 18, 32, 34)


@dataclass(frozen=True)
class DemoOrder:
    """One order of the demo (synthetic patient)."""

    accession: str
    patient_id: str
    patient_name: str  # HL7 XPN: FAMILY^GIVEN
    modality: str
    procedure_code: str
    procedure_text: str
    priority: str  # HL7 ORC-7.6: S (STAT) or R (routine)
    body_part: str

    @property
    def priority_name(self) -> str:
        """How the order priority reads."""
        return {"S": "STAT", "A": "ASAP"}.get(self.priority, "ROUTINE")


def demo_orders(tag: str) -> list[DemoOrder]:
    """The demo's three orders; ``tag`` makes accessions unique per run (≤ 8 characters)."""
    return [
        DemoOrder(f"DM{tag}H", f"DEMO{tag}1", "DEMO^ALICE", "CT", "CTHEAD",
                  "CT Head without contrast", "R", "HEAD"),
        DemoOrder(f"DM{tag}C", f"DEMO{tag}2", "DEMO^BRUNO", "CT", "CTCHEST",
                  "CT Chest with contrast", "S", "CHEST"),
        DemoOrder(f"DM{tag}M", f"DEMO{tag}3", "DEMO^CARLA", "MR", "MRKNEE",
                  "MR Knee left", "R", "KNEE"),
    ]  # fmt: skip


def orm_message(order: DemoOrder, control_id: str, now: datetime) -> bytes:
    """An ORM^O01 (v2.5.1, ORC-1 NW) for ``order``, scheduled half an hour from ``now``."""
    start = (now + timedelta(minutes=30)).strftime("%Y%m%d%H%M")
    placer = f"PL{order.accession}"
    segments = [
        f"MSH|^~\\&|DEMO_EHR|HOSP|MERIDIAN|RAD|{now:%Y%m%d%H%M%S}||ORM^O01|{control_id}|P|2.5.1",
        f"PID|1||{order.patient_id}^^^HOSP^MR||{order.patient_name}||19700101|O",
        "PV1|1|O|RAD^^^HOSP",
        f"ORC|NW|{placer}|F{placer}||||^^^{start}^^{order.priority}",
        _segment("OBR", {1: "1", 2: placer, 3: f"F{placer}",
                         4: f"{order.procedure_code}^{order.procedure_text}^LOCAL",
                         18: order.accession, 19: f"RP{order.accession}",
                         20: f"SPS{order.accession}", 24: order.modality}),
    ]  # fmt: skip
    return ("\r".join(segments) + "\r").encode("ascii")


def _segment(name: str, fields: dict[int, str]) -> str:
    values = [""] * (max(fields) + 1)
    values[0] = name
    for position, value in fields.items():
        values[position] = value
    return "|".join(values)


def ct_series(
    item: Dataset, body_part: str, description: str, *, slices: int, hyperdense: bool
) -> list[Dataset]:
    """One axial CT series for the Modality Worklist ``item`` (patient, accession, study UID).

    As a modality does, the images take the study's identity from the worklist
    item. ``hyperdense`` puts the 70 HU block on the middle slices.
    """
    study_uid = str(item.get("StudyInstanceUID") or generate_uid())
    series_uid = str(generate_uid())
    frame_uid = str(generate_uid())
    middle = slices // 2 + 1
    boxes = {middle - 2: _SMALL_BOX, middle - 1: _LARGE_BOX, middle: _LARGE_BOX,
             middle + 1: _LARGE_BOX, middle + 2: _SMALL_BOX} if hyperdense else {}  # fmt: skip
    series = []
    for number in range(1, slices + 1):
        ds = _ct_instance(item, study_uid, series_uid, frame_uid, number)
        ds.BodyPartExamined = body_part
        ds.StudyDescription = description
        hu = _phantom(boxes.get(number))
        ds.PixelData = (hu + 1024).astype("<u2").tobytes()
        series.append(ds)
    return series


def _phantom(box: tuple[int, int, int, int] | None) -> np.ndarray:
    """One slice in HU: air, skull ring, brain, and the block if any."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    radius = np.hypot(yy - SIZE / 2 + 0.5, xx - SIZE / 2 + 0.5)
    hu = np.full((SIZE, SIZE), -1000.0)
    hu[radius < 28] = 1000.0
    hu[radius < 25] = 30.0
    if box is not None:
        y0, x0, y1, x1 = box
        hu[y0:y1, x0:x1] = 70.0
    return hu


def _ct_instance(
    item: Dataset, study_uid: str, series_uid: str, frame_uid: str, number: int
) -> Dataset:
    sop_uid = str(generate_uid())
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    now = datetime.now()
    ds.StudyDate, ds.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for keyword in ("AccessionNumber", "PatientName", "PatientID", "PatientBirthDate",
                    "PatientSex"):  # fmt: skip
        setattr(ds, keyword, item.get(keyword, ""))
    ds.Modality = "CT"
    ds.Manufacturer = "Meridian demo"
    ds.StationName = "CTDEMO"
    ds.SeriesDescription = "AXIAL 5mm"
    ds.SliceThickness = str(SLICE_MM)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [0, 0, -SLICE_MM * number]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = frame_uid
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = SIZE
    ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    return ds
