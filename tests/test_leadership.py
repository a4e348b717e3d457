"""Job leadership: with several nodes on one PostgreSQL store, periodic jobs run on one node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from engine.ai_timeouts import list_alerts
from engine.config import HubSettings
from engine.hub import Hub
from engine.leadership import JobLeadership, lock_key
from engine.loader import load_channels
from engine.store.db import open_engine
from tests.support.databases import postgres_database, store_url
from tests.test_retention import MEMORY_CHANNEL, REPO, add_message, is_blanked

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture
def pg(pg_url: str) -> Iterator[Engine]:
    engine = open_engine(pg_url)
    yield engine
    engine.dispose()


def nodes(url: str, count: int) -> list[Engine]:
    """One engine per simulated node (each node has its own connection pool)."""
    return [open_engine(url, create_schema=False) for _ in range(count)]


def test_the_lock_key_is_stable_and_distinct_per_group() -> None:
    assert lock_key("hub-jobs") == lock_key("hub-jobs")
    assert lock_key("hub-jobs") != lock_key("other-jobs")
    assert -(2**63) <= lock_key("hub-jobs") < 2**63


def test_of_two_nodes_on_postgresql_exactly_one_leads(pg: Engine, pg_url: str) -> None:
    first_engine, second_engine = nodes(pg_url, 2)
    first, second = JobLeadership(first_engine), JobLeadership(second_engine)
    try:
        assert first.check() is True
        assert second.check() is False
        # Asking again changes nothing: the leader keeps it, the other keeps waiting.
        assert [first.check(), second.check(), first.check()] == [True, False, True]
        assert asyncio.run(second.is_leader()) is False
    finally:
        asyncio.run(first.release())
        asyncio.run(second.release())
        first_engine.dispose()
        second_engine.dispose()


def test_a_stopped_leader_hands_over_at_the_others_next_check(pg_url: str, pg: Engine) -> None:
    first_engine, second_engine = nodes(pg_url, 2)
    first, second = JobLeadership(first_engine), JobLeadership(second_engine)
    try:
        assert first.check() and not second.check()
        asyncio.run(first.release())
        assert first.check() is False, "a released node never leads again"
        assert second.check() is True
    finally:
        asyncio.run(second.release())
        first_engine.dispose()
        second_engine.dispose()


def test_when_the_leaders_connection_dies_another_node_takes_over(pg_url: str, pg: Engine) -> None:
    first_engine, second_engine = nodes(pg_url, 2)
    first, second = JobLeadership(first_engine), JobLeadership(second_engine)
    try:
        assert first.check() and not second.check()
        # Kill the leader's session from outside, as a crashed node or a cut network would.
        with pg.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND granted"
                    " AND ((classid::bigint << 32) | objid::bigint) = :key"
                    # pg_locks spans the server: other test databases hold this key too.
                    " AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                ),
                {"key": first.key},
            ).all()
            conn.commit()
        assert killed == [(True,)]
        # pg_terminate_backend only signals: the session ends (and its lock goes) a moment
        # later. The other node's periodic checks take over then.
        deadline = time.monotonic() + 10
        while not second.check():
            assert time.monotonic() < deadline, "PostgreSQL released the dead session's lock"
            time.sleep(0.05)
        assert first.check() is False, "the old leader notices it lost the lock"
    finally:
        asyncio.run(first.release())
        asyncio.run(second.release())
        first_engine.dispose()
        second_engine.dispose()


def test_on_sqlite_every_instance_leads(tmp_path: Path) -> None:
    """One SQLite file serves one node, so there is nothing to elect: each instance leads."""
    url = next(store_url("sqlite", tmp_path))
    engine = open_engine(url)
    try:
        first, second = JobLeadership(engine), JobLeadership(engine)
        assert first.check() and second.check()
        assert asyncio.run(first.is_leader()) and asyncio.run(second.is_leader())
        asyncio.run(first.release())
        assert not first.check() and second.check()
    finally:
        engine.dispose()


def test_two_hubs_on_one_store_run_the_scheduled_jobs_on_one_node(
    tmp_path: Path, pg_url: str, pg: Engine
) -> None:
    channels = tmp_path / "channels"
    channels.mkdir()
    (channels / "pruned.yaml").write_text(MEMORY_CHANNEL)
    now = datetime.now(UTC)
    old = add_message(pg, "pruned", "SENT", 30, now=now)
    # Waiting for two hours on a channel no longer deployed: a queue-age alert.
    add_message(pg, "retired", "QUEUED", 1 / 12, entries=("QUEUED",), now=now)

    def settings(node: str) -> HubSettings:
        return HubSettings.model_validate(
            {
                "channels_dir": channels, "transforms_dir": REPO / "transforms",
                "data_dir": tmp_path / node, "db_url": pg_url, "dicom": {"port": 0},
                "admin": {"port": 0}, "retention": {"prune_every_minutes": 0.005},
                "alerts": {"check_every_minutes": 0.005},
            }
        )  # fmt: skip

    async def body() -> tuple[dict[str, int], dict[str, int]]:
        first = Hub(settings("node-a"), load_channels(channels))
        await first.start()
        second = Hub(settings("node-b"), load_channels(channels))
        await second.start()
        try:
            assert first.scheduler is not None and second.scheduler is not None
            deadline = asyncio.get_running_loop().time() + 15
            while min(second.scheduler.skipped.values()) < 3:
                assert asyncio.get_running_loop().time() < deadline, "node b never ticked"
                await asyncio.sleep(0.05)
            assert first.leadership is not None and second.leadership is not None
            assert first.leadership.leading and not second.leadership.leading
            return dict(first.scheduler.runs), dict(second.scheduler.runs)
        finally:
            await second.stop()
            await first.stop()

    first_runs, second_runs = asyncio.run(body())
    assert min(first_runs.values()) >= 1, "the leader ran both jobs"
    assert second_runs == {"retention": 0, "alerts": 0}, "the other node ran neither"
    assert is_blanked(pg, old)
    [alert] = list_alerts(pg)
    assert alert.kind == "queue_age"
