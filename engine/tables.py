"""Mapping tables: the code translations a template looks up (station AE titles, statuses...).

A table is a file in the tables directory (``transforms/tables``), named by its stem:

* ``<name>.csv`` — UTF-8, a header row containing ``key`` and ``value`` (more columns are
  allowed and can be read with ``lookup_row``). Lines starting with ``#`` are comments,
  so the table can document itself. One row per line; values are stripped of spaces.
* ``<name>.yaml`` / ``<name>.yml`` — a mapping of key to value, or key to a mapping of
  columns. Every scalar is read as text (``yes`` stays ``"yes"``, ``01`` stays ``"01"``).

Tables are loaded on first use and cached; :meth:`MappingTables.reload` drops the cache.
A malformed table raises :class:`ConfigError` naming the file and line; a missing key
raises :class:`TransformError` naming the table and key (unless a default is given).
"""

from __future__ import annotations

import csv
import enum
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml

from engine.errors import ConfigError, TransformError

__all__ = ["REQUIRED", "MappingTables", "Table"]

_TABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_SUFFIXES = (".csv", ".yaml", ".yml")


class _Required(enum.Enum):
    TOKEN = enum.auto()


#: Default of ``default``: the key must be in the table.
REQUIRED = _Required.TOKEN

Row = dict[str, str]
_T = TypeVar("_T")


@dataclass(frozen=True)
class Table:
    """One loaded table: key → row (column → value). ``row["value"]`` is the mapped value."""

    name: str
    path: Path
    rows: dict[str, Row]


class MappingTables:
    """The tables of one directory, loaded lazily and cached."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[str, Table] = {}
        self._lock = threading.Lock()

    def lookup(
        self, table: str, key: object, default: str | _Required | None = REQUIRED
    ) -> str | None:
        """The ``value`` column for ``key``; ``key`` may be a list of keys tried in order.

        ``lookup("station_ae", ["CT|ER", "CT"])`` returns the first key present, so
        specific rows can override general ones. Without ``default`` a missing key is a
        :class:`TransformError` naming the table and the keys tried.
        """
        loaded = self.table(table)
        for candidate in _candidates(key):
            row = loaded.rows.get(candidate)
            if row is not None:
                if "value" not in row:
                    raise ConfigError(f"{loaded.path}: key {candidate!r} has no 'value' column")
                return row["value"]
        return _missing(loaded, key, default)

    def lookup_row(
        self, table: str, key: object, default: Row | _Required | None = REQUIRED
    ) -> Row | None:
        """The whole row (every column) for ``key``, as :meth:`lookup` finds it."""
        loaded = self.table(table)
        for candidate in _candidates(key):
            row = loaded.rows.get(candidate)
            if row is not None:
                return dict(row)
        return _missing(loaded, key, default)

    def table(self, name: str) -> Table:
        """The table called ``name``, loading it on first use."""
        with self._lock:
            cached = self._cache.get(name)
            if cached is None:
                cached = self._cache[name] = _load(self._path_of(name), name)
            return cached

    def reload(self) -> None:
        """Forget every loaded table: the next lookup reads the files again."""
        with self._lock:
            self._cache.clear()

    def check_all(self) -> list[str]:
        """Load every table file of the directory (raising on the first bad one); their names."""
        if not self.directory.is_dir():
            return []
        names = sorted({p.stem for p in self.directory.iterdir() if p.suffix in _SUFFIXES})
        for name in names:
            self.table(name)
        return names

    def _path_of(self, name: str) -> Path:
        # Table names come from templates: never let one climb out of the directory.
        if not _TABLE_NAME.fullmatch(name):
            raise ConfigError(f"invalid mapping table name {name!r} (letters, digits, _ and -)")
        found = [self.directory / f"{name}{s}" for s in _SUFFIXES]
        existing = [path for path in found if path.is_file()]
        if not existing:
            raise ConfigError(f"no mapping table {name!r} in {self.directory} (.csv or .yaml)")
        if len(existing) > 1:
            raise ConfigError(
                f"mapping table {name!r} is defined twice: {existing[0]}, {existing[1]}"
            )
        return existing[0]


def _candidates(key: object) -> list[str]:
    keys: Sequence[object] = key if isinstance(key, list | tuple) else [key]
    return ["" if k is None else str(k) for k in keys]


def _missing(table: Table, key: object, default: _T | _Required) -> _T:
    if isinstance(default, _Required):
        tried = " or ".join(repr(k) for k in _candidates(key))
        raise TransformError(f"mapping table '{table.name}' has no entry for key {tried}")
    return default


def _load(path: Path, name: str) -> Table:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    rows = _parse_csv(path, text) if path.suffix == ".csv" else _parse_yaml(path, text)
    return Table(name, path, rows)


def _parse_csv(path: Path, text: str) -> dict[str, Row]:
    header: list[str] | None = None
    rows = _Rows(path)
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = [cell.strip() for cell in next(csv.reader([line]))]
        if header is None:
            header = _check_header(path, line_no, cells)
            continue
        if len(cells) != len(header):
            raise ConfigError(
                f"{path}:{line_no}: expected {len(header)} columns ({','.join(header)}), "
                f"found {len(cells)}"
            )
        row = dict(zip(header, cells, strict=True))
        rows.add(line_no, row.pop("key"), row)
    if header is None:
        raise ConfigError(f"{path}: empty table: expected a header row 'key,value'")
    return rows.rows


def _check_header(path: Path, line_no: int, cells: list[str]) -> list[str]:
    if "key" not in cells or "value" not in cells:
        raise ConfigError(f"{path}:{line_no}: the header row must name the columns key and value")
    if len(set(cells)) != len(cells) or "" in cells:
        raise ConfigError(f"{path}:{line_no}: column names must be unique and non-empty")
    return cells


class _Rows:
    """Collects a table's rows, refusing empty and duplicate keys with their line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, Row] = {}
        self._first_line: dict[str, int] = {}

    def add(self, line_no: int, key: str, row: Row) -> None:
        if not key:
            raise ConfigError(f"{self.path}:{line_no}: empty key")
        if key in self.rows:
            first = self._first_line[key]
            raise ConfigError(
                f"{self.path}:{line_no}: duplicate key {key!r} (first defined on line {first})"
            )
        self.rows[key] = row
        self._first_line[key] = line_no


def _parse_yaml(path: Path, text: str) -> dict[str, Row]:
    try:
        # BaseLoader: every scalar stays text, and nodes keep their line numbers.
        root = yaml.compose(text, Loader=yaml.BaseLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError(f"{path}:{line}: invalid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: a table must be a mapping of keys")
    rows = _Rows(path)
    for key_node, value_node in root.value:
        line_no = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            raise ConfigError(f"{path}:{line_no}: a key must be a plain value")
        rows.add(line_no, str(key_node.value).strip(), _yaml_row(path, value_node))
    return rows.rows


def _yaml_row(path: Path, node: yaml.Node) -> Row:
    if isinstance(node, yaml.ScalarNode):
        return {"value": str(node.value)}
    if isinstance(node, yaml.MappingNode) and all(
        isinstance(k, yaml.ScalarNode) and isinstance(v, yaml.ScalarNode) for k, v in node.value
    ):
        return {str(k.value): str(v.value) for k, v in node.value}
    raise ConfigError(
        f"{path}:{node.start_mark.line + 1}: a value must be text or a mapping of columns to text"
    )
