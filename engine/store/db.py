"""Open the store: SQLite (WAL, synchronous=FULL) by default, PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Executable, RowMapping, create_engine, event
from sqlalchemy.exc import SQLAlchemyError

from engine.errors import StoreError
from engine.store.migrate import upgrade_store

__all__ = ["is_sqlite", "open_engine", "read_rows"]


def is_sqlite(engine: Engine) -> bool:
    """True for the embedded SQLite backend."""
    return engine.dialect.name == "sqlite"


def open_engine(
    url: str, *, create_schema: bool = True, application_name: str | None = None
) -> Engine:
    """Create the SQLAlchemy engine for ``url`` and (by default) migrate it to the head schema.

    ``create_schema=False`` opens the store as it is (read-only tools).
    ``application_name`` names the connections on PostgreSQL (``pg_stat_activity``):
    a hub node uses ``meridian:<node id>``, so the nodes of a cluster can be listed.
    """
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        options = _engine_options(url)
        if application_name is not None and not url.startswith("sqlite"):
            options["connect_args"] = {"application_name": application_name}
        store = create_engine(url, **options)
        if is_sqlite(store):
            event.listen(store, "connect", _sqlite_pragmas)
        if create_schema:
            upgrade_store(store)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot open the message store: {exc.__class__.__name__}: {exc}") from exc
    return store


def read_rows(engine: Engine, query: Executable, what: str) -> list[RowMapping]:
    """Run a read on its own short connection; a database failure is a PHI-free StoreError."""
    try:
        with engine.connect() as conn:
            return list(conn.execute(query).mappings())
    except SQLAlchemyError as exc:
        raise StoreError(f"{what} read failed: {type(exc).__name__}") from exc


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Connections are used from the committer thread and pynetdicom's threads.
        return {"connect_args": {"check_same_thread": False, "timeout": 30}, "pool_size": 20}
    return {"pool_size": 20, "max_overflow": 10, "pool_pre_ping": True}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets modality queries read while the committer writes; FULL makes a
    # commit survive power loss, which is what an ACK promises.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
