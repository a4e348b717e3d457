"""A store for AI orchestration tests: one database per test module and backend, emptied per test.

Creating a PostgreSQL database per test would dominate the run time; the
tables these tests write are emptied instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, delete

# Imported for their tables: each registers them on the shared metadata open_engine creates.
import engine.ai_timeouts
import engine.audit
import engine.reading_tables
from engine.store.db import open_engine
from engine.worklist import worklist_items
from tests.support.databases import store_url

__all__ = ["clear", "module_engine"]


def module_engine(backend: str, directory: Path) -> Iterator[Engine]:
    """An engine on a fresh store of ``backend`` with the whole schema."""
    for url in store_url(backend, directory):
        store = open_engine(url)
        yield store
        store.dispose()


def clear(store: Engine) -> None:
    """Empty the tables the AI orchestration writes (and the MWL the tests fill)."""
    tables = (
        engine.audit.audit_events,
        engine.ai_timeouts.alerts,
        engine.reading_tables.reading_items,
        worklist_items,
    )
    with store.begin() as conn:
        for table in tables:
            conn.execute(delete(table))
