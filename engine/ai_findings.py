"""DICOM AI results (IHE AIR: SR TID 1500, GSPS, SEG, secondary capture) as AIResults.

:func:`result_from_datasets` summarizes the result instances an AI sent about one
study; :func:`results_from_batch` does it for a :class:`~engine.study_batch.StudyBatch`
of result files (one AIResult per study). The rules, in short:

* **SR TID 1500** (Comprehensive, Enhanced, Comprehensive 3D, Extensible): one finding
  per measurement group (see :mod:`engine.ai_sr`). The model is the TID 4019 Algorithm
  Identification, else ManufacturerModelName / SoftwareVersions.
* **GSPS** (and the colour/pseudo-colour presentation states): each PIXEL-unit graphic
  gives a box on its referenced image. With SR findings, a box completes a finding of
  the same image that has none (the SR stays the summary: other boxes are display only);
  without, each box is an ``annotation`` finding (score 1.0: the AI asserts it).
* **SEG**: one finding per segment: label SegmentLabel, code the segmented property type's
  meaning as a machine name (``lesion``), score 1.0 unless SegmentDescription carries a
  readable ``score``/``probability``, never critical (a segmentation delineates; it does
  not judge).
* **Secondary capture**: display only, recorded in ``result_sop_instance_uids``.

Other instances (images, KOS...) are ignored. Nothing here logs: results carry PHI.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import DT

from engine.ai_result import AIFinding, AIResult
from engine.ai_sr import bounding_box, machine_name, sr_algorithm, sr_findings
from engine.errors import TransformError
from engine.study_batch import StudyBatch

__all__ = ["UNKNOWN", "result_from_datasets", "results_from_batch"]

#: Model name/version when a result names neither (AIResult requires both).
UNKNOWN = "unknown"

_SR_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
})  # fmt: skip
_PRESENTATION_STATES = frozenset({
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.11.2",  # Color Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.11.3",  # Pseudo-Color Softcopy Presentation State
})  # fmt: skip
_SEG = "1.2.840.10008.5.1.4.1.1.66.4"
_SC_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # SC and its multi-frame variants (.7.1-.7.4)
_DESCRIPTION_SCORE = re.compile(
    r"(?:score|probability)\s*[:=]?\s*([0-9]*\.?[0-9]+)\s*(%?)", re.IGNORECASE
)


@dataclass(frozen=True)
class _Annotation:
    """A box a presentation state draws on one image."""

    sop_instance_uid: str | None
    box: list[float]
    label: str


def results_from_batch(batch: StudyBatch) -> list[AIResult]:
    """One AIResult per study of the batch's result files (studies with none are left out).

    Pixel data is not read. Raises :class:`TransformError` naming the instance when a
    file cannot be read.
    """
    by_study: dict[str, list[Dataset]] = {}
    for ref in batch.instances:
        try:
            ds = dcmread(ref.path, stop_before_pixels=True)
        except (OSError, InvalidDicomError, ValueError) as exc:
            raise TransformError(
                f"cannot read AI result instance {ref.sop_instance_uid}: {type(exc).__name__}"
            ) from exc
        study = str(ds.get("StudyInstanceUID") or batch.study_instance_uid)
        by_study.setdefault(study, []).append(ds)
    results = [result_from_datasets(datasets) for datasets in by_study.values()]
    return [result for result in results if result is not None]


def result_from_datasets(
    datasets: list[Dataset], *, produced_at: datetime | None = None
) -> AIResult | None:
    """The AIResult the result instances of one study add up to; None if none is a result.

    ``produced_at`` defaults to the content (else creation) date and time of the first
    result instance; a time without TimezoneOffsetFromUTC is taken as the hub's local time.
    Raises ValueError when the instances belong to different studies, and
    :class:`TransformError` when their content cannot be summarized.
    """
    results = [ds for ds in datasets if _kind(ds) is not None]
    if not results:
        return None
    studies = {str(ds.get("StudyInstanceUID") or "") for ds in results}
    if len(studies) != 1:
        raise ValueError(f"AI result instances of {len(studies)} studies given as one")
    try:
        return _summary(results, studies.pop(), produced_at)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        # Content no rule foresaw (a vendor's odd SR): an error naming its kind, never a
        # crash of the caller, and never a summary that silently lost a finding.
        raise TransformError(
            f"AI result instances cannot be summarized: {type(exc).__name__}"
        ) from exc


def _summary(results: list[Dataset], study: str, produced_at: datetime | None) -> AIResult:
    srs = [ds for ds in results if _kind(ds) == "sr"]
    findings = [finding for ds in srs for finding in sr_findings(ds)]
    annotations = [a for ds in results if _kind(ds) == "pr" for a in _annotations(ds)]
    findings = _merge(findings, annotations, have_sr=bool(srs))
    findings += [f for ds in results if _kind(ds) == "seg" for f in _segment_findings(ds)]
    model, version = _model(results)
    return AIResult(
        study_instance_uid=study,
        accession_number=_first(results, "AccessionNumber"),
        model=model,
        model_version=version,
        findings=findings,
        produced_at=produced_at or _produced_at(results[0]),
        source="dicom",
        result_sop_instance_uids=[
            str(ds.SOPInstanceUID) for ds in results if ds.get("SOPInstanceUID")
        ],
    )


def _kind(ds: Dataset) -> str | None:
    sop_class = str(ds.get("SOPClassUID") or "")
    if sop_class in _SR_CLASSES:
        return "sr"
    if sop_class in _PRESENTATION_STATES:
        return "pr"
    if sop_class == _SEG:
        return "seg"
    if sop_class == _SC_PREFIX or sop_class.startswith(_SC_PREFIX + "."):
        return "sc"
    return None


# -- model and time ----------------------------------------------------------------------


def _model(results: list[Dataset]) -> tuple[str, str]:
    """(name, version): SR algorithm identification, SEG algorithm, then equipment fields."""
    name = version = None
    for ds in results:
        if _kind(ds) == "sr":
            name, version = sr_algorithm(ds)
            if name:
                break
    if not name:
        name = next((n for ds in results for n in _segment_algorithms(ds)), None)
    name = name or _first(results, "ManufacturerModelName") or _first(results, "Manufacturer")
    version = version or _first(results, "SoftwareVersions")
    return name or UNKNOWN, version or UNKNOWN


def _first(datasets: Iterable[Dataset], keyword: str) -> str | None:
    """The first non-empty value of ``keyword`` (the first of a multi-valued one)."""
    for ds in datasets:
        value: Any = ds.get(keyword)
        if value is not None and not isinstance(value, str | bytes) and len(value):
            value = value[0]
        text = str(value or "").strip()
        if text:
            return text
    return None


def _produced_at(ds: Dataset) -> datetime:
    offset = str(ds.get("TimezoneOffsetFromUTC") or "")
    pairs = (
        ("ContentDate", "ContentTime"),
        ("InstanceCreationDate", "InstanceCreationTime"),
        ("PresentationCreationDate", "PresentationCreationTime"),
    )
    for date_keyword, time_keyword in pairs:
        day = str(ds.get(date_keyword) or "").strip()
        if not day:
            continue
        try:
            parsed = DT(f"{day}{str(ds.get(time_keyword) or '').strip()}{offset}")
        except ValueError:
            continue
        moment = datetime(
            parsed.year, parsed.month, parsed.day, parsed.hour, parsed.minute,
            parsed.second, parsed.microsecond, tzinfo=parsed.tzinfo,
        )  # fmt: skip
        # DICOM times without an offset are the creator's local time: assume ours.
        return moment if moment.tzinfo is not None else moment.astimezone()
    return datetime.now(UTC)


# -- presentation states -------------------------------------------------------------------


def _annotations(ds: Dataset) -> list[_Annotation]:
    """Boxes of the PIXEL-unit graphics (DISPLAY units are not image coordinates)."""
    found: list[_Annotation] = []
    default_image = _only_referenced_image(ds)
    for annotation in ds.get("GraphicAnnotationSequence") or []:
        images = annotation.get("ReferencedImageSequence") or []
        sop_uid = str(images[0].get("ReferencedSOPInstanceUID") or "") if images else None
        texts = [
            str(text.get("UnformattedTextValue") or "").strip()
            for text in annotation.get("TextObjectSequence") or []
        ]
        label = next((t for t in texts if t), "Annotation")
        for graphic in annotation.get("GraphicObjectSequence") or []:
            if str(graphic.get("GraphicAnnotationUnits") or "PIXEL").upper() != "PIXEL":
                continue
            box = bounding_box(graphic.get("GraphicType"), graphic.get("GraphicData"))
            if box is not None:
                found.append(_Annotation(sop_uid or default_image, box, label))
    return found


def _only_referenced_image(ds: Dataset) -> str | None:
    """The presentation state's single referenced image, if it references exactly one."""
    uids = [
        str(image.get("ReferencedSOPInstanceUID") or "")
        for series in ds.get("ReferencedSeriesSequence") or []
        for image in series.get("ReferencedImageSequence") or []
    ]
    return uids[0] if len(uids) == 1 and uids[0] else None


def _merge(
    findings: list[AIFinding], annotations: list[_Annotation], *, have_sr: bool
) -> list[AIFinding]:
    """Boxes complete the SR findings of their image, or become findings of their own."""
    if not have_sr:
        return [
            AIFinding(
                code="annotation",
                label=a.label,
                score=1.0,
                referenced_sop_instance_uid=a.sop_instance_uid,
                bounding_box=a.box,
            )
            for a in annotations
        ]
    merged = list(findings)
    for annotation in annotations:
        for index, finding in enumerate(merged):
            same_image = finding.referenced_sop_instance_uid == annotation.sop_instance_uid
            if same_image and finding.bounding_box is None:
                merged[index] = finding.model_copy(update={"bounding_box": annotation.box})
                break
    return merged


# -- segmentations ---------------------------------------------------------------------------


def _segment_algorithms(ds: Dataset) -> list[str]:
    if _kind(ds) != "seg":
        return []
    segments = ds.get("SegmentSequence") or []
    names = (str(s.get("SegmentAlgorithmName") or "").strip() for s in segments)
    return [name for name in names if name]


def _segment_findings(ds: Dataset) -> list[AIFinding]:
    sources = _segment_sources(ds)
    findings = []
    for segment in ds.get("SegmentSequence") or []:
        number = int(segment.get("SegmentNumber") or 0)
        label = str(segment.get("SegmentLabel") or "").strip()
        types = segment.get("SegmentedPropertyTypeCodeSequence") or []
        code = str(types[0].get("CodeValue") or "").strip() if types else ""
        meaning = str(types[0].get("CodeMeaning") or "").strip() if types else ""
        findings.append(
            AIFinding(
                code=machine_name(meaning) or code or machine_name(label) or f"segment-{number}",
                label=label or meaning or f"Segment {number}",
                score=_description_score(str(segment.get("SegmentDescription") or "")),
                referenced_sop_instance_uid=sources.get(number),
            )
        )
    return findings


def _description_score(description: str) -> float:
    """A ``score 0.87`` / ``probability: 87%`` in the description; 1.0 when there is none."""
    match = _DESCRIPTION_SCORE.search(description)
    if match is None:
        return 1.0
    value = float(match.group(1)) / (100 if match.group(2) else 1)
    return value if 0 <= value <= 1 else 1.0


def _segment_sources(ds: Dataset) -> dict[int, str]:
    """Segment number → the source image of its first frame (from the per-frame groups)."""
    sources: dict[int, str] = {}
    for frame in ds.get("PerFrameFunctionalGroupsSequence") or []:
        ids = frame.get("SegmentIdentificationSequence") or []
        derivations = frame.get("DerivationImageSequence") or []
        if not ids or not derivations:
            continue
        images = derivations[0].get("SourceImageSequence") or []
        uid = str(images[0].get("ReferencedSOPInstanceUID") or "") if images else ""
        number = int(ids[0].get("ReferencedSegmentNumber") or 0)
        if uid and number not in sources:
            sources[number] = uid
    return sources
