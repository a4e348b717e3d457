"""Throw-away PostgreSQL databases for the benchmarks (the machine's server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

__all__ = ["PG_ADMIN_URL", "fresh_database", "postgres_version"]

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextmanager
def fresh_database() -> Iterator[str]:
    """A throw-away PostgreSQL database (its URL), dropped afterwards."""
    name = f"meridian_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_version() -> str:
    """The server's version line, e.g. ``PostgreSQL 15.8``."""
    admin = create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as conn:
            full = str(conn.execute(text("SELECT version()")).scalar_one())
    finally:
        admin.dispose()
    return " ".join(full.split()[:2])
