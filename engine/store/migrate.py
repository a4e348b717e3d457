"""Schema migrations of the store (Alembic), run when a store is opened.

Every node runs ``upgrade head`` at start. On PostgreSQL the upgrade runs in
one transaction holding a transaction-level advisory lock, so several nodes
starting at once take turns: the first migrates, the others then find the
store at head and do nothing. SQLite has a single writer (one hub per file).

A store created before migrations existed (tables, no ``alembic_version``) is
adopted: if its tables have the baseline revision's columns it is stamped
``0001``; otherwise a :class:`StoreError` says what differs, and nothing changes.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, create_engine, func, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from engine.errors import StoreError
from engine.store.schema import metadata

__all__ = [
    "BASELINE",
    "check_store",
    "current_revision",
    "full_metadata",
    "head_revision",
    "upgrade_store",
]

#: The revision that creates the schema as ``metadata.create_all`` did before.
BASELINE = "0001"

# Arbitrary constant ("MERIDIAN" folded into a signed bigint); only the
# migration uses it, other advisory-lock users of the store pick other keys.
_LOCK_KEY = 0x4D45524944_0001

_SCRIPTS = Path(__file__).with_name("migrations")


def full_metadata() -> MetaData:
    """The store's metadata with every table registered (imports each owning module)."""
    import admin.tables  # noqa: F401 - registers the admin tables
    import engine.ai_timeouts
    import engine.alert_tables
    import engine.archive_tables
    import engine.audit
    import engine.deid_tables
    import engine.mpps
    import engine.reading_tables
    import engine.store.tables
    import engine.tables
    import engine.worklist  # noqa: F401

    return metadata


def head_revision() -> str:
    """The newest revision shipped with this version of Meridian."""
    head = ScriptDirectory.from_config(_config(None)).get_current_head()
    if head is None:
        raise StoreError("no schema revisions are installed with Meridian")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the store is at, or None for a store without migration history."""
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the store's schema revision: {type(exc).__name__}") from exc


def upgrade_store(engine: Engine) -> None:
    """Bring the store to the head revision (adopting a pre-migration store first)."""
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
            config = _config(conn)
            if _is_legacy(conn):
                _adopt(conn, config)
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise StoreError(f"schema upgrade failed: {type(exc).__name__}: {exc}") from exc


def check_store(engine: Engine) -> list[str]:
    """Differences between the store and this version's schema; empty when they match."""
    head = head_revision()
    current = current_revision(engine)
    problems = [] if current == head else [f"store is at revision {current}, head is {head}"]
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(context, full_metadata())
    problems.extend(f"schema differs: {diff}" for diff in diffs)
    return problems


def _config(connection: Connection | None) -> Config:
    # Programmatic configuration: no alembic.ini is needed where the hub runs.
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["connection"] = connection
    return config


def _is_legacy(conn: Connection) -> bool:
    names = set(inspect(conn).get_table_names())
    return "alembic_version" not in names and bool(names & set(full_metadata().tables))


def _adopt(conn: Connection, config: Config) -> None:
    """Stamp a store made by ``create_all`` as the baseline, if it has the baseline's shape."""
    inspector = inspect(conn)
    existing = set(inspector.get_table_names())
    baseline = _baseline_columns()
    problems: list[str] = []
    missing_tables = []
    for name, want in sorted(baseline.items()):
        if name not in existing:
            # The old hub created missing tables at every start; do the same,
            # but only with a definition that still equals the baseline's.
            table = full_metadata().tables.get(name)
            if table is None or {c.name for c in table.columns} != want:
                problems.append(f"table {name} is missing")
            else:
                missing_tables.append(table)
            continue
        have = {column["name"] for column in inspector.get_columns(name)}
        if want - have:
            problems.append(f"table {name} lacks column(s) {', '.join(sorted(want - have))}")
        if have - want:
            problems.append(f"table {name} has unknown column(s) {', '.join(sorted(have - want))}")
    if problems:
        raise StoreError(
            "the store was created without migration history and does not match schema "
            f"revision {BASELINE}, so it cannot be adopted: " + "; ".join(problems)
        )
    full_metadata().create_all(conn, tables=missing_tables)
    command.stamp(config, BASELINE)


@cache
def _baseline_columns() -> dict[str, frozenset[str]]:
    """Table name -> column names of the baseline revision, read off an in-memory SQLite."""
    scratch = create_engine("sqlite://")
    try:
        with scratch.begin() as conn:
            command.upgrade(_config(conn), BASELINE)
            inspector = inspect(conn)
            return {
                name: frozenset(column["name"] for column in inspector.get_columns(name))
                for name in inspector.get_table_names()
                if name != "alembic_version"
            }
    finally:
        scratch.dispose()
