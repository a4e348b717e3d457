"""Store URLs for tests: a fresh SQLite file, or a fresh PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextmanager
def throwaway_database(prefix: str = "meridian_test") -> Iterator[str]:
    """Create a PostgreSQL database named ``<prefix>_<random>``, yield its URL, drop it after.

    Raises OperationalError when the server is not reachable.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def postgres_database() -> Iterator[str]:
    """A throw-away PostgreSQL database for a test (skipped if the server is not reachable)."""
    with ExitStack() as stack:
        try:
            url = stack.enter_context(throwaway_database())
        except OperationalError as exc:
            pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432 ({exc.__class__.__name__})")
        yield url


def store_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh store URL of ``backend`` ("sqlite" or "postgresql")."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'var' / 'meridian.db'}"
    else:
        yield from postgres_database()
