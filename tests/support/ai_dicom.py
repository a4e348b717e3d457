"""Realistic AI result instances (highdicom): TID 1500 SR, GSPS, SEG, secondary capture.

Built the way an AI node builds them (and as ``ainode`` does for the reference model):
an SR with Algorithm Identification, one Planar ROI measurement group per finding (image
region, a "Probability" NUM, a "Critical" qualitative evaluation, other measurements), a
GSPS drawing boxes, a SEG of a binary mask, an SC for display.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset, Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

__all__ = [
    "MODEL",
    "VERSION",
    "FindingSpec",
    "add_report_evaluation",
    "make_gsps",
    "make_sc",
    "make_seg",
    "make_sr",
]

MODEL = "meridian-hyperdense"
VERSION = "1.2.0"

_HYPERDENSE = hd.sr.CodedConcept("HYPERDENSE", "99MERIDIAN", "Hyperdense region")
_PROBABILITY = hd.sr.CodedConcept("PROB", "99MERIDIAN", "Probability")
_CRITICAL = hd.sr.CodedConcept("CRITICAL", "99MERIDIAN", "Critical")
_YES = hd.sr.CodedConcept("373066001", "SCT", "Yes")
_NO = hd.sr.CodedConcept("373067005", "SCT", "No")


@dataclass
class FindingSpec:
    """One measurement group of the SR."""

    points: Seq[tuple[float, float]] = ((10, 20), (30, 20), (30, 40), (10, 40), (10, 20))
    graphic_type: str = "POLYLINE"
    probability: float | None = 0.93
    probability_unit: str = "1"
    critical: bool | None = True
    finding: hd.sr.CodedConcept | None = _HYPERDENSE
    tracking_id: str = "region 1"
    volume_mm3: float | None = None
    image: Dataset | None = None  # default: the SR's first image
    planar: bool = True  # False: TID 1501 group naming its source image, without a region
    algorithm: bool = True  # name the algorithm (TID 4019) in the group


def _algorithm(name: str = MODEL, version: str = VERSION) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=name, version=version)


def _group(spec: FindingSpec, image: Dataset) -> Any:
    algorithm = _algorithm() if spec.algorithm else None
    measurements = []
    if spec.probability is not None:
        unit = hd.sr.CodedConcept(spec.probability_unit, "UCUM", spec.probability_unit)
        measurements.append(
            hd.sr.Measurement(_PROBABILITY, spec.probability, unit, algorithm_id=algorithm)
        )
    if spec.volume_mm3 is not None:
        mm3 = hd.sr.CodedConcept("mm3", "UCUM", "cubic millimeter")
        measurements.append(hd.sr.Measurement(codes.SCT.Volume, spec.volume_mm3, mm3))
    evaluations = []
    if spec.critical is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(_CRITICAL, _YES if spec.critical else _NO))
    common: dict[str, Any] = {
        "tracking_identifier": hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=spec.tracking_id
        ),
        "finding_type": spec.finding,
        "measurements": measurements or None,
        "qualitative_evaluations": evaluations or None,
        "algorithm_id": algorithm,
    }
    if not spec.planar:
        source = hd.sr.SourceImageForMeasurementGroup(image.SOPClassUID, image.SOPInstanceUID)
        return hd.sr.MeasurementsAndQualitativeEvaluations(source_images=[source], **common)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues[spec.graphic_type],
        graphic_data=np.array(spec.points, dtype=float),
        source_image=hd.sr.SourceImageForRegion(image.SOPClassUID, image.SOPInstanceUID),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=region, **common)


def add_report_evaluation(sr: Dataset, *, critical: bool) -> Dataset:
    """Add a report-level "Critical" evaluation (TID 1500 Qualitative Evaluations, 126011)."""
    container = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept("126011", "DCM", "Qualitative Evaluations"),
        relationship_type="CONTAINS",
    )
    container.ContentSequence = Sequence(
        [
            hd.sr.CodeContentItem(
                name=_CRITICAL, value=_YES if critical else _NO, relationship_type="CONTAINS"
            )
        ]
    )
    sr.ContentSequence.append(container)
    return sr


def make_sr(images: Seq[Dataset], findings: Seq[FindingSpec] = (FindingSpec(),)) -> Dataset:
    """A Comprehensive 3D SR (TID 1500) about ``images``, one group per finding."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=MODEL
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[_group(spec, spec.image or images[0]) for spec in findings] or None,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=list(images),
        content=report,
        series_instance_uid=generate_uid(),
        series_number=901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Meridian AI",
        is_complete=True,
        is_final=True,
    )


def make_gsps(image: Dataset, box: tuple[float, float, float, float], text: str = "") -> Dataset:
    """A GSPS drawing ``box`` (x0, y0, x1, y1) on ``image`` as a closed polyline."""
    x0, y0, x1, y1 = box
    layer = hd.pr.GraphicLayer(layer_name="AI", order=1)
    outline = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)
    texts = [hd.pr.TextObject(text, "PIXEL", anchor_point=(x0, y0))] if text else None
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[image],
        graphic_layer=layer,
        graphic_objects=[hd.pr.GraphicObject("POLYLINE", outline, "PIXEL")],
        text_objects=texts,
    )
    return hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[image],
        series_instance_uid=generate_uid(),
        series_number=902,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        content_label="AI_BOXES",
        graphic_layers=[layer],
        graphic_annotations=[annotation],
        manufacturer="Meridian AI",
        manufacturer_model_name=MODEL,
        software_versions=VERSION,
        device_serial_number="AI-0001",
    )


def make_seg(image: Dataset, labels: Seq[str] = ("Hyperdense",)) -> Dataset:
    """A binary SEG of ``image``: one square per label."""
    rows, columns = int(image.Rows), int(image.Columns)
    mask = np.zeros((1, rows, columns, len(labels)), dtype=np.uint8)
    descriptions = []
    for index, label in enumerate(labels):
        mask[0, 4 + index : 10 + index, 4:10, index] = 1
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=index + 1,
                segment_label=label,
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Lesion,
                algorithm_type="AUTOMATIC",
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name=MODEL, family=codes.DCM.ArtificialIntelligence, version=VERSION
                ),
            )
        )
    return hd.seg.Segmentation(
        source_images=[image],
        pixel_array=mask,
        segmentation_type="BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=903,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Meridian AI",
        manufacturer_model_name=MODEL,
        software_versions=VERSION,
        device_serial_number="AI-0001",
    )


def make_sc(image: Dataset) -> Dataset:
    """A secondary capture (an RGB picture of the result) for display."""
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=image,
        pixel_array=np.zeros((16, 16, 3), dtype=np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=("L", "P"),
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=904,
        instance_number=1,
        manufacturer="Meridian AI",
        manufacturer_model_name=MODEL,
        software_versions=VERSION,
    )
