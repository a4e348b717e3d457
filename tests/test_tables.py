"""Mapping tables: CSV and YAML, lookups, caching and errors with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError, TransformError
from engine.tables import MappingTables

SHIPPED = Path(__file__).resolve().parent.parent / "transforms" / "tables"


def _tables(tmp_path: Path, files: dict[str, str]) -> MappingTables:
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return MappingTables(tmp_path)


def test_csv_lookup_with_comments_and_extra_columns(tmp_path: Path) -> None:
    tables = _tables(
        tmp_path,
        {"ae.csv": "# station titles\nkey,value,description\n\nCT , CT_1 ,Main CT\n# MR soon\n"},
    )
    assert tables.lookup("ae", "CT") == "CT_1"
    assert tables.lookup_row("ae", "CT") == {"value": "CT_1", "description": "Main CT"}


def test_lookup_tries_keys_in_order_and_honours_default(tmp_path: Path) -> None:
    tables = _tables(tmp_path, {"ae.csv": "key,value\nCT,CT_1\nCT|ER,CT_ER\n"})
    assert tables.lookup("ae", ["CT|ER", "CT"]) == "CT_ER"
    assert tables.lookup("ae", ["CT|OR", "CT"]) == "CT_1"
    assert tables.lookup("ae", "MR", default="") == ""
    assert tables.lookup("ae", "MR", default=None) is None


def test_missing_key_names_table_and_keys(tmp_path: Path) -> None:
    tables = _tables(tmp_path, {"ae.csv": "key,value\nCT,CT_1\n"})
    with pytest.raises(TransformError, match=r"'ae' has no entry for key 'MR\|X' or 'MR'"):
        tables.lookup("ae", ["MR|X", "MR"])


def test_yaml_table_keeps_values_as_text(tmp_path: Path) -> None:
    tables = _tables(
        tmp_path,
        {"t.yaml": "yes: no\n'01': 007\nCT:\n  value: CT_1\n  room: R1\n"},
    )
    assert tables.lookup("t", "yes") == "no"
    assert tables.lookup("t", "01") == "007"
    assert tables.lookup("t", "CT") == "CT_1"
    assert tables.lookup_row("t", "CT") == {"value": "CT_1", "room": "R1"}


@pytest.mark.parametrize(
    ("files", "where"),
    [
        ({"t.csv": "# c\nkey,val\nA,1\n"}, "t.csv:2: the header row"),
        ({"t.csv": "key,value\nA,1\nB,2,3\n"}, "t.csv:3: expected 2 columns"),
        (
            {"t.csv": "key,value\nA,1\n\nA,2\n"},
            "t.csv:4: duplicate key 'A' (first defined on line 2)",
        ),
        ({"t.csv": "key,value\n,1\n"}, "t.csv:2: empty key"),
        ({"t.csv": "# only comments\n"}, "t.csv: empty table"),
        ({"t.yaml": "A: 1\nB: [1, 2]\n"}, "t.yaml:2: a value must be text"),
        ({"t.yaml": "A: 1\nA: 2\n"}, "t.yaml:2: duplicate key 'A'"),
        ({"t.yaml": "A: 1\n  B: : 2\n"}, "t.yaml:2: invalid YAML"),
        ({"t.yaml": "- A\n"}, "t.yaml:1: a table must be a mapping"),
        ({"t.csv": "key,value\n", "t.yaml": "A: 1\n"}, "defined twice"),
    ],
)
def test_bad_tables_are_config_errors_with_file_and_line(
    tmp_path: Path, files: dict[str, str], where: str
) -> None:
    tables = _tables(tmp_path, files)
    with pytest.raises(ConfigError) as caught:
        tables.lookup("t", "A")
    assert where in str(caught.value)


def test_unknown_table_and_unsafe_names(tmp_path: Path) -> None:
    tables = _tables(tmp_path, {})
    with pytest.raises(ConfigError, match="no mapping table 'nope'"):
        tables.lookup("nope", "A")
    for name in ("../secret", "a/b", ".hidden", ""):
        with pytest.raises(ConfigError, match="invalid mapping table name"):
            tables.lookup(name, "A")


def test_tables_are_cached_until_reload(tmp_path: Path) -> None:
    tables = _tables(tmp_path, {"t.csv": "key,value\nA,1\n"})
    assert tables.lookup("t", "A") == "1"
    (tmp_path / "t.csv").write_text("key,value\nA,2\n")
    assert tables.lookup("t", "A") == "1"
    tables.reload()
    assert tables.lookup("t", "A") == "2"


def test_non_utf8_table_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_bytes("key,value\nA,Ü\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        MappingTables(tmp_path).lookup("t", "A")


def test_shipped_tables_load() -> None:
    tables = MappingTables(SHIPPED)
    assert set(tables.check_all()) >= {"station_ae", "order_control", "order_status", "patient_sex"}
    assert tables.lookup("order_control", "XO") == "update"
    assert tables.lookup("order_status", ["SC_IP", "SC"]) == "STARTED"
