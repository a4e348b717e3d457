"""transforms/orm_to_mwl.j2 on the sample order messages in tests/messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.errors import TransformError
from engine.hl7_view import MessageView
from engine.template_helpers import UidFactory
from engine.templating import TemplateEnvironment
from engine.transform import TransformConfig, Transformer
from engine.worklist_item import WorklistItem

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = Path(__file__).resolve().parent / "messages"
UID_ROOT = "1.2.826.0.1.3680043.8.498."

# Only what the samples use; the real decoding (MSH-18 → codec) is engine.formats' job.
_CHARSETS = {"8859/1": "latin-1", "UNICODE UTF-8": "utf-8", "": "ascii"}


def _decode(raw: bytes) -> str:
    msh = raw.split(b"\r", 1)[0].decode("ascii", errors="replace").split("|")
    charset = msh[17] if len(msh) > 17 else ""
    return raw.decode(_CHARSETS[charset])


@pytest.fixture(scope="module")
def transformer() -> Transformer:
    env = TemplateEnvironment(ROOT / "transforms", uid_root=UID_ROOT)
    transformer = Transformer(TransformConfig(template="orm_to_mwl.j2", output="mwl-items"), env)
    transformer.check()
    return transformer


def _items(transformer: Transformer, sample: str) -> list[WorklistItem]:
    view = MessageView.from_text(_decode((MESSAGES / sample).read_bytes()))
    return [WorklistItem.model_validate_json(p) for p in transformer.run({"msg": view})]


def _sps(item: WorklistItem) -> dict[str, Any]:
    (step,) = item.attributes["ScheduledProcedureStepSequence"]
    assert isinstance(step, dict)
    return step


def test_every_sample_transforms(transformer: Transformer) -> None:
    samples = sorted(MESSAGES.glob("*.hl7"))
    assert len(samples) >= 10
    for sample in samples:
        assert _items(transformer, sample.name), sample.name


def test_orm_v23_new_order(transformer: Transformer) -> None:
    (item,) = _items(transformer, "orm_o01_v23_nw.hl7")
    assert item.action == "create"
    assert item.status == "SCHEDULED"
    assert item.key == "RIS^HOSP|PLC1001"
    a = item.attributes
    assert a["PatientID"] == "MRN1001"
    assert a["IssuerOfPatientID"] == "HOSP"
    # O\T\NEIL: the escape decoded; HL7 suffix^prefix became DICOM prefix^suffix.
    assert a["PatientName"] == "O&NEIL^MARY^ANN^DR^JR"
    assert a["PatientBirthDate"] == "19800229"
    assert a["PatientSex"] == "F"
    assert a["AccessionNumber"] == "ACC1001"
    assert a["RequestedProcedureID"] == "RP1001"
    assert a["PlacerOrderNumberImagingServiceRequest"] == "PLC1001"
    assert a["FillerOrderNumberImagingServiceRequest"] == "FIL1001"
    assert a["RequestedProcedureDescription"] == "CT HEAD|NECK W/O CONTRAST"  # \F\ decoded
    assert a["RequestedProcedurePriority"] == "STAT"  # ORC-7.6 S
    assert a["RequestingPhysician"] == "WELBY^MARCUS^^DR"
    assert a["ReferringPhysicianName"] == "HOUSE^GREGORY"  # PV1-8
    assert a["StudyInstanceUID"] == "1.2.840.113619.2.55.3.1001"  # ZDS-1
    assert a["RequestedProcedureCodeSequence"] == [
        {
            "CodeValue": "CTHEAD",
            "CodingSchemeDesignator": "LOCAL",
            "CodeMeaning": "CT HEAD|NECK W/O CONTRAST",
        }
    ]
    assert _sps(item) == {
        "Modality": "CT",
        "ScheduledStationAETitle": "CT_MAIN",
        "ScheduledProcedureStepStartDate": "20240315",
        "ScheduledProcedureStepStartTime": "093000",
        "ScheduledProcedureStepDescription": "CT HEAD|NECK W/O CONTRAST",
        "ScheduledProcedureStepID": "SPS1001",
    }


def test_orm_v251_new_then_changed_order_keeps_the_generated_study_uid(
    transformer: Transformer,
) -> None:
    (new,) = _items(transformer, "orm_o01_v251_nw.hl7")
    (changed,) = _items(transformer, "orm_o01_v251_xo.hl7")
    assert (new.action, changed.action) == ("create", "update")
    assert new.key == changed.key == "RIS^HOSP|PLC2001"
    expected_uid = UidFactory(UID_ROOT).uid_from("RIS^HOSP", "PLC2001")
    assert new.attributes["StudyInstanceUID"] == expected_uid
    assert changed.attributes["StudyInstanceUID"] == expected_uid
    # ORC-7.4 in 2.5 is a TS with subcomponents; the zone offset is dropped.
    assert (
        _sps(new)["ScheduledProcedureStepStartDate"],
        _sps(new)["ScheduledProcedureStepStartTime"],
    ) == (
        "20240315",
        "1430",
    )
    assert _sps(changed)["ScheduledProcedureStepStartDate"] == "20240316"
    assert _sps(changed)["ScheduledProcedureStepStartTime"] == "1100"
    assert new.attributes["IssuerOfPatientID"] == "HOSP"  # PID-3.4.1 of HOSP&1.2.3.4&ISO
    assert new.attributes["RequestedProcedurePriority"] == "ROUTINE"
    assert _sps(new)["ScheduledStationAETitle"] == "MR_1"


def test_omi_v251_uses_tq1_and_ipc(transformer: Transformer) -> None:
    (item,) = _items(transformer, "omi_o23_v251.hl7")
    a = item.attributes
    assert item.key == "EHR^HOSP|PLC3001"
    assert a["AccessionNumber"] == "ACC3001"  # IPC-1
    assert a["RequestedProcedureID"] == "RP3001"  # IPC-2
    assert a["StudyInstanceUID"] == "1.2.826.0.1.3680043.8.498.3001"  # IPC-3
    assert a["RequestedProcedurePriority"] == "HIGH"  # TQ1-9 A
    assert a["RequestingPhysician"] == "SHEPHERD^DEREK"
    assert _sps(item)["ScheduledProcedureStepID"] == "SPS3001"  # IPC-4
    assert _sps(item)["Modality"] == "MR"  # IPC-5
    assert _sps(item)["ScheduledStationAETitle"] == "MR_3T"  # IPC-9 wins over the table
    assert _sps(item)["ScheduledProcedureStepStartDate"] == "20240316"  # TQ1-7
    assert _sps(item)["ScheduledProcedureStepStartTime"] == "081500"


def test_omi_with_two_steps_gives_one_item_per_step(transformer: Transformer) -> None:
    first, second = _items(transformer, "omi_o23_two_steps.hl7")
    assert first.key == "EHR^HOSP|PLC3002|SPS3002A"
    assert second.key == "EHR^HOSP|PLC3002|SPS3002B"
    assert [_sps(first)["Modality"], _sps(second)["Modality"]] == ["PT", "CT"]
    assert first.attributes["StudyInstanceUID"] == second.attributes["StudyInstanceUID"]
    assert _sps(second)["ScheduledStationAETitle"] == "CT_MAIN"  # from the table
    assert first.attributes["RequestedProcedurePriority"] == "ROUTINE"


def test_multi_order_message_gives_one_item_per_order(transformer: Transformer) -> None:
    items = _items(transformer, "orm_o01_multi.hl7")
    assert [i.key for i in items] == ["RIS^HOSP|PLC5001", "RIS^HOSP|PLC5002", "RIS^HOSP|PLC5003"]
    assert [i.attributes["AccessionNumber"] for i in items] == ["ACC5001", "ACC5002", "ACC5003"]
    assert [_sps(i)["Modality"] for i in items] == ["CT", "CR", "XA"]
    # CT in the ER gets the ER scanner (CT|ER row), CR the modality row, XA no row at all.
    assert [_sps(i)["ScheduledStationAETitle"] for i in items] == ["CT_ER", "CR_ROOM1", ""]
    assert [i.attributes["RequestedProcedurePriority"] for i in items] == [
        "STAT",
        "HIGH",
        "ROUTINE",
    ]
    # Order 2 has no ORC-2: the placer number comes from OBR-2.
    assert items[1].attributes["PlacerOrderNumberImagingServiceRequest"] == "PLC5002"
    uids = {i.attributes["StudyInstanceUID"] for i in items}
    assert len(uids) == 3


@pytest.mark.parametrize(
    ("sample", "action", "status"),
    [
        ("orm_o01_v23_nw.hl7", "create", "SCHEDULED"),
        ("orm_o01_v251_xo.hl7", "update", "SCHEDULED"),
        ("orm_o01_ca.hl7", "cancel", "CANCELED"),
        ("orm_o01_dc.hl7", "discontinue", "DISCONTINUED"),
        ("orm_o01_sc.hl7", "status", "STARTED"),
    ],
)
def test_order_control_gives_action_and_status(
    transformer: Transformer, sample: str, action: str, status: str
) -> None:
    (item,) = _items(transformer, sample)
    assert (item.action, item.status) == (action, status)


def test_follow_up_messages_share_the_key_of_the_new_order(transformer: Transformer) -> None:
    keys = {
        _items(transformer, name)[0].key
        for name in ("orm_o01_v23_nw.hl7", "orm_o01_ca.hl7", "orm_o01_dc.hl7", "orm_o01_sc.hl7")
    }
    assert keys == {"RIS^HOSP|PLC1001"}


def test_latin1_names(transformer: Transformer) -> None:
    (item,) = _items(transformer, "orm_o01_latin1.hl7")
    assert item.attributes["PatientName"] == "MÜLLER^JÖRG"
    assert item.attributes["RequestedProcedureDescription"] == "RÖNTGEN THORAX"
    assert _sps(item)["ScheduledStationAETitle"] == "DX_ROOM2"


def test_utf8_names_and_hex_escapes(transformer: Transformer) -> None:
    (item,) = _items(transformer, "orm_o01_utf8.hl7")
    assert item.attributes["PatientName"] == "ŁUKASZEWICZ^RENé^ZOË"  # \XC3A9\ → é
    assert item.attributes["PatientSex"] == "O"


def _message(**fields: str) -> MessageView:
    orc = fields.get("orc", "ORC|NW|PLC9^RIS")
    modality = fields.get("modality", "CT")
    return MessageView.from_text(
        "MSH|^~\\&|RIS|HOSP|||20240101||ORM^O01|9|P|2.3\r"
        "PID|1||MRN9||DOE^JO||19700101|F\r"
        f"{orc}\r"
        f"OBR|1|PLC9^RIS||CT^CT||||||||||||||ACC9|RP9|SPS9||||{modality}\r"
    )


def test_unknown_order_control_fails_the_message(transformer: Transformer) -> None:
    with pytest.raises(TransformError, match=r"orm_to_mwl\.j2:\d+: mapping table 'order_control'"):
        transformer.run({"msg": _message(orc="ORC|ZZ|PLC9^RIS")})


def test_status_change_without_known_status_fails(transformer: Transformer) -> None:
    with pytest.raises(TransformError, match="'order_status' has no entry for key 'SC_XX' or 'SC'"):
        transformer.run({"msg": _message(orc="ORC|SC|PLC9^RIS|||XX")})


def test_order_without_any_order_number_fails(transformer: Transformer) -> None:
    view = MessageView.from_text(
        "MSH|^~\\&|RIS|HOSP|||20240101||ORM^O01|9|P|2.3\rPID|1||M\rORC|NW\rOBR|1\r"
    )
    with pytest.raises(TransformError, match="without a placer"):
        transformer.run({"msg": view})


def test_lower_case_modality_is_caught_by_validation(transformer: Transformer) -> None:
    with pytest.raises(
        TransformError,
        match=r"item 0: attributes\.ScheduledProcedureStepSequence\[0\]\.Modality: CS",
    ):
        transformer.run({"msg": _message(modality="ct")})


def test_template_with_a_bad_keyword_names_it(tmp_path: Path) -> None:
    (tmp_path / "bad.j2").write_text(
        "{% for order in msg.order_groups() %}\n"
        "- action: create\n"
        "  key: {{ order.orc['2.1'] }}\n"
        "  attributes:\n"
        "    PatientName: {{ xpn_to_pn(msg.seg('PID')['5']) }}\n"
        "    ScheduledProcedureStepSequence:\n"
        "      - ScheduledStationAE: CT_1\n"
        "{% endfor %}\n"
    )
    transformer = Transformer(
        TransformConfig(template="bad.j2", output="mwl-items"), TemplateEnvironment(tmp_path)
    )
    with pytest.raises(TransformError) as caught:
        transformer.run({"msg": _message()})
    assert str(caught.value) == (
        "item 0: attributes.ScheduledProcedureStepSequence[0].ScheduledStationAE: "
        "not a DICOM keyword"
    )
