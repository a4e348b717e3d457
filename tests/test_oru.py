"""ORU^R01 out (report_to_oru.j2 + hl7apy validation) and in (oru_to_report.j2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from engine.ai_result import AIFinding
from engine.errors import TransformError
from engine.formats.hl7 import decode
from engine.formats.hl7_validate import validate, validate_oru_r01, validator_for
from engine.hl7_view import MessageView
from engine.report import ReportObservation, ReportPatient, ReportProcedure, StudyReport
from engine.templating import TemplateEnvironment
from engine.transform import TransformConfig, Transformer

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = Path(__file__).resolve().parent / "messages" / "oru"
UID_ROOT = "1.2.826.0.1.3680043.8.498."
STUDY_UID = "1.2.826.0.1.3680043.8.498.77001"
DICOM_STUDY = "113014^DICOM Study^DCM"


@pytest.fixture(scope="module")
def env() -> TemplateEnvironment:
    return TemplateEnvironment(ROOT / "transforms", uid_root=UID_ROOT)


@pytest.fixture(scope="module")
def to_oru(env: TemplateEnvironment) -> Transformer:
    config = TransformConfig(template="report_to_oru.j2", output="hl7")
    transformer = Transformer(config, env, hl7_validators=[validate_oru_r01])
    transformer.check()
    return transformer


@pytest.fixture(scope="module")
def to_report(env: TemplateEnvironment) -> Transformer:
    transformer = Transformer(TransformConfig(template="oru_to_report.j2", output="json"), env)
    transformer.check()
    return transformer


def preliminary() -> StudyReport:
    """An assistant-mode AI draft: no text, two findings (one critical) with measurements."""
    return StudyReport(
        study_instance_uid=STUDY_UID,
        accession_number="ACC77001",
        placer_order_number="PLC77001",
        filler_order_number="FIL77001",
        patient=ReportPatient(
            id="MRN77001", issuer="HOSP", name="Müller^Jörg^K", birth_date="19500102", sex="M"
        ),
        procedure=ReportProcedure(
            code="CTHEAD", description="CT HEAD W/O CONTRAST", coding_system="99RIS", modality="CT"
        ),
        status="P",
        findings=[
            AIFinding(
                code="hyperdense-region",
                label="Hyperdense region (suspected hemorrhage)",
                score=0.93,
                critical=True,
                measurements={"volume_mm3": 1234.5, "mean_hu": 62.0},
            ),
            AIFinding(code="midline-shift", label="Midline shift", score=0.41),
        ],
        ai_models=["ct-head-hyperdense 1.2.0"],
        observed_at=datetime(2024, 3, 15, 8, 30, tzinfo=timezone(timedelta(hours=1))),
        reported_at=datetime(2024, 3, 15, 8, 41, 7, 250000, tzinfo=UTC),
    )


def final() -> StudyReport:
    """The signed report: text with HL7 delimiters, a measurement, a critical observation."""
    return preliminary().model_copy(
        update={
            "status": "F",
            "findings": [],
            "ai_models": [],
            "text": "FINDINGS: Hyperdense | region ^ left & right ~ basal \\ ganglia.\n\n"
            "IMPRESSION: Acute hemorrhage; neurosurgery informed.",
            "observations": [
                ReportObservation(
                    code="hemorrhage-volume", label="Hemorrhage volume", value=12.5, unit="mL",
                    critical=True,
                ),
                ReportObservation(code="side", label="Side", value="left"),
            ],
            "author": "Ångström^Åsa",
            "reported_at": datetime(2024, 3, 15, 9, 5, tzinfo=UTC),
        }
    )  # fmt: skip


def render(transformer: Transformer, report: StudyReport) -> str:
    (message,) = transformer.run({"report": report.model_dump(mode="json")})
    return message


def hl7apy_segments(element: Any, name: str) -> list[Any]:
    """Every segment ``name`` in hl7apy's tree, in order, whatever group holds it."""
    found: list[Any] = []
    for child in element.children:
        if child.classname == "Segment" and child.name == name:
            found.append(child)
        elif child.classname == "Group":
            found += hl7apy_segments(child, name)
    return found


def field(segment: Any, number: int) -> str:
    return str(getattr(segment, f"{segment.name.lower()}_{number}").to_er7())


def parsed(message: str) -> Any:
    """The output as an independent parser reads it: hl7apy, strict, with groups."""
    return parse_message(message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)


# --- report_to_oru.j2 ---------------------------------------------------------------------


def test_preliminary_ai_report(to_oru: Transformer) -> None:
    message = parsed(render(to_oru, preliminary()))
    assert message.name == "ORU_R01"
    (msh,) = hl7apy_segments(message, "MSH")
    assert [field(msh, n) for n in (3, 9, 11, 12, 18)] == [
        "MERIDIAN", "ORU^R01^ORU_R01", "P", "2.5.1", "UNICODE UTF-8"
    ]  # fmt: skip
    (obr,) = hl7apy_segments(message, "OBR")
    assert field(obr, 25) == "P"
    assert field(obr, 32) == ""  # nobody signed a preliminary report
    assert (field(obr, 7), field(obr, 22)) == ("20240315083000+0100", "20240315084107+0000")
    observations = hl7apy_segments(message, "OBX")
    assert [field(obx, 1) for obx in observations] == [str(n) for n in range(1, 9)]
    assert {field(obx, 11) for obx in observations} == {"P"}
    findings = [obx for obx in observations if field(obx, 2) == "CWE"]
    assert [(field(obx, 4), field(obx, 5).split("^")[0], field(obx, 8)) for obx in findings] == [
        ("1", "hyperdense-region", "AA"),
        ("2", "midline-shift", ""),
    ]
    numbers = {(field(obx, 4), field(obx, 3).split("^")[0]): field(obx, 5) for obx in observations
               if field(obx, 2) == "NM"}  # fmt: skip
    assert numbers == {
        ("1", "ai-score"): "0.93",
        ("1", "mean_hu"): "62",
        ("1", "volume_mm3"): "1234.5",
        ("2", "ai-score"): "0.41",
    }
    models = [field(obx, 5) for obx in observations if field(obx, 3).startswith("ai-model")]
    assert models == ["ct-head-hyperdense 1.2.0"]


def test_study_instance_uid_travels_as_dicom_study_obx(to_oru: Transformer) -> None:
    for report in (preliminary(), final()):
        observations = hl7apy_segments(parsed(render(to_oru, report)), "OBX")
        (study,) = [obx for obx in observations if field(obx, 3) == DICOM_STUDY]
        assert (field(study, 2), field(study, 5)) == ("ST", STUDY_UID)


def test_final_report(to_oru: Transformer) -> None:
    text = render(to_oru, final())
    message = parsed(text)
    (obr,) = hl7apy_segments(message, "OBR")
    assert [field(obr, n) for n in (2, 3, 4, 18, 24, 25)] == [
        "PLC77001", "FIL77001", "CTHEAD^CT HEAD W/O CONTRAST^99RIS", "ACC77001", "RAD", "F"
    ]  # fmt: skip
    assert field(obr, 32) == "&Ångström&Åsa"
    (orc,) = hl7apy_segments(message, "ORC")
    assert [field(orc, n) for n in (1, 2, 3)] == ["RE", "PLC77001", "FIL77001"]
    observations = hl7apy_segments(message, "OBX")
    assert {field(obx, 11) for obx in observations} == {"F"}
    lines = [obx for obx in observations if field(obx, 2) == "TX"]
    assert len(lines) == 3  # one OBX per line, the blank line kept
    assert field(lines[1], 5) == ""
    (volume,) = [obx for obx in observations if field(obx, 2) == "NM"]
    assert [field(volume, n) for n in (3, 5, 6, 8)] == [
        "hemorrhage-volume^Hemorrhage volume^99MERIDIAN", "12.5", "mL^mL^UCUM", "AA"
    ]  # fmt: skip
    (side,) = [obx for obx in observations if field(obx, 2) == "ST" and "Side" in field(obx, 3)]
    assert (field(side, 5), field(side, 8)) == ("left", "")


def test_delimiters_in_the_text_are_escaped(to_oru: Transformer) -> None:
    text = render(to_oru, final())
    (first_line,) = [s for s in text.split("\r") if s.startswith("OBX|1|")]
    escaped = "FINDINGS: Hyperdense \\F\\ region \\S\\ left \\T\\ right \\R\\ basal \\E\\ ganglia."
    assert first_line.split("|")[5] == escaped
    # python-hl7, an independent reader, gets the original text back.
    assert hl7.parse(text).unescape(escaped) == final().text.splitlines()[0]


def test_utf8_names(to_oru: Transformer) -> None:
    text = render(to_oru, final())
    (pid,) = hl7apy_segments(parsed(text), "PID")
    assert field(pid, 5) == "Müller^Jörg^K"
    assert field(pid, 3) == "MRN77001^^^HOSP^MR"
    assert (field(pid, 7), field(pid, 8)) == ("19500102", "M")
    assert "Müller".encode() in text.encode("utf-8")  # what MSH-18 promises


def test_each_message_gets_its_own_control_id(to_oru: Transformer) -> None:
    ids = {field(hl7apy_segments(parsed(render(to_oru, final())), "MSH")[0], 10) for _ in range(5)}
    assert len(ids) == 5
    assert all(0 < len(control_id) <= 20 for control_id in ids)


def test_report_without_procedure_fails_in_the_template(to_oru: Transformer) -> None:
    report = final().model_copy(update={"procedure": ReportProcedure()})
    with pytest.raises(TransformError, match="OBR-4 is required"):
        render(to_oru, report)


# --- validation -------------------------------------------------------------------------


def without(message: str, segment_id: str) -> str:
    return "".join(s + "\r" for s in message.split("\r") if s and not s.startswith(segment_id))


def test_validator_accepts_what_the_template_writes(to_oru: Transformer) -> None:
    for report in (preliminary(), final()):
        validate_oru_r01(render(to_oru, report))
    # A site's Z segment at the end (dcm4chee's ZDS) is allowed.
    validate_oru_r01(render(to_oru, final()) + f"ZDS|{STUDY_UID}^MERIDIAN^Application^DICOM\r")


def test_validator_rejects_missing_pid(to_oru: Transformer) -> None:
    broken = without(render(to_oru, final()), "PID")
    with pytest.raises(TransformError, match="PID segment is missing"):
        validate_oru_r01(broken)


def test_validator_rejects_obx_without_value_type(to_oru: Transformer) -> None:
    broken = render(to_oru, final()).replace("OBX|1|TX|", "OBX|1||", 1)
    with pytest.raises(TransformError, match=r"OBX 1: OBX-2 \(value type\) is empty"):
        validate_oru_r01(broken)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("ORU^R01^ORU_R01", "ADT^A01^ADT_A01"), "ORU_R01: MSH-9 gives message structure ADT_A01"),
        (("|CTHEAD^CT HEAD W/O CONTRAST^99RIS|", "||"), "ORU_R01: OBR-4 is required but empty"),
        (("|20240315083000+0100|", "|2024-03-15|"), "ORU_R01: OBR 1: OBR-7 is not a valid TS"),
        (("|RAD|F|", "|RAD||"), r"ORU_R01: OBR 1: OBR-25 \(result status\) is empty"),
        (("|AA|||F", "|ZZ|||F"), "ORU_R01: OBX 4: OBX-8 .* not in HL7 table 0078"),
        (("|ST|113014^", "|XY|113014^"), "ORU_R01: OBX 6: OBX-2 .* not in HL7 table 0125"),
        (("\rORC|", "\rXYZ|1\rORC|"), "ORU_R01: segment XYZ is not an HL7 v2.5.1 segment"),
    ],
)
def test_validator_reasons_name_the_place(
    to_oru: Transformer, change: tuple[str, str], reason: str
) -> None:
    text = render(to_oru, final())
    assert change[0] in text
    with pytest.raises(TransformError, match=reason):
        validate_oru_r01(text.replace(*change))


def test_control_characters_that_would_break_mllp_framing_are_rejected(
    to_oru: Transformer,
) -> None:
    report = final().model_copy(update={"author": "SMITH\x1c^JANE"})
    with pytest.raises(
        TransformError, match=r"segment 4 \(OBR\), field 32: control character 0x1C"
    ):
        render(to_oru, report)


def test_validator_reasons_never_quote_values(to_oru: Transformer) -> None:
    text = render(to_oru, final())
    cases = {
        "PID-7 is not a valid": text.replace("|19500102|", "|Müller-1950|"),
        "OBX 4: OBX-5 is not a number": text.replace("|12.5|", "|twelve Müller|"),
        "OBR-25 .* not in HL7 table 0123": text.replace("|RAD|F|", "|RAD|Müller|"),
        "OBX-3 is required": text.replace("|TX|18782-3^Radiology Study observation^LN|", "|TX||"),
    }
    for reason, broken in cases.items():
        with pytest.raises(TransformError, match=reason) as failure:
            validate_oru_r01(broken)
        assert "Müller" not in str(failure.value)
        assert "twelve" not in str(failure.value)


def test_generic_validator_by_structure() -> None:
    adt = "MSH|^~\\&|A|B|C|D|20240101||ADT^A04^ADT_A01|1|P|2.5.1\rEVN||20240101\rPID|1||1||DOE^J\r"
    validate(adt + "PV1|1|O\r", "ADT_A01")
    with pytest.raises(TransformError, match="ADT_A01: PV1 segment is required"):
        validator_for("ADT_A01")(adt)
    assert validator_for("ORU_R01") is validate_oru_r01


def test_transformer_turns_an_invalid_oru_into_an_error(tmp_path: Path) -> None:
    (tmp_path / "broken_oru.j2").write_text(
        "MSH|^~\\&|MERIDIAN||||20240101||ORU^R01^ORU_R01|1|P|2.5.1\n"
        "OBR|1|||X^Y^L||||||||||||||||||||F\n"
        "OBX|1||113014^DICOM Study^DCM||{{ uid }}||||||F\n"
    )
    env = TemplateEnvironment(tmp_path, uid_root=UID_ROOT)
    config = TransformConfig(template="broken_oru.j2", output="hl7")
    transformer = Transformer(config, env, hl7_validators=[validate_oru_r01])
    with pytest.raises(TransformError, match=r"HL7 message 0: ORU_R01: PID segment is missing"):
        transformer.run({"uid": STUDY_UID})  # no payload comes out: nothing is queued


# --- oru_to_report.j2 -------------------------------------------------------------------


def report_from(to_report: Transformer, sample: str) -> StudyReport:
    view = MessageView.from_text(decode((SAMPLES / sample).read_bytes()))
    (payload,) = to_report.run({"msg": view})
    return StudyReport.model_validate_json(payload)


def test_final_oru_becomes_a_study_report(to_report: Transformer) -> None:
    report = report_from(to_report, "oru_r01_v251_final.hl7")
    assert report.status == "F"
    assert report.study_instance_uid == "1.2.840.113619.2.55.3.604688119.969.1710491400.123"
    assert (report.accession_number, report.placer_order_number, report.filler_order_number) == (
        "ACC2001", "PLC2001", "FIL2001"
    )  # fmt: skip
    assert report.patient == ReportPatient(
        id="MRN2001", issuer="HOSP", name="Ångström^Zoë^Q", birth_date="19650101", sex="F"
    )
    assert report.procedure == ReportProcedure(
        code="MRKNEE", description="MR KNEE LEFT", coding_system="99RIS", modality="MR"
    )
    assert report.author == "HOUSE^GREGORY^M^DR"
    assert report.text.splitlines() == [
        "EXAM: MR knee left, without contrast.",
        "",
        "FINDINGS: Horizontal tear of the posterior horn & body of the medial meniscus.",
        "Joint effusion, volume approx. 12 mL.",
        "",
        "IMPRESSION: Medial meniscal tear (grade 3).",
    ]
    (volume,) = report.observations
    assert (volume.code, volume.value, volume.unit, volume.critical) == (
        "effusion-volume", 12.0, "mL", False
    )  # fmt: skip
    tz = timezone(timedelta(hours=1))
    assert report.observed_at == datetime(2024, 3, 15, 8, 30, tzinfo=tz)
    assert report.reported_at == datetime(2024, 3, 15, 10, 12, tzinfo=tz)


def test_v23_corrected_report_with_ft_text_and_accession_in_obr3(to_report: Transformer) -> None:
    report = report_from(to_report, "oru_r01_v231_corrected.hl7")
    assert report.status == "C"
    assert report.accession_number == "ACC3001"  # OBR-18 empty: the filler number
    assert report.study_instance_uid == "1.2.826.0.1.3680043.8.498.3001"  # from ZDS-1
    assert report.author == "DOE^JANE"
    assert report.text.splitlines()[:3] == ["CORRECTED REPORT", "", "CT chest with contrast."]
    # No offset sent: the time is local, so the report carries the hub's local zone.
    assert report.reported_at == datetime(2024, 3, 16, 9, 40).astimezone()


def test_report_in_then_oru_out(to_report: Transformer, to_oru: Transformer) -> None:
    """The chain: a reporting system's ORU → StudyReport → the ORU^R01 for the EHR."""
    report = report_from(to_report, "oru_r01_v251_final.hl7")
    message = parsed(render(to_oru, report))
    (obr,) = hl7apy_segments(message, "OBR")
    assert (field(obr, 18), field(obr, 25), field(obr, 32)) == (
        "ACC2001", "F", "&HOUSE&GREGORY&M"
    )  # fmt: skip
    lines = [field(obx, 5) for obx in hl7apy_segments(message, "OBX") if field(obx, 2) == "TX"]
    assert lines[2].startswith("FINDINGS: Horizontal tear of the posterior horn \\T\\ body")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("ORU^R01^ORU_R01", "ORU^R01^ORU_R01"), None),
        (("113014^DICOM Study^DCM", "999^Other^L"), "no Study Instance UID"),
        (("|MR|F|", "|MR|R|"), "OBR-25 .* must be F, C or P"),
        (("|ACC2001|", "||"), None),  # the filler number stands in
    ],
)
def test_oru_in_failures(
    to_report: Transformer, change: tuple[str, str], reason: str | None
) -> None:
    text = decode((SAMPLES / "oru_r01_v251_final.hl7").read_bytes()).replace(*change)
    view = MessageView.from_text(text)
    if reason is None:
        (payload,) = to_report.run({"msg": view})
        StudyReport.model_validate_json(payload)
    else:
        with pytest.raises(TransformError, match=reason):
            to_report.run({"msg": view})
