"""The ``msg`` view templates read: positions, escapes, repetitions, order groups."""

from __future__ import annotations

import hl7
import pytest

from engine.errors import ParseError, TransformError
from engine.formats.hl7 import escape, unescape
from engine.hl7_view import EncodingChars, HL7Text, MessageView

ORM = "\r".join(
    [
        "MSH|^~\\&|RIS|HOSP|MERIDIAN|RAD|20240314120000||ORM^O01^ORM_O01|MSG1|P|2.3.1",
        "PID|1||MRN1^^^HOSP&1.2.3&ISO^MR~OTHER9^^^CLINIC||DOE\\S\\X^JO\\T\\HN^^^DR||19800101|F",
        "PV1|1|O|CT^R1",
        "ORC|NW|PLC1^RIS||",
        'OBR|1|PLC1^RIS||CT^CT HEAD\\.br\\NECK\\XC3A9\\|""',
        "ZDS|1.2.3^100^Application^DICOM",
        "ORC|NW|PLC2^RIS",
        "OBR|1|PLC2^RIS",
        "OBX|1|TX|||note",
    ]
)


@pytest.fixture
def msg() -> MessageView:
    return MessageView(hl7.parse(ORM))


def test_header_properties(msg: MessageView) -> None:
    assert msg.type == "ORM^O01"
    assert msg.control_id == "MSG1"
    assert msg.version == "2.3.1"
    assert msg.sender == "RIS^HOSP"
    assert msg.sending_application == "RIS"


def test_msh_is_numbered_as_in_the_standard(msg: MessageView) -> None:
    msh = msg.seg("MSH")
    assert msh["1"] == "|"
    assert msh["2"] == "^~\\&"
    assert msh["3"] == "RIS"
    assert msh["9.3"] == "ORM_O01"


def test_field_component_subcomponent(msg: MessageView) -> None:
    pid = msg.seg("PID")
    assert pid["3"] == "MRN1^^^HOSP&1.2.3&ISO^MR"  # first repetition only
    assert pid["3.1"] == "MRN1"
    assert pid["3.4"] == "HOSP&1.2.3&ISO"
    assert pid["3.4.1"] == "HOSP"
    assert pid["3.4.2"] == "1.2.3"
    assert pid[7] == "19800101"
    assert pid["3.1.1"] == "MRN1"  # an undivided component is its own subcomponent 1


def test_escapes_are_decoded_after_splitting(msg: MessageView) -> None:
    pid = msg.seg("PID")
    assert pid["5.1"] == "DOE^X"  # \S\ is data, not a component separator
    assert pid["5.2"] == "JO&HN"
    assert pid["5"].parts[0] == "DOE^X"
    assert msg.seg("OBR")["4.2"] == "CT HEAD\nNECKé"


def test_missing_reads_as_empty(msg: MessageView) -> None:
    assert msg.seg("PID")["40"] == ""
    assert msg.seg("PID")["5.9"] == ""
    assert msg.seg("PID")["5.1.2"] == ""
    assert msg.seg("OBR")["5"] == ""  # the HL7 explicit null ""
    absent = msg.seg("IN1")
    assert not absent
    assert absent["3.1"] == ""
    assert absent.reps("3") == []


def test_raw_and_repetitions(msg: MessageView) -> None:
    pid = msg.seg("PID")
    assert pid.raw("5") == "DOE\\S\\X^JO\\T\\HN^^^DR"
    assert [rep["1"] for rep in pid.reps("3")] == ["MRN1", "OTHER9"]
    assert pid.reps("3")[1]["4"] == "CLINIC"


def test_hl7_text_keeps_str_behaviour(msg: MessageView) -> None:
    value = msg.seg("PID")["3.1"]
    assert isinstance(value, HL7Text)
    assert value[0] == "M"
    assert value[:3] == "MRN"
    assert value + "!" == "MRN1!"


def test_bad_positions_are_errors(msg: MessageView) -> None:
    for path in ("0", "PID-5", "5.", "a"):
        with pytest.raises(TransformError, match="bad HL7 field position"):
            msg.seg("PID")[path]
    with pytest.raises(TransformError):
        msg.seg("PID").raw("5.1")


def test_segments_and_order_groups(msg: MessageView) -> None:
    assert len(msg.segs("OBR")) == 2
    groups = msg.order_groups()
    assert [g.orc["2.1"] for g in groups] == ["PLC1", "PLC2"]
    assert [s.name for s in groups[0].segments] == ["ORC", "OBR", "ZDS"]
    assert groups[0].zds["1.1"] == "1.2.3"
    assert not groups[1].zds
    assert groups[1].obx["5"] == "note"
    assert groups[1].segs("OBX")[0]["2"] == "TX"


def test_omi_group_contains_tq1_and_every_ipc() -> None:
    msg = MessageView.from_text(
        "MSH|^~\\&|EHR|H|||||OMI^O23|2|P|2.5.1\nPID|1\nORC|NW|P1\nTQ1|1||||||20240316\n"
        "OBR|1|P1\nIPC|A1|R1|1.2.3|S1|MR\nIPC|A1|R1|1.2.3|S2|CT\n"
    )
    (group,) = msg.order_groups()
    assert group.tq1["7"] == "20240316"
    assert group.ipc["4"] == "S1"
    assert [ipc["5"] for ipc in group.segs("IPC")] == ["MR", "CT"]


def test_custom_delimiters_are_honoured() -> None:
    msg = MessageView.from_text("MSH#*~!$#A#B#####ORM*O01#3#P#2.3\rPID#1##ID1*X##DOE*JO!F!")
    assert msg.type == "ORM^O01"
    assert msg.seg("PID")["5.2"] == "JO#"
    assert msg.seg("PID")["3.2"] == "X"


def test_repr_never_shows_content(msg: MessageView) -> None:
    assert "DOE" not in repr(msg.seg("PID"))
    assert "DOE" not in repr(msg)
    assert "DOE" not in repr(msg.order_groups()[0])


def test_message_must_start_with_msh() -> None:
    with pytest.raises(ParseError, match="MSH"):
        MessageView.from_text("PID|1\r")
    with pytest.raises(ParseError, match="MSH"):
        MessageView([])


@pytest.mark.parametrize(
    ("escaped", "text"),
    [
        ("A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F", "A|B^C&D~E\\F"),
        ("\\X41C3A9\\", "Aé"),
        ("\\XE9\\", "é"),  # not UTF-8: Latin-1
        ("A\\.br\\B", "A\nB"),
        ("open \\F", "open \\F"),  # unterminated: kept
    ],
)
def test_unescape(escaped: str, text: str) -> None:
    assert unescape(escaped) == text


def test_escape_round_trips() -> None:
    text = "A|B^C&D~E\\F\nG"
    assert unescape(escape(text)) == text
    encoding = EncodingChars.from_msh("#", "*~!$")
    assert escape("a#b*c", encoding.msh2, encoding.field) == "a!F!b!S!c"


def test_a_field_without_components_keeps_its_subcomponents_inside_component_1() -> None:
    view = MessageView.from_text(
        "MSH|^~\\&|A|B|C|D|20240101||ORU^R01|1|P|2.5.1\r"
        "OBR|1|||||||||||||||||||||||||||||||4711&HOUSE&GREGORY\r"
    )
    obr = view.seg("OBR")
    assert obr["32"] == "4711&HOUSE&GREGORY"
    assert obr["32.1"] == "4711&HOUSE&GREGORY", "component 1 is the whole XCN-like value"
    assert obr["32.1.2"] == "HOUSE"
    assert obr["32.2"] == ""
