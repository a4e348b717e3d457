"""From an analysis to what the hub receives: a DICOM SR, a GSPS and a JSON AIResult.

- SR: Comprehensive 3D SR holding a TID 1500 Measurement Report; the coding is
  in :mod:`ainode.codes`. Always built, findings or not, so the hub learns the
  study was read (and, when it was not CT head, that the algorithm did not apply).
- GSPS: one rectangle and one text label per finding on its key slice, brain
  window (40/80 HU); one GSPS per source series with findings, none without
  findings (nothing to display).
- JSON: an :class:`engine.ai_result.AIResult` (``source="json"``) naming the
  SR and GSPS it matches in ``result_sop_instance_uids``.

The results belong to the source study: patient and study modules are copied
from the source images (highdicom does it from the SR evidence and GSPS
referenced images); series and instances are new. Equipment: Manufacturer
"Meridian", ManufacturerModelName "meridian-hyperdense", SoftwareVersions the
algorithm version.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.uid import generate_uid

from ainode import MODEL_NAME, __version__
from ainode import codes as c
from ainode.algorithm import Analysis, Finding, Params
from engine.ai_result import AIFinding, AIResult

__all__ = [
    "GSPS_SERIES_NUMBER",
    "MANUFACTURER",
    "SR_SERIES_NUMBER",
    "Results",
    "build_ai_result",
    "build_gsps",
    "build_results",
    "build_sr",
]

log = logging.getLogger(__name__)

MANUFACTURER = "Meridian"
SR_SERIES_NUMBER = 990
GSPS_SERIES_NUMBER = 991
_DEVICE_UID = generate_uid(entropy_srcs=[MODEL_NAME, "device"])  # stable: one model, one device
_BRAIN_WINDOW = (40.0, 80.0)  # centre, width in HU


@dataclass(frozen=True)
class Results:
    """Everything sent back for one study."""

    sr: Dataset
    gsps: list[hd.pr.GrayscaleSoftcopyPresentationState]  # one per source series with findings
    ai_result: AIResult

    @property
    def dicom(self) -> list[Dataset]:
        """The instances to C-STORE, SR first."""
        return [self.sr, *self.gsps]


def build_results(
    analysis: Analysis,
    sources: Sequence[Dataset],
    *,
    params: Params | None = None,
    produced_at: datetime | None = None,
) -> Results:
    """The SR, the GSPS (when there are findings) and the JSON result of one study."""
    if not sources:
        raise ValueError("results need the source instances (patient and study modules)")
    tracking_uids = [str(generate_uid()) for _ in analysis.findings]
    sr = build_sr(analysis, sources, params=params, tracking_uids=tracking_uids)
    gsps = build_gsps(analysis, sources, tracking_uids=tracking_uids)
    uids = [str(ds.SOPInstanceUID) for ds in (sr, *gsps)]
    return Results(sr, gsps, build_ai_result(analysis, sources, uids, produced_at))


# -- SR ----------------------------------------------------------------------------


def build_sr(
    analysis: Analysis,
    sources: Sequence[Dataset],
    *,
    params: Params | None = None,
    tracking_uids: Sequence[str] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """A Comprehensive 3D SR with a TID 1500 report of ``analysis`` (coding: ainode.codes)."""
    algorithm = hd.sr.AlgorithmIdentification(
        name=MODEL_NAME, version=__version__, parameters=(params or Params()).describe()
    )
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    uids = tracking_uids or [str(generate_uid()) for _ in analysis.findings]
    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = [_assessment_group(analysis, algorithm)]
    for number, (finding, uid) in enumerate(zip(analysis.findings, uids, strict=True), start=1):
        groups.append(_roi_group(finding, number, uid, by_uid, algorithm))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(),
        procedure_reported=c.PROCEDURE_HEAD_CT,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(sources),
        content=report,
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # an algorithm's output: unverified until a radiologist reads it
    )
    _equipment(sr, "AI hyperdense regions")
    return sr


def _observation_context() -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_DEVICE_UID, name=MODEL_NAME, manufacturer_name=MANUFACTURER, model_name=MODEL_NAME
    )
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(c.DEVICE),
        observer_identifying_attributes=device,
    )
    return hd.sr.ObservationContext(observer_device_context=observer)


def _assessment_group(
    analysis: Analysis, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The study-level group: whether the algorithm applied, whether anything is critical."""
    critical = any(finding.critical for finding in analysis.findings)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=c.STUDY_ASSESSMENT
        ),
        algorithm_id=algorithm,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(c.APPLICABLE, c.YES if analysis.applicable else c.NO),
            hd.sr.QualitativeEvaluation(c.CRITICAL, c.YES if critical else c.NO),
        ],
    )


def _roi_group(
    finding: Finding,
    number: int,
    tracking_uid: str,
    sources: dict[str, Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    frames = [finding.frame_number] if finding.frame_number is not None else None
    source = hd.sr.SourceImageForRegion.from_source_image(
        sources[finding.sop_instance_uid], referenced_frame_numbers=frames
    )
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=_outline(finding),
        source_image=source,
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid, identifier=f"{c.FINDING_LABEL} {number}"
        ),
        referenced_region=region,
        finding_type=c.HYPERDENSE_REGION,
        finding_sites=[hd.sr.FindingSite(c.BRAIN)],
        algorithm_id=algorithm,
        measurements=[
            # The group's algorithm identification covers its measurements; no repeat.
            hd.sr.Measurement(c.VOLUME, finding.volume_mm3, c.VOLUME_UNIT),
            hd.sr.Measurement(c.ATTENUATION, finding.mean_hu, c.HOUNSFIELD_UNIT, derivation=c.MEAN),
            hd.sr.Measurement(c.SCORE, finding.score, c.NO_UNITS),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(c.CRITICAL, c.YES if finding.critical else c.NO)
        ],
    )


def _outline(finding: Finding) -> npt.NDArray[np.float64]:
    """The bounding box as a closed polyline (column, row), clockwise from the top left."""
    x0, y0, x1, y1 = finding.bounding_box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)


# -- GSPS --------------------------------------------------------------------------


def build_gsps(
    analysis: Analysis,
    sources: Sequence[Dataset],
    *,
    tracking_uids: Sequence[str] | None = None,
) -> list[hd.pr.GrayscaleSoftcopyPresentationState]:
    """GSPS outlining each finding on its key slice: one per source series, none without findings.

    One per series because a GSPS has one modality LUT for all the images it
    references, and only within a series can the rescale be expected to agree.
    A series whose images disagree gets no GSPS (logged): the SR still carries
    its findings.
    """
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    uids = tracking_uids or [str(generate_uid()) for _ in analysis.findings]
    numbered = list(enumerate(zip(analysis.findings, uids, strict=True), start=1))
    series_uids = list(dict.fromkeys(f.series_instance_uid for f in analysis.findings))
    series_uid = generate_uid()  # one new series holds them all
    states: list[hd.pr.GrayscaleSoftcopyPresentationState] = []
    for series in series_uids:
        members = [(n, f, uid) for n, (f, uid) in numbered if f.series_instance_uid == series]
        try:
            states.append(_gsps(members, by_uid, series_uid, len(states) + 1))
        except ValueError as exc:  # highdicom's consistency checks; messages quote no values
            log.warning("GSPS for series %s skipped: %s", series, exc)
    return states


def _gsps(
    members: list[tuple[int, Finding, str]],
    by_uid: dict[str, Dataset],
    series_uid: str,
    instance_number: int,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    layer = hd.pr.GraphicLayer(layer_name="AI", order=1, description=f"{MODEL_NAME} findings")
    annotations = [
        _annotation(finding, number, uid, by_uid[finding.sop_instance_uid], layer)
        for number, finding, uid in members
    ]
    referenced = {f.sop_instance_uid: by_uid[f.sop_instance_uid] for _, f, _ in members}
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=list(referenced.values()),
        series_instance_uid=series_uid,
        series_number=GSPS_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=__version__,
        device_serial_number=MODEL_NAME,
        content_label="HYPERDENSE",
        content_description="AI hyperdense regions",
        graphic_annotations=annotations,
        graphic_layers=[layer],
        voi_lut_transformations=[
            # Lists throughout: highdicom 0.28 splits a str explanation into characters.
            hd.pr.SoftcopyVOILUTTransformation(
                window_center=[_BRAIN_WINDOW[0]],
                window_width=[_BRAIN_WINDOW[1]],
                window_explanation=["BRAIN"],
            )
        ],
    )
    _equipment(gsps, "AI hyperdense regions (display)")
    return gsps


def _annotation(
    finding: Finding, number: int, tracking_uid: str, image: Dataset, layer: hd.pr.GraphicLayer
) -> hd.pr.GraphicAnnotation:
    _, y0, x1, _ = finding.bounding_box
    # GSPS has no rectangle graphic type (PS3.3 C.10.5.1.2): a closed polyline draws it.
    rectangle = hd.pr.GraphicObject(
        graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
        graphic_data=_outline(finding),
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        tracking_id=f"{c.FINDING_LABEL} {number}",
        tracking_uid=tracking_uid,  # the SR group's tracking UID: the same finding
    )
    label = hd.pr.TextObject(
        text_value=_label(finding, number),
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        anchor_point=(float(x1), float(y0)),
    )
    return hd.pr.GraphicAnnotation(
        referenced_images=[image],
        graphic_layer=layer,
        referenced_frame_number=finding.frame_number,
        graphic_objects=[rectangle],
        text_objects=[label],
    )


def _label(finding: Finding, number: int) -> str:
    text = (
        f"{c.FINDING_LABEL} {number}: {finding.volume_mm3 / 1000:.1f} mL, "
        f"{finding.mean_hu:.0f} HU, score {finding.score:.2f}"
    )
    return f"{text} (CRITICAL)" if finding.critical else text


def _equipment(ds: Dataset, series_description: str) -> None:
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = __version__
    ds.SeriesDescription = series_description


# -- JSON --------------------------------------------------------------------------


def build_ai_result(
    analysis: Analysis,
    sources: Sequence[Dataset],
    result_sop_instance_uids: Sequence[str] = (),
    produced_at: datetime | None = None,
) -> AIResult:
    """The JSON finding (AIResult, source "json") of ``analysis``."""
    first = sources[0]
    return AIResult(
        study_instance_uid=str(first.StudyInstanceUID),
        accession_number=str(first.get("AccessionNumber") or "") or None,
        model=MODEL_NAME,
        model_version=__version__,
        status="completed",
        findings=[_ai_finding(finding) for finding in analysis.findings],
        produced_at=produced_at or datetime.now(UTC),
        source="json",
        result_sop_instance_uids=list(result_sop_instance_uids),
    )


def _ai_finding(finding: Finding) -> AIFinding:
    return AIFinding(
        code=c.FINDING_CODE,
        label=c.FINDING_LABEL,
        score=finding.score,
        critical=finding.critical,
        referenced_sop_instance_uid=finding.sop_instance_uid,
        bounding_box=[float(value) for value in finding.bounding_box],
        measurements={"volume_mm3": finding.volume_mm3, "mean_hu": finding.mean_hu},
    )
