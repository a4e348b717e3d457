"""The sandboxed template environment: helpers, output finalizers, errors, sandbox."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from pydicom.uid import UID

from engine.errors import ConfigError, TransformError
from engine.hl7_view import MessageView
from engine.template_helpers import (
    DEFAULT_UID_ROOT,
    UidFactory,
    priority_from_hl7,
    ts_to_da,
    ts_to_tm,
    xcn_to_pn,
    xpn_to_pn,
)
from engine.templating import TemplateEnvironment

NASTY = 'O\'Brien "the: boss"\nsecond: line # not a comment\t\\ {x} [y] & ~ | ^ \u2028\x85 Ø'


def _env(tmp_path: Path, templates: dict[str, str], **kwargs: object) -> TemplateEnvironment:
    for name, text in templates.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "tables").mkdir(exist_ok=True)
    (tmp_path / "tables" / "codes.csv").write_text("key,value\nCT,CT_AE\nCT|ER,CT_ER\n")
    return TemplateEnvironment(tmp_path, **kwargs)  # type: ignore[arg-type]


# --- helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "da", "tm"),
    [
        ("20240315093000", "20240315", "093000"),
        ("202403151430+0100", "20240315", "1430"),
        ("20240315093000.1234-0500", "20240315", "093000"),
        ("2024031509", "20240315", "09"),
        ("20240315", "20240315", ""),
        ("", "", ""),
        ("  ", "", ""),
    ],
)
def test_ts_conversions(ts: str, da: str, tm: str) -> None:
    assert ts_to_da(ts) == da
    assert ts_to_tm(ts) == tm


def test_ts_with_precision_component_uses_the_first_component() -> None:
    view = MessageView.from_text("MSH|^~\\&|A|B|||||ORM^O01|1|P|2.3\rOBR|1|||||20240315093000^S")
    assert ts_to_da(view.seg("OBR")["6"]) == "20240315"
    assert ts_to_tm(view.seg("OBR")["6"]) == "093000"


@pytest.mark.parametrize("ts", ["1970", "197001", "2024-03-15", "20240315T0930", "abc"])
def test_ts_to_da_refuses_what_is_not_a_full_date(ts: str) -> None:
    with pytest.raises(TransformError):
        ts_to_da(ts)


def test_ts_error_does_not_quote_the_value() -> None:
    with pytest.raises(TransformError) as caught:
        ts_to_da("SECRET-DOB")
    assert "SECRET" not in str(caught.value)
    assert "cannot make a DICOM date (DA)" in str(caught.value)


@pytest.mark.parametrize(
    ("xpn", "pn"),
    [
        ("DOE^JOHN", "DOE^JOHN"),
        ("DOE^JOHN^^^", "DOE^JOHN"),
        ("DOE^JOHN^Q^JR^DR", "DOE^JOHN^Q^DR^JR"),
        ("DOE^^^^DR", "DOE^^^DR"),
        ("VAN DER BERG&VAN DER&BERG^ANNA", "VAN DER BERG^ANNA"),
        ("", ""),
    ],
)
def test_xpn_to_pn(xpn: str, pn: str) -> None:
    assert xpn_to_pn(xpn) == pn


def test_xpn_to_pn_uses_decoded_components_of_a_field() -> None:
    view = MessageView.from_text(
        "MSH|^~\\&|A|B|||||ADT^A01|1|P|2.5\rPID|1||1||O\\T\\NEIL^MARY^ANN^JR^DR"
    )
    assert xpn_to_pn(view.seg("PID")["5"]) == "O&NEIL^MARY^ANN^DR^JR"


def test_xcn_to_pn() -> None:
    assert xcn_to_pn("1234^WELBY^MARCUS^A^III^DR^MD") == "WELBY^MARCUS^A^DR^III"
    assert xcn_to_pn("1234") == ""


@pytest.mark.parametrize(
    ("code", "priority"),
    [
        ("S", "STAT"),
        ("stat", "STAT"),
        ("A", "HIGH"),
        ("ASAP", "HIGH"),
        ("T", "HIGH"),
        ("R", "ROUTINE"),
        ("", "ROUTINE"),
        ("P", "MEDIUM"),
        ("PRN", "MEDIUM"),
    ],
)
def test_priority_from_hl7(code: str, priority: str) -> None:
    assert priority_from_hl7(code) == priority


def test_uid_from_is_deterministic_valid_and_under_the_root() -> None:
    uids = UidFactory("1.2.3.")
    first = uids.uid_from("RIS^HOSP", "PLC1001")
    assert first == uids.uid_from("RIS^HOSP", "PLC1001")
    assert first != uids.uid_from("RIS^HOSP", "PLC1002")
    assert uids.uid_from("ab", "c") != uids.uid_from("a", "bc")
    assert first.startswith("1.2.3.")
    assert UID(first).is_valid
    assert len(first) <= 64


def test_uid_from_refuses_empty_parts() -> None:
    with pytest.raises(TransformError, match="non-empty"):
        UidFactory().uid_from("RIS", "")


def test_new_uid_is_fresh() -> None:
    uids = UidFactory()
    assert uids.new_uid() != uids.new_uid()
    assert uids.new_uid().startswith(DEFAULT_UID_ROOT)


def test_invalid_uid_root_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="UID root"):
        TemplateEnvironment(tmp_path, uid_root="1.2.abc.")


def test_helpers_are_available_in_templates(tmp_path: Path) -> None:
    env = _env(
        tmp_path,
        {
            "h.j2": (
                "{{ ts_to_da('20240315093000') }} {{ '20240315093000' | ts_to_tm }} "
                "{{ lookup('codes', ['CT|OR', 'CT']) }} {{ lookup('codes', 'XX', default='-') }} "
                "{{ now_da() }} {{ now_tm() }} {{ uid_from('a', 'b') == uid_from('a', 'b') }}"
            )
        },
        uid_root="1.2.3.",
        clock=lambda: datetime(2024, 3, 15, 9, 30, 5),
    )
    out = env.render("h.j2", "text", {})
    assert out == "20240315 093000 CT_AE - 20240315 093005 True"


def test_lookup_missing_key_names_table_and_key(tmp_path: Path) -> None:
    env = _env(tmp_path, {"l.j2": "line one\n{{ lookup('codes', 'MR') }}\n"})
    with pytest.raises(TransformError) as caught:
        env.render("l.j2", "text", {})
    message = str(caught.value)
    assert "l.j2:2" in message
    assert "codes" in message
    assert "'MR'" in message


def test_fail_helper_stops_with_the_reason(tmp_path: Path) -> None:
    env = _env(tmp_path, {"f.j2": "{{ fail('no order number') }}"})
    with pytest.raises(TransformError, match=r"f\.j2:1: no order number"):
        env.render("f.j2", "yaml", {})


# --- finalizers: values can never change the document's structure ------------------------


def test_yaml_output_quotes_every_value(tmp_path: Path) -> None:
    env = _env(tmp_path, {"y.j2": "name: {{ name }}\nnone: {{ nothing }}\nn: {{ n }}\n"})
    out = env.render("y.j2", "yaml", {"name": NASTY, "nothing": None, "n": 3})
    assert yaml.safe_load(out) == {"name": NASTY, "none": None, "n": 3}


def test_yaml_output_keeps_hl7_text_and_lists(tmp_path: Path) -> None:
    view = MessageView.from_text("MSH|^~\\&|A|B|||||ADT^A01|1|P|2.5\rPID|1||1||DOE\\F\\X^JO")
    env = _env(tmp_path, {"y.j2": "name: {{ msg.seg('PID')['5'] }}\nl: {{ [1, 'a:b'] }}\n"})
    assert yaml.safe_load(env.render("y.j2", "yaml", {"msg": view})) == {
        "name": "DOE|X^JO",
        "l": [1, "a:b"],
    }


def test_json_output_quotes_every_value(tmp_path: Path) -> None:
    env = _env(tmp_path, {"j.j2": '{"name": {{ name }}, "none": {{ nothing }}}'})
    out = env.render("j.j2", "json", {"name": NASTY, "nothing": None})
    assert json.loads(out) == {"name": NASTY, "none": None}


def test_hl7_output_escapes_delimiters(tmp_path: Path) -> None:
    env = _env(tmp_path, {"h.j2": "PID|1||{{ id }}||{{ name }}|{{ nothing }}|"})
    out = env.render("h.j2", "hl7", {"id": "A|B^C&D~E\\F", "name": "X\r\nY", "nothing": None})
    assert out == "PID|1||A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F||X\\.br\\Y||"


def test_raw_opts_out_of_escaping(tmp_path: Path) -> None:
    env = _env(tmp_path, {"r.j2": "PID|1||{{ id | raw }}|\nkey: {{ block | raw }}"})
    assert env.render("r.j2", "hl7", {"id": "1^^^HOSP", "block": "x"}).startswith(
        "PID|1||1^^^HOSP|"
    )
    assert env.render("r.j2", "yaml", {"id": "a", "block": "[1, 2]"}).endswith("key: [1, 2]")


def test_yaml_output_refuses_objects(tmp_path: Path) -> None:
    view = MessageView.from_text("MSH|^~\\&|A|B|||||ADT^A01|1|P|2.5\rPID|1")
    env = _env(tmp_path, {"o.j2": "pid: {{ msg.seg('PID') }}\n"})
    with pytest.raises(TransformError, match=r"o\.j2:1: cannot write a SegmentView"):
        env.render("o.j2", "yaml", {"msg": view})


# --- errors and sandbox -------------------------------------------------------------------


def test_undefined_variable_names_template_and_line(tmp_path: Path) -> None:
    env = _env(tmp_path, {"u.j2": "a: 1\nb: 2\nc: {{ mgs.type }}\n"})
    with pytest.raises(TransformError, match=r"u\.j2:3: 'mgs' is undefined"):
        env.render("u.j2", "yaml", {})


def test_undefined_attribute_is_an_error_even_in_text(tmp_path: Path) -> None:
    env = _env(tmp_path, {"u.j2": "{{ ctx.nope }}"})
    with pytest.raises(TransformError, match=r"u\.j2:1: .*nope"):
        env.render("u.j2", "text", {"ctx": {}})


def test_error_in_an_included_template_names_that_file(tmp_path: Path) -> None:
    env = _env(tmp_path, {"main.j2": "x\n{% include 'part.j2' %}", "part.j2": "\n\n{{ oops }}"})
    with pytest.raises(TransformError, match=r"part\.j2:3:"):
        env.render("main.j2", "text", {})


@pytest.mark.parametrize(
    "expression",
    [
        "().__class__.__subclasses__()",
        "''.__class__.__mro__",
        "msg.__init__.__globals__",
        "lookup.__self__",
    ],
)
def test_sandbox_blocks_private_attributes(tmp_path: Path, expression: str) -> None:
    view = MessageView.from_text("MSH|^~\\&|A|B|||||ADT^A01|1|P|2.5")
    env = _env(tmp_path, {"s.j2": "{{ " + expression + " }}"})
    with pytest.raises(TransformError, match=r"s\.j2:1"):
        env.render("s.j2", "text", {"msg": view})


def test_table_names_cannot_leave_the_tables_directory(tmp_path: Path) -> None:
    env = _env(tmp_path, {"t.j2": "{{ lookup('../t', 'x') }}"})
    with pytest.raises(ConfigError, match="invalid mapping table name"):
        env.render("t.j2", "text", {})


def test_syntax_error_is_a_config_error_with_file_and_line(tmp_path: Path) -> None:
    env = _env(tmp_path, {"bad.j2": "ok\nstill ok\n{% if %}\n"})
    with pytest.raises(ConfigError, match=r"bad\.j2:3: template syntax error"):
        env.check("bad.j2")
    with pytest.raises(ConfigError, match=r"bad\.j2:3"):
        env.render("bad.j2", "yaml", {})


def test_check_unknown_or_non_j2_template(tmp_path: Path) -> None:
    env = _env(tmp_path, {"a.txt": "x"})
    with pytest.raises(ConfigError, match="not found"):
        env.check("missing.j2")
    with pytest.raises(ConfigError, match=r"\.j2"):
        env.check("a.txt")


def test_unknown_output_kind(tmp_path: Path) -> None:
    env = _env(tmp_path, {"a.j2": "x"})
    with pytest.raises(ConfigError, match="unknown template output"):
        env.render("a.j2", "xml", {})


def test_compile_expression_for_filters(tmp_path: Path) -> None:
    env = _env(tmp_path, {})
    view = MessageView.from_text("MSH|^~\\&|A|B|||||ORM^O01|1|P|2.3")
    test = env.compile_expression('msg.type in ["ORM^O01", "OMI^O23"]')
    assert test(msg=view) is True
    with pytest.raises(ConfigError, match="syntax"):
        env.compile_expression("msg.type ==")
