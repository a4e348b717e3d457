"""Throw-away PostgreSQL databases for the benchmarks (the machine's server)."""

from __future__ import annotations

from contextlib import AbstractContextManager

from sqlalchemy import create_engine, text

from tests.support.databases import PG_ADMIN_URL, throwaway_database

__all__ = ["PG_ADMIN_URL", "fresh_database", "postgres_version"]


def fresh_database() -> AbstractContextManager[str]:
    """A throw-away PostgreSQL database (its URL), dropped afterwards."""
    return throwaway_database("meridian_bench")


def postgres_version() -> str:
    """The server's version line, e.g. ``PostgreSQL 15.8``."""
    admin = create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as conn:
            full = str(conn.execute(text("SELECT version()")).scalar_one())
    finally:
        admin.dispose()
    return " ".join(full.split()[:2])
