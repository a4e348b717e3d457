"""DICOM AI results (highdicom SR TID 1500, GSPS, SEG, SC) summarized as AIResults."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import highdicom as hd
import pytest
from pydicom import DataElement, Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from engine.ai_findings import UNKNOWN, result_from_datasets, results_from_batch
from engine.ai_result import AIResult
from engine.ai_sr import bounding_box
from engine.errors import TransformError
from engine.study_batch import StudyBatch
from tests.support.ai_dicom import (
    MODEL,
    VERSION,
    FindingSpec,
    add_report_evaluation,
    make_gsps,
    make_sc,
    make_seg,
    make_sr,
)
from tests.support.batches import batch_json
from tests.support.dicom_files import make_ct_instance, write_dataset


@pytest.fixture(scope="module")
def images() -> list[Dataset]:
    study = str(generate_uid())
    series = str(generate_uid())
    return [make_ct_instance(study, series, number=n, accession="ACC42") for n in (1, 2)]


def summarize(*datasets: Dataset) -> AIResult:
    result = result_from_datasets(list(datasets))
    assert result is not None
    return result


# -- SR TID 1500 ------------------------------------------------------------------------


def test_a_tid1500_measurement_group_becomes_a_finding(images: list[Dataset]) -> None:
    sr = make_sr(images, [FindingSpec(volume_mm3=1234.5)])
    result = summarize(sr)
    assert (result.model, result.model_version) == (MODEL, VERSION)
    assert result.study_instance_uid == images[0].StudyInstanceUID
    assert result.accession_number == "ACC42"
    assert result.source == "dicom"
    assert result.status == "completed"
    assert result.result_sop_instance_uids == [sr.SOPInstanceUID]
    [finding] = result.findings
    assert (finding.code, finding.label) == ("hyperdense-region", "Hyperdense region")
    assert finding.score == pytest.approx(0.93)
    assert finding.critical is True
    assert finding.bounding_box == [10.0, 20.0, 30.0, 40.0]
    assert finding.referenced_sop_instance_uid == images[0].SOPInstanceUID
    assert finding.measurements == {"volume_mm3": 1234.5}


def test_each_group_is_a_finding_on_its_own_image(images: list[Dataset]) -> None:
    sr = make_sr(
        images,
        [
            FindingSpec(tracking_id="first", critical=False),
            FindingSpec(
                tracking_id="second",
                image=images[1],
                points=((1, 2), (5, 9), (3, 4)),
                probability=0.4,
                critical=None,
            ),
        ],
    )
    first, second = summarize(sr).findings
    assert (first.critical, first.referenced_sop_instance_uid) == (False, images[0].SOPInstanceUID)
    assert second.referenced_sop_instance_uid == images[1].SOPInstanceUID
    assert second.bounding_box == [1.0, 2.0, 5.0, 9.0]
    assert second.score == pytest.approx(0.4)
    assert second.critical is False
    assert summarize(sr).critical is False


@pytest.mark.parametrize(
    ("spec", "score", "expected"),
    [
        # percent normalized; no evaluation: critical when the score >= 0.8
        (FindingSpec(probability=87, probability_unit="%", critical=None), 0.87, True),
        (FindingSpec(probability=79, probability_unit="%", critical=None), 0.79, False),
        # the AI's own "not critical" wins over the score, and its "critical" too
        (FindingSpec(probability=0.95, critical=False), 0.95, False),
        (FindingSpec(probability=0.2, critical=True), 0.2, True),
        (FindingSpec(probability=1.7, critical=None), 1.0, True),  # kept within 0..1
    ],
)
def test_score_and_critical_rules(
    images: list[Dataset], spec: FindingSpec, score: float, expected: bool
) -> None:
    [finding] = summarize(make_sr(images, [spec])).findings
    assert finding.score == pytest.approx(score)
    assert finding.critical is expected


def test_an_unscored_finding_is_asserted_but_not_critical(images: list[Dataset]) -> None:
    spec = FindingSpec(probability=None, critical=None, finding=None, tracking_id="Nodule 3")
    [finding] = summarize(make_sr(images, [spec])).findings
    assert (finding.code, finding.label) == ("nodule-3", "Nodule 3")
    assert (finding.score, finding.critical) == (1.0, False)


def without_groups(sr: Dataset) -> Dataset:
    """The SR with its Imaging Measurements container emptied (a report without findings)."""
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "126010":
            item.ContentSequence = []
    return sr


def test_a_report_level_critical_evaluation_is_never_lost(images: list[Dataset]) -> None:
    unflagged = make_sr(images, [FindingSpec(critical=None, probability=0.3)])
    [finding] = summarize(add_report_evaluation(unflagged, critical=True)).findings
    assert finding.critical is True
    [alone] = summarize(
        add_report_evaluation(without_groups(make_sr(images)), critical=True)
    ).findings
    assert (alone.code, alone.critical, alone.score) == ("critical", True, 1.0)
    negative = add_report_evaluation(without_groups(make_sr(images)), critical=False)
    assert summarize(negative).findings == []


def assessment(critical: bool) -> Any:
    """A study-level TID 1501 group: tracking identifier and a "Critical finding" only."""
    concept = hd.sr.CodedConcept("CRITICAL", "99MERIDIAN", "Critical finding")
    value = hd.sr.CodedConcept(
        *(("373066001", "SCT", "Yes") if critical else ("373067005", "SCT", "No"))
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier="Study assessment"
        ),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(concept, value)],
    )


def with_assessment(sr: Dataset, critical: bool) -> Dataset:
    """``sr`` with a study assessment group first among its measurement groups."""
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "126010":
            item.ContentSequence.insert(0, assessment(critical)[0])
    return sr


def test_a_study_assessment_group_is_no_finding(images: list[Dataset]) -> None:
    negative = with_assessment(without_groups(make_sr(images)), critical=False)
    assert summarize(negative).findings == []
    positive = with_assessment(without_groups(make_sr(images)), critical=True)
    assert [(f.code, f.critical) for f in summarize(positive).findings] == [("critical", True)]
    # The study's "nothing critical" stands over a high score without its own evaluation.
    unflagged = make_sr(images, [FindingSpec(critical=None, probability=0.95)])
    [finding] = summarize(with_assessment(unflagged, critical=False)).findings
    assert (finding.code, finding.critical) == ("hyperdense-region", False)


def test_measurements_are_named_by_derivation_meaning_and_unit(images: list[Dataset]) -> None:
    sr = make_sr(images, [FindingSpec(volume_mm3=2500.0)])
    group = next(item for item in walk(sr) if item.get("ValueType") == "CONTAINER" and
                 item.ConceptNameCodeSequence[0].CodeValue == "125007")  # fmt: skip
    hu = hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")
    mean = hd.sr.Measurement(codes.DCM.AttenuationCoefficient, 62.5, hu, derivation=codes.SCT.Mean)
    plain = hd.sr.Measurement(codes.DCM.AttenuationCoefficient, 70.0, hu)
    length = hd.sr.Measurement(codes.SCT.Length, 12.0, hd.sr.CodedConcept("mm", "UCUM", "mm"))
    group.ContentSequence.extend([mean[0], plain[0], length[0]])
    [finding] = summarize(sr).findings
    assert finding.measurements == {
        "volume_mm3": 2500.0,
        "mean_hu": 62.5,
        "attenuation_hu": 70.0,
        "length_mm": 12.0,
    }


def walk(ds: Dataset) -> list[Dataset]:
    items = []
    for item in ds.get("ContentSequence") or []:
        items.append(item)
        items.extend(walk(item))
    return items


def test_the_reference_ai_node_reads_back_as_its_own_json(images: list[Dataset]) -> None:
    results = pytest.importorskip("ainode.results")
    algorithm = pytest.importorskip("ainode.algorithm")
    findings = [
        algorithm.Finding(
            series_instance_uid=str(images[0].SeriesInstanceUID),
            sop_instance_uid=str(image.SOPInstanceUID),
            frame_number=None,
            bounding_box=box,
            volume_mm3=volume,
            mean_hu=mean_hu,
            score=score,
            critical=critical,
            slice_count=3,
        )
        for image, box, volume, mean_hu, score, critical in (
            (images[0], (10, 12, 30, 33), 1500.0, 65.0, 0.97, True),
            (images[1], (40, 41, 50, 52), 200.0, 58.0, 0.41, False),
        )
    ]
    built = results.build_results(algorithm.Analysis(findings=findings, applicable=True), images)
    from_dicom = summarize(*built.dicom)
    expected = built.ai_result
    assert (from_dicom.model, from_dicom.model_version) == (expected.model, expected.model_version)
    assert from_dicom.study_instance_uid == expected.study_instance_uid
    assert from_dicom.findings == expected.findings
    assert from_dicom.result_sop_instance_uids == expected.result_sop_instance_uids


def test_without_algorithm_identification_the_equipment_names_the_model(
    images: list[Dataset],
) -> None:
    sr = make_sr(images, [FindingSpec(algorithm=False)])
    assert summarize(sr).model == "Meridian AI"  # Manufacturer, the last resort
    sr.ManufacturerModelName = "bleed-detect"
    sr.SoftwareVersions = ["3.1", "lib 2"]
    assert (summarize(sr).model, summarize(sr).model_version) == ("bleed-detect", "3.1")
    del sr.Manufacturer, sr.ManufacturerModelName, sr.SoftwareVersions
    assert (summarize(sr).model, summarize(sr).model_version) == (UNKNOWN, UNKNOWN)


@pytest.mark.parametrize(
    ("kind", "data", "box"),
    [
        ("POLYLINE", [3, 4, 1, 8, 6, 2], [1.0, 2.0, 6.0, 8.0]),
        ("RECTANGLE", [5, 5, 1, 1], [1.0, 1.0, 5.0, 5.0]),
        ("CIRCLE", [10, 10, 13, 14], [5.0, 5.0, 15.0, 15.0]),
        ("ELLIPSE", [0, 5, 10, 5, 5, 2, 5, 8], [0.0, 2.0, 10.0, 8.0]),
        ("POINT", [3, 4], None),
        ("POLYLINE", [1, 2, 3], None),
        ("POLYLINE", None, None),
    ],
)
def test_bounding_boxes_of_graphics(
    kind: str, data: list[float] | None, box: list[float] | None
) -> None:
    assert bounding_box(kind, data) == box


# -- GSPS, SEG, SC ----------------------------------------------------------------------------


def test_gsps_alone_gives_annotation_findings(images: list[Dataset]) -> None:
    gsps = make_gsps(images[1], (5, 6, 17, 28), text="hyperdensity")
    result = summarize(gsps)
    [finding] = result.findings
    assert (finding.code, finding.label, finding.score, finding.critical) == (
        "annotation",
        "hyperdensity",
        1.0,
        False,
    )
    assert finding.bounding_box == [5.0, 6.0, 17.0, 28.0]
    assert finding.referenced_sop_instance_uid == images[1].SOPInstanceUID
    assert (result.model, result.model_version) == (MODEL, VERSION)
    assert summarize(make_gsps(images[1], (0, 0, 1, 1))).findings[0].label == "Annotation"


def test_gsps_boxes_complete_the_sr_findings_of_their_image(images: list[Dataset]) -> None:
    sr = make_sr(images, [FindingSpec(planar=False, image=images[1])])
    [without_box] = summarize(sr).findings
    assert without_box.bounding_box is None
    assert without_box.referenced_sop_instance_uid == images[1].SOPInstanceUID
    elsewhere = make_gsps(images[0], (1, 1, 2, 2))
    here = make_gsps(images[1], (5, 6, 17, 28))
    result = summarize(sr, elsewhere, here)
    [finding] = result.findings  # the SR is the summary: the other box is display only
    assert finding.bounding_box == [5.0, 6.0, 17.0, 28.0]
    assert finding.score == pytest.approx(0.93)
    assert result.result_sop_instance_uids == [
        sr.SOPInstanceUID,
        elsewhere.SOPInstanceUID,
        here.SOPInstanceUID,
    ]


def test_an_sr_box_is_kept_over_a_gsps_box(images: list[Dataset]) -> None:
    result = summarize(make_sr(images), make_gsps(images[0], (0, 0, 60, 60)))
    assert [f.bounding_box for f in result.findings] == [[10.0, 20.0, 30.0, 40.0]]


def test_each_segment_is_a_finding(images: list[Dataset]) -> None:
    seg = make_seg(images[0], ["Hyperdense", "Oedema"])
    result = summarize(seg)
    assert [(f.label, f.code, f.score, f.critical) for f in result.findings] == [
        ("Hyperdense", "lesion", 1.0, False),  # SCT Lesion
        ("Oedema", "lesion", 1.0, False),
    ]
    assert {f.referenced_sop_instance_uid for f in result.findings} == {images[0].SOPInstanceUID}
    assert (result.model, result.model_version) == (MODEL, VERSION)
    assert result.result_sop_instance_uids == [seg.SOPInstanceUID]


@pytest.mark.parametrize(
    ("description", "score"),
    [("probability: 87%", 0.87), ("AI score=0.42", 0.42), ("score high", 1.0), ("", 1.0)],
)
def test_a_segment_score_is_read_from_its_description(
    images: list[Dataset], description: str, score: float
) -> None:
    seg = make_seg(images[0])
    seg.SegmentSequence[0].SegmentDescription = description
    assert summarize(seg).findings[0].score == pytest.approx(score)


def test_content_no_rule_foresaw_is_an_error_not_a_crash(images: list[Dataset]) -> None:
    seg = make_seg(images[0])
    seg.SegmentSequence[0].add(DataElement(0x00620004, "LO", "one"))  # SegmentNumber, as text
    with pytest.raises(TransformError, match="cannot be summarized: ValueError"):
        result_from_datasets([seg])


def test_a_secondary_capture_is_recorded_without_findings(images: list[Dataset]) -> None:
    sc = make_sc(images[0])
    result = summarize(sc)
    assert result.findings == []
    assert (result.model, result.model_version) == (MODEL, VERSION)
    assert result.result_sop_instance_uids == [sc.SOPInstanceUID]
    assert result.study_instance_uid == images[0].StudyInstanceUID


def test_everything_an_ai_sends_adds_up_to_one_result(images: list[Dataset]) -> None:
    sr, gsps, seg, sc = (
        make_sr(images),
        make_gsps(images[0], (1, 1, 5, 5)),
        make_seg(images[0]),
        make_sc(images[0]),
    )
    result = summarize(sc, images[0], seg, gsps, sr)
    assert result.result_sop_instance_uids == [
        sc.SOPInstanceUID,
        seg.SOPInstanceUID,
        gsps.SOPInstanceUID,
        sr.SOPInstanceUID,
    ]
    assert [f.code for f in result.findings] == ["hyperdense-region", "lesion"]
    assert result.critical is True


def test_no_result_instances_no_result(images: list[Dataset]) -> None:
    assert result_from_datasets([]) is None
    assert result_from_datasets(list(images)) is None


def test_instances_of_two_studies_are_refused(images: list[Dataset]) -> None:
    other = make_ct_instance(str(generate_uid()), str(generate_uid()))
    with pytest.raises(ValueError, match="2 studies"):
        result_from_datasets([make_sr(images), make_sc(other)])


def test_produced_at_from_the_content_date_or_given(images: list[Dataset]) -> None:
    sr = make_sr(images)
    sr.ContentDate, sr.ContentTime, sr.TimezoneOffsetFromUTC = "20240105", "101500.25", "+0100"
    expected = datetime(2024, 1, 5, 10, 15, 0, 250000, tzinfo=timezone(timedelta(hours=1)))
    assert summarize(sr).produced_at == expected
    given = datetime(2024, 2, 1, tzinfo=UTC)
    result = result_from_datasets([sr], produced_at=given)
    assert result is not None and result.produced_at == given


# -- batches ------------------------------------------------------------------------------------


def test_results_from_a_batch_one_per_study(images: list[Dataset], tmp_path: Path) -> None:
    other_image = make_ct_instance(str(generate_uid()), str(generate_uid()), accession="ACC43")
    files = [
        write_dataset(make_sr(images), tmp_path / "sr.dcm"),
        write_dataset(make_seg(images[0]), tmp_path / "seg.dcm"),
        write_dataset(make_sc(other_image), tmp_path / "sc.dcm"),
        write_dataset(images[0], tmp_path / "ct.dcm"),
    ]
    batch = StudyBatch.model_validate_json(batch_json(files))
    first, second = results_from_batch(batch)
    assert first.study_instance_uid == images[0].StudyInstanceUID
    assert len(first.result_sop_instance_uids) == 2
    assert [f.code for f in first.findings] == ["hyperdense-region", "lesion"]
    assert (second.accession_number, second.findings) == ("ACC43", [])


def test_an_unreadable_result_file_names_its_instance(
    images: list[Dataset], tmp_path: Path
) -> None:
    path = write_dataset(make_sr(images), tmp_path / "sr.dcm")
    batch = StudyBatch.model_validate_json(batch_json([path]))
    path.write_bytes(b"not dicom at all")
    with pytest.raises(TransformError, match=batch.instances[0].sop_instance_uid):
        results_from_batch(batch)
