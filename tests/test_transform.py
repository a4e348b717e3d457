"""The transform step: every output kind is parsed and validated before it leaves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from engine.errors import ConfigError, TransformError
from engine.templating import TemplateEnvironment
from engine.transform import TransformConfig, Transformer


def _run(tmp_path: Path, output: str, template: str, **context: Any) -> list[str]:
    (tmp_path / "t.j2").write_text(template, encoding="utf-8")
    config = TransformConfig.model_validate({"template": "t.j2", "output": output})
    return Transformer(config, TemplateEnvironment(tmp_path)).run(context)


ITEM = """
- action: create
  key: {{ key }}
  status: SCHEDULED
  attributes:
    PatientName: {{ name }}
    ScheduledProcedureStepSequence:
      - Modality: CT
        ScheduledProcedureStepStartDate: "20240315"
"""


def test_mwl_items_become_worklist_item_json(tmp_path: Path) -> None:
    (payload,) = _run(tmp_path, "mwl-items", ITEM, key="RIS|1", name='DOE^"JO": X')
    item = json.loads(payload)
    assert item["action"] == "create"
    assert item["attributes"]["PatientName"] == 'DOE^"JO": X'
    assert item["attributes"]["ScheduledProcedureStepSequence"][0]["Modality"] == "CT"


def test_empty_output_is_no_item(tmp_path: Path) -> None:
    assert _run(tmp_path, "mwl-items", "{# nothing to schedule #}\n") == []
    assert _run(tmp_path, "text", "  \n") == []


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ("PatientNme: X", "item 0: attributes.PatientNme: not a DICOM keyword"),
        (
            "ScheduledProcedureStepSequence:\n      - Modalty: CT",
            "item 0: attributes.ScheduledProcedureStepSequence[0].Modalty: not a DICOM keyword",
        ),
        ("PatientBirthDate: '19801301'", "attributes.PatientBirthDate: DA must be a valid date"),
        ("PatientBirthDate: 19800101", "attributes.PatientBirthDate: DA must be text, not int"),
        ("StudyDate: 2024-01-01", "attributes.StudyDate: DA must be text, not date"),
        ("StudyTime: '25'", "attributes.StudyTime: TM must be"),
        ("PatientName: 'A^B^C^D^E^F'", "attributes.PatientName: PN has 6 components"),
        ("PatientSex: m", "attributes.PatientSex: CS allows only upper-case"),
        ("Modality: ABCDEFGHIJKLMNOPQ", "attributes.Modality: CS value is 17 characters, max 16"),
        ("StudyInstanceUID: '1.2.03'", "attributes.StudyInstanceUID: UI must be a valid UID"),
        ("AccessionNumber: '12345678901234567'", "attributes.AccessionNumber: SH value is 17"),
        ("PatientID: 'A\\\\B'", "attributes.PatientID: LO value contains a backslash"),
        (
            "ScheduledProcedureStepSequence: CT",
            "attributes.ScheduledProcedureStepSequence: a sequence",
        ),
        ("PatientName: {a: 1}", "attributes.PatientName: a PN value must be a single value"),
    ],
)
def test_invalid_attributes_name_item_and_path(
    tmp_path: Path, attributes: str, expected: str
) -> None:
    template = "- action: create\n  key: k\n  attributes:\n    " + attributes + "\n"
    with pytest.raises(TransformError) as caught:
        _run(tmp_path, "mwl-items", template)
    assert expected in str(caught.value)


def test_item_errors_name_the_item_index_and_never_the_value(tmp_path: Path) -> None:
    template = (
        "- action: create\n  key: a\n"
        "- action: create\n  key: b\n  attributes: {PatientBirthDate: '19801399'}\n"
    )
    with pytest.raises(TransformError) as caught:
        _run(tmp_path, "mwl-items", template)
    assert str(caught.value).startswith("item 1: attributes.PatientBirthDate")
    assert "19801399" not in str(caught.value)


def test_worklist_item_contract_is_enforced(tmp_path: Path) -> None:
    with pytest.raises(TransformError, match="item 0: action: Input should be"):
        _run(tmp_path, "mwl-items", "- action: delete\n  key: k\n")
    with pytest.raises(TransformError, match="item 0: colour: Extra inputs"):
        _run(tmp_path, "mwl-items", "- action: create\n  key: k\n  colour: red\n")
    with pytest.raises(TransformError, match="status: CS allows only upper-case"):
        _run(tmp_path, "mwl-items", "- action: status\n  key: k\n  status: started\n")
    with pytest.raises(TransformError, match="must be a YAML list"):
        _run(tmp_path, "mwl-items", "action: create\nkey: k\n")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(TransformError, match=r"not valid YAML \(line 3\)"):
        _run(tmp_path, "mwl-items", "- action: create\n  key: k\n   bad: : indent\n")


def test_hl7_output_is_split_per_msh_and_checked(tmp_path: Path) -> None:
    template = (
        "MSH|^~\\&|MERIDIAN|HUB|EHR|H|20240101||ORU^R01|{{ id }}|P|2.5.1\n"
        "\n"
        "PID|1||{{ pid }}\n"
        "MSH|^~\\&|MERIDIAN|HUB|EHR|H|20240101||ORU^R01|{{ id }}-2|P|2.5.1\n"
    )
    first, second = _run(tmp_path, "hl7", template, id="C1", pid="A^B")
    assert first == "MSH|^~\\&|MERIDIAN|HUB|EHR|H|20240101||ORU^R01|C1|P|2.5.1\rPID|1||A\\S\\B\r"
    assert second.split("|")[9] == "C1-2"


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("PID|1\n", "does not start with an MSH"),
        ("MSH|^~\\&|A|B|||||ORU^R01||P|2.5\n", "MSH-10 (control ID) is empty"),
        ("MSH|^~\\&|A|B|||||ORU^R01|1|P|2.5\npid|1\n", "segment 2 does not start"),
    ],
)
def test_hl7_output_errors(tmp_path: Path, template: str, reason: str) -> None:
    with pytest.raises(TransformError, match=re.escape(f"HL7 message 0: {reason}")):
        _run(tmp_path, "hl7", template)


def test_hl7_validators_extension_point(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("MSH|^~\\&|A|B|||||ORU^R01|1|P|2.5\n")
    seen: list[str] = []

    def profile(message: str) -> None:
        seen.append(message)
        raise TransformError("OBR segment required")

    transformer = Transformer(
        TransformConfig(template="t.j2", output="hl7"),
        TemplateEnvironment(tmp_path),
        hl7_validators=[profile],
    )
    with pytest.raises(TransformError, match="HL7 message 0: OBR segment required"):
        transformer.run({})
    assert seen == ["MSH|^~\\&|A|B|||||ORU^R01|1|P|2.5\r"]


def test_json_and_yaml_output_must_parse(tmp_path: Path) -> None:
    assert _run(tmp_path, "json", '{"a": {{ v }}}', v="x") == ['{"a": "x"}']
    with pytest.raises(TransformError, match=r"not valid JSON \(line 1, column"):
        _run(tmp_path, "json", "{'a': 1}")
    assert _run(tmp_path, "yaml", "a: {{ v }}\n", v=1) == ["a: 1\n"]
    with pytest.raises(TransformError, match="not valid YAML"):
        _run(tmp_path, "yaml", "a: [1\n")


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError):
        TransformConfig.model_validate({"template": "t.j2", "output": "xml"})
    with pytest.raises(ValidationError):
        TransformConfig.model_validate({"template": "t.j2", "output": "hl7", "extra": 1})


def test_check_compiles_template_and_loads_tables(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("{{ x }}")
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "bad.csv").write_text("key,value\nA,1,2\n")
    transformer = Transformer(
        TransformConfig(template="t.j2", output="text"), TemplateEnvironment(tmp_path)
    )
    with pytest.raises(ConfigError, match=r"bad\.csv:2"):
        transformer.check()
