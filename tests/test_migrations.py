"""Store schema migrations: every store is built by Alembic, old stores are adopted.

Each test runs on SQLite and on a fresh PostgreSQL database (tests/support/databases.py).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, insert, inspect, select, text

from engine.cli import main
from engine.errors import StoreError
from engine.store import migrate
from engine.store.db import open_engine
from engine.store.migrate import (
    BASELINE,
    check_store,
    current_revision,
    full_metadata,
    head_revision,
)
from tests.support.databases import store_url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from store_url(request.param, tmp_path)


def _diffs(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, full_metadata()))


def _legacy_store(url: str) -> Engine:
    """A store as the pre-migration hub left it: the baseline's tables, no history.

    (The pre-migration hub's ``create_all`` made exactly the baseline revision's
    schema; the baseline is built and its history row dropped.)
    """
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option(
            "script_location", str(Path(migrate.__file__).with_name("migrations"))
        )
        config.attributes["connection"] = conn
        command.upgrade(config, BASELINE)
        conn.execute(text("DROP TABLE alembic_version"))
    return engine


def test_an_empty_store_is_migrated_to_exactly_the_metadata(url: str) -> None:
    # open_engine is how the hub and every store fixture of the suite build a store.
    engine = open_engine(url)
    try:
        assert current_revision(engine) == head_revision()
        assert _diffs(engine) == []
        assert check_store(engine) == []
    finally:
        engine.dispose()


def test_opening_a_migrated_store_again_changes_nothing(url: str) -> None:
    open_engine(url).dispose()
    engine = open_engine(url)
    try:
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    finally:
        engine.dispose()


def test_db_commands_upgrade_report_and_check_the_revision(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "current", "--db", url]) == 0
    assert capsys.readouterr().out.strip() == f"none (head is {head_revision()})"
    assert main(["db", "check", "--db", url]) == 1
    assert f"head is {head_revision()}" in capsys.readouterr().out

    assert main(["db", "upgrade", "--db", url]) == 0
    capsys.readouterr()
    assert main(["db", "current", "--db", url]) == 0
    assert capsys.readouterr().out.strip() == f"{head_revision()} (head)"
    assert main(["db", "check", "--db", url]) == 0
    assert "matches" in capsys.readouterr().out


def test_a_store_made_by_create_all_is_adopted_with_its_data(url: str) -> None:
    legacy = _legacy_store(url)
    users = full_metadata().tables["admin_users"]
    with legacy.begin() as conn:
        conn.execute(
            insert(users).values(
                username="ops",
                password_hash="x",
                role="admin",
                can_view_phi=False,
                created_at=datetime.now(UTC),
                disabled=False,
            )
        )
    legacy.dispose()

    engine = open_engine(url)
    try:
        assert current_revision(engine) == head_revision()
        assert _diffs(engine) == []
        with engine.connect() as conn:
            assert conn.execute(select(users.c.username)).scalars().all() == ["ops"]
    finally:
        engine.dispose()


def test_a_create_all_store_missing_a_later_table_gets_it_and_is_adopted(url: str) -> None:
    legacy = _legacy_store(url)
    with legacy.begin() as conn:
        conn.execute(text("DROP TABLE alert_checks"))
    legacy.dispose()

    engine = open_engine(url)
    try:
        assert current_revision(engine) == head_revision()
        assert _diffs(engine) == []
    finally:
        engine.dispose()


def test_a_store_that_differs_from_the_baseline_is_refused_untouched(url: str) -> None:
    legacy = _legacy_store(url)
    with legacy.begin() as conn:
        conn.execute(text("ALTER TABLE messages ADD COLUMN site_note VARCHAR(20)"))
    legacy.dispose()

    with pytest.raises(StoreError, match=r"table messages has unknown column\(s\) site_note"):
        open_engine(url)
    check = create_engine(url)
    try:
        assert "alembic_version" not in inspect(check).get_table_names()
    finally:
        check.dispose()


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    yield from store_url("postgresql", tmp_path)


def test_two_nodes_upgrading_a_postgresql_store_at_once_both_succeed(pg_url: str) -> None:
    url = pg_url
    start = threading.Barrier(2)
    results: list[object] = []

    def node() -> None:
        start.wait()
        try:
            open_engine(url).dispose()
            results.append("ok")
        except Exception as exc:  # collected: the assertion below shows it
            results.append(exc)

    threads = [threading.Thread(target=node) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == ["ok", "ok"]
    engine = open_engine(url)
    try:
        assert current_revision(engine) == head_revision()
        assert _diffs(engine) == []
    finally:
        engine.dispose()


def test_the_migrated_metadata_has_every_table_of_every_module() -> None:
    # In a clean interpreter: importing every module must not register a table
    # the migrations (full_metadata) do not know about.
    script = """
import importlib, pkgutil
from engine.store.migrate import full_metadata
known = set(full_metadata().tables)
for package in ("engine", "admin", "connectors"):
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        if ".migrations" not in info.name:
            importlib.import_module(info.name)
print(sorted(set(full_metadata().tables) - known))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"
