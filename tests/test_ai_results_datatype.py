"""The ai-results data type: DICOM result batches (re-identified) and JSON AIResults."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import DataElement, Dataset, dcmread
from pydicom.uid import RLELossless, generate_uid
from sqlalchemy import Engine, create_engine

from connectors.base import Origin
from engine.ai_findings import results_from_batch
from engine.ai_result import AIFinding, AIResult
from engine.datatypes.ai_results import MESSAGE_TYPE, AIResultsDataType
from engine.datatypes.base import ReadMessage
from engine.deid import Deidentifier
from engine.deid_tables import deid_patients, deid_studies, deid_uids
from engine.errors import ParseError
from engine.study_batch import StudyBatch
from tests.support.ai_dicom import MODEL, make_gsps, make_sc, make_seg, make_sr
from tests.support.batches import batch_json
from tests.support.dicom_files import make_ct_instance, write_dataset

SCOPE = "images-to-ai/ai-ext"
FROM_AI = Origin("dicom", "AI_NODE", "MERIDIAN_AI")
FROM_HTTP = Origin("http", "10.0.0.9:50000", "0.0.0.0:8088")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'deid.db'}")
    for table in (deid_uids, deid_patients, deid_studies):
        table.create(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def deid(engine: Engine) -> Deidentifier:
    return Deidentifier(engine)


@pytest.fixture
def image() -> Dataset:
    """The original image, as the hub archived it."""
    return make_ct_instance(str(generate_uid()), str(generate_uid()), accession="ACC9001")


def datatype(tmp_path: Path, deid: Deidentifier | None, scopes: list[str]) -> AIResultsDataType:
    return AIResultsDataType(
        "ai-results", deid=deid, reidentify_scopes=scopes, output_root=tmp_path / "out"
    )


def result_batch(tmp_path: Path, *datasets: Dataset) -> bytes:
    """The StudyBatch a dicom source hands on for the result instances an AI stored."""
    paths = [write_dataset(ds, tmp_path / "in" / f"{i}.dcm") for i, ds in enumerate(datasets)]
    return batch_json(paths).encode()


def written(payloads: list[str] | None) -> tuple[StudyBatch, list[Dataset]]:
    assert payloads is not None and len(payloads) == 1
    batch = StudyBatch.model_validate_json(payloads[0])
    return batch, [dcmread(ref.path) for ref in batch.instances]


# -- DICOM ------------------------------------------------------------------------------


def test_a_result_batch_is_summarized_and_written(tmp_path: Path, image: Dataset) -> None:
    sr, gsps = make_sr([image]), make_gsps(image, (1, 2, 3, 4))
    raw = result_batch(tmp_path, sr, gsps)
    types = datatype(tmp_path, None, [])
    message = types.read(raw, FROM_AI)
    record = message.record
    assert (record.message_type, record.sender) == (MESSAGE_TYPE, "CT1")
    assert record.control_id == f"{image.StudyInstanceUID}#1"
    assert (record.patient_id, record.accession) == ("SYN0001", "ACC9001")
    assert record.content_hash and record.origin == "AI_NODE"
    context = message.context
    assert (context["kind"], context["critical"]) == ("dicom", True)
    assert context["study"].StudyInstanceUID == image.StudyInstanceUID
    assert context["study"].Modality == "SR"
    assert context["study"].NotThere == ""
    [result] = context["results"]
    assert result["model"] == MODEL
    assert result["findings"][0]["score"] == pytest.approx(0.93)
    batch, copies = written(types.builtin_transform(message))
    out = tmp_path / "out" / image.StudyInstanceUID
    assert [Path(ref.path) for ref in batch.instances] == [
        out / sr.SeriesInstanceUID / f"{sr.SOPInstanceUID}.dcm",
        out / gsps.SeriesInstanceUID / f"{gsps.SOPInstanceUID}.dcm",
    ]
    assert [ds.SOPInstanceUID for ds in copies] == [sr.SOPInstanceUID, gsps.SOPInstanceUID]
    assert batch.metadata["AccessionNumber"] == "ACC9001"


def test_results_of_de_identified_images_are_filed_under_the_real_study(
    tmp_path: Path, deid: Deidentifier, image: Dataset
) -> None:
    pseudo = deid.deidentify(image, destination=SCOPE)
    assert pseudo.StudyInstanceUID != image.StudyInstanceUID
    raw = result_batch(tmp_path, make_sr([pseudo]))  # the external AI's answer
    types = datatype(tmp_path, deid, ["another/scope", SCOPE])
    message = types.read(raw, FROM_AI)
    assert message.record.patient_id == image.PatientID  # filters and the store see the truth
    assert message.record.accession == "ACC9001"
    assert message.context["study"].StudyInstanceUID == image.StudyInstanceUID
    [finding] = message.context["results"][0]["findings"]
    assert finding["referenced_sop_instance_uid"] == image.SOPInstanceUID
    batch, [sr] = written(types.builtin_transform(message))
    assert batch.study_instance_uid == image.StudyInstanceUID
    assert Path(batch.instances[0].path).is_relative_to(tmp_path / "out" / image.StudyInstanceUID)
    assert (sr.StudyInstanceUID, sr.PatientID, sr.PatientName) == (
        image.StudyInstanceUID,
        image.PatientID,
        image.PatientName,
    )
    assert (sr.AccessionNumber, sr.StudyDate) == ("ACC9001", image.StudyDate)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == image.StudyInstanceUID
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == image.SOPInstanceUID
    [result] = results_from_batch(batch)  # what the reading worklist will see
    assert result.study_instance_uid == image.StudyInstanceUID
    assert result.findings[0].referenced_sop_instance_uid == image.SOPInstanceUID


def test_results_no_scope_knows_are_left_as_they_are(
    tmp_path: Path, deid: Deidentifier, image: Dataset
) -> None:
    pseudo = deid.deidentify(image, destination=SCOPE)
    types = datatype(tmp_path, deid, ["images-to-ai/other-ai"])
    _, [sr] = written(
        types.builtin_transform(types.read(result_batch(tmp_path, make_sr([pseudo])), FROM_AI))
    )
    assert (sr.StudyInstanceUID, sr.PatientID) == (pseudo.StudyInstanceUID, pseudo.PatientID)


def test_an_internal_ai_result_is_not_re_identified(
    tmp_path: Path, deid: Deidentifier, image: Dataset
) -> None:
    # The study also went to the external AI, but this SR (an internal AI's) references the
    # originals: nothing maps back, so its dates must not be shifted "back".
    deid.deidentify(image, destination=SCOPE)
    original = make_sr([image])
    original.SeriesDate = image.StudyDate  # Deidentifier.reidentify alone would move it
    types = datatype(tmp_path, deid, [SCOPE])
    _, [sr] = written(
        types.builtin_transform(types.read(result_batch(tmp_path, original), FROM_AI))
    )
    assert (sr.StudyInstanceUID, sr.PatientID, sr.SeriesDate) == (
        image.StudyInstanceUID,
        image.PatientID,
        image.StudyDate,
    )


def test_a_compressed_secondary_capture_survives_re_identification(
    tmp_path: Path, deid: Deidentifier, image: Dataset
) -> None:
    sc = make_sc(deid.deidentify(image, destination=SCOPE))
    sc.compress(RLELossless)
    types = datatype(tmp_path, deid, [SCOPE])
    message = types.read(result_batch(tmp_path, sc), FROM_AI)
    assert message.context["results"][0]["findings"] == []
    batch, [copy] = written(types.builtin_transform(message))
    assert copy.StudyInstanceUID == image.StudyInstanceUID
    assert batch.instances[0].transfer_syntax_uid == RLELossless
    assert copy.file_meta.TransferSyntaxUID == RLELossless
    assert copy.pixel_array.shape == (16, 16, 3)


def test_a_batch_naming_a_missing_file_cannot_be_read(tmp_path: Path, image: Dataset) -> None:
    raw = result_batch(tmp_path, make_sr([image]))
    for path in (tmp_path / "in").iterdir():
        path.unlink()
    with pytest.raises(ParseError, match="cannot read result instance"):
        datatype(tmp_path, None, []).read(raw, FROM_AI)


def test_results_that_cannot_be_summarized_are_an_error(tmp_path: Path, image: Dataset) -> None:
    seg = make_seg(image)
    seg.SegmentSequence[0].add(DataElement(0x00620004, "LO", "one"))  # SegmentNumber, as text
    raw = result_batch(tmp_path, seg)
    with pytest.raises(ParseError, match="cannot be summarized"):
        datatype(tmp_path, None, []).read(raw, FROM_AI)


# -- JSON -------------------------------------------------------------------------------


def json_result(study: str, image_uid: str | None = None, score: float = 0.91) -> AIResult:
    return AIResult(
        study_instance_uid=study,
        accession_number="ACC9001",
        model="bleed-detect",
        model_version="2.0",
        findings=[
            AIFinding(
                code="bleed",
                label="Intracranial bleed",
                score=score,
                critical=True,
                referenced_sop_instance_uid=image_uid,
            ),
            AIFinding(code="atrophy", label="Atrophy", score=0.3),
        ],
        produced_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        source="json",
    )


def test_a_json_result_goes_on_as_it_came(tmp_path: Path, deid: Deidentifier) -> None:
    raw = json_result("1.2.3.4", "1.2.3.4.5").model_dump_json(indent=2).encode()
    types = datatype(tmp_path, deid, [SCOPE])
    message = types.read(raw, FROM_HTTP)
    record = message.record
    assert (record.message_type, record.sender, record.origin) == (
        MESSAGE_TYPE,
        "bleed-detect",
        "10.0.0.9:50000",
    )
    assert record.control_id == "bleed-detect|1.2.3.4|2024-05-01T12:00:00+00:00"
    assert (record.patient_id, record.accession) == (None, "ACC9001")
    assert (message.context["kind"], message.context["critical"]) == ("json", True)
    assert message.context["study"].StudyInstanceUID == "1.2.3.4"
    assert message.context["results"][0]["findings"][1]["code"] == "atrophy"
    assert types.builtin_transform(message) == [raw.decode()]


def test_a_json_result_about_pseudo_uids_is_mapped_back(
    tmp_path: Path, deid: Deidentifier, image: Dataset
) -> None:
    pseudo = deid.deidentify(image, destination=SCOPE)
    raw = json_result(pseudo.StudyInstanceUID, pseudo.SOPInstanceUID).model_dump_json()
    types = datatype(tmp_path, deid, [SCOPE])
    message = types.read(raw.encode(), FROM_HTTP)
    assert (message.record.patient_id, message.record.accession) == (image.PatientID, "ACC9001")
    [payload] = types.builtin_transform(message) or []
    result = AIResult.model_validate_json(payload)
    assert result.study_instance_uid == image.StudyInstanceUID
    assert result.accession_number == "ACC9001"
    bleed, atrophy = result.findings
    assert bleed.referenced_sop_instance_uid == image.SOPInstanceUID
    assert atrophy.referenced_sop_instance_uid is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not text", "not JSON"),
        (b"<xml/>", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"hello": "world"}', "neither a study batch"),
        (b'{"instances": []}', "not a valid study batch"),
    ],
)
def test_what_is_not_a_result_is_a_parse_error(tmp_path: Path, raw: bytes, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        datatype(tmp_path, None, []).read(raw, FROM_HTTP)


def test_validation_errors_name_the_field_not_the_value(tmp_path: Path) -> None:
    document = json.loads(json_result("1.2.3.4").model_dump_json())
    document["findings"][0]["score"] = 4.2
    document["findings"][0]["label"] = "SECRET-NAME"
    with pytest.raises(ParseError, match=r"findings\.0\.score") as caught:
        datatype(tmp_path, None, []).read(json.dumps(document).encode(), FROM_HTTP)
    assert "SECRET-NAME" not in caught.value.reason


# -- answers ----------------------------------------------------------------------------


def read_json(tmp_path: Path) -> tuple[AIResultsDataType, ReadMessage]:
    types = datatype(tmp_path, None, [])
    return types, types.read(json_result("1.2.3.4").model_dump_json().encode(), FROM_HTTP)


def test_only_refusals_are_answered(tmp_path: Path) -> None:
    types, message = read_json(tmp_path)
    accepted = types.reply(message, b"", "accepted", None, None)
    assert (accepted.text, accepted.data) == (None, None)
    refused = types.reply(None, b"x", "rejected", "not JSON: JSONDecodeError", "100")
    assert refused.data is not None
    assert json.loads(refused.data) == {"status": "rejected", "reason": "not JSON: JSONDecodeError"}
    assert refused.text == refused.data.decode()
    assert types.replay("anything", message) is None


def test_unreadable_messages_keep_what_identifies_them(tmp_path: Path) -> None:
    types = datatype(tmp_path, None, [])
    record = types.unreadable(b'{"model": "bleed-detect", "study_instance_uid": "1.2"}', FROM_HTTP)
    assert (record.message_type, record.sender, record.control_id) == (
        MESSAGE_TYPE,
        "bleed-detect",
        "1.2",
    )
    nothing = types.unreadable(b"\xff garbage", FROM_HTTP)
    assert (nothing.sender, nothing.control_id, nothing.raw) == (None, None, "\ufffd garbage")
