"""Retention over a real store: old finished messages blanked then deleted, unfinished kept."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, insert, select

from engine.ai_timeouts import list_alerts
from engine.config import ChannelFile, HubSettings, RetentionPolicy, RetentionSettings
from engine.hub import Hub
from engine.loader import load_channels
from engine.retention import DEFAULT_SCOPE, RetentionJob, effective_policy
from engine.store.db import open_engine
from engine.store.group_commit import GroupCommitter
from engine.store.tables import duplicate_keys, messages, queue_entries
from tests.support.databases import store_url

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Engine]:
    yield from _engine("sqlite", tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    yield from _engine(request.param, tmp_path)


def _engine(backend: str, tmp_path: Path) -> Iterator[Engine]:
    for url in store_url(backend, tmp_path):
        engine = open_engine(url)
        yield engine
        engine.dispose()


def add_message(
    engine: Engine,
    channel: str,
    status: str,
    days_old: float,
    entries: tuple[str, ...] = ("SENT",),
    *,
    now: datetime = NOW,
) -> int:
    """A message received (and last touched) ``days_old`` days ago, with one entry per status."""
    stamp = now - timedelta(days=days_old)
    with engine.begin() as conn:
        message_id = conn.execute(
            insert(messages).values(
                channel=channel,
                status=status,
                received_at=stamp,
                updated_at=stamp,
                origin="test",
                message_type="ORM^O01",
                sender="EHR",
                control_id=f"C{days_old}",
                patient_id="PID-1",
                accession="ACC-1",
                raw="MSH|^~\\&|secret patient",
                transformed="transformed content",
                response="MSA|AA",
            )
        ).inserted_primary_key[0]
        for number, entry in enumerate(entries):
            conn.execute(
                insert(queue_entries).values(
                    message_id=message_id,
                    channel=channel,
                    destination=f"dest{number}",
                    status=entry,
                    payload="payload content",
                    attempts=1,
                    next_attempt_at=stamp,
                    created_at=stamp,
                    updated_at=stamp,
                    response="remote reply",
                )
            )
        conn.execute(
            insert(duplicate_keys).values(
                channel=channel,
                sender="EHR",
                control_id=f"K{message_id}",
                content_hash="h",
                message_id=message_id,
                received_at=stamp,
            )
        )
    return int(message_id)


def message(engine: Engine, message_id: int) -> dict[str, object] | None:
    with engine.connect() as conn:
        row = conn.execute(select(messages).where(messages.c.id == message_id)).mappings().first()
    return dict(row) if row is not None else None


def entries(engine: Engine, message_id: int) -> list[dict[str, object]]:
    with engine.connect() as conn:
        query = select(queue_entries).where(queue_entries.c.message_id == message_id)
        return [dict(r) for r in conn.execute(query).mappings()]


def duplicate_count(engine: Engine, message_id: int) -> int:
    with engine.connect() as conn:
        query = select(duplicate_keys).where(duplicate_keys.c.message_id == message_id)
        return len(conn.execute(query).all())


def is_intact(engine: Engine, message_id: int) -> bool:
    row = message(engine, message_id)
    return (
        row is not None
        and row["raw"] == "MSH|^~\\&|secret patient"
        and all(e["payload"] == "payload content" for e in entries(engine, message_id))
    )


def is_blanked(engine: Engine, message_id: int) -> bool:
    row = message(engine, message_id)
    assert row is not None, "the row was deleted, not blanked"
    content = (row["raw"], row["transformed"], row["response"])
    queued = [(e["payload"], e["response"]) for e in entries(engine, message_id)]
    return content == ("", None, None) and all(q == ("", None) for q in queued)


def run_job(
    engine: Engine,
    settings: RetentionSettings,
    channels: list[ChannelFile] | None = None,
) -> dict[str, tuple[int, int]]:
    committer = GroupCommitter(engine)
    committer.start()
    try:
        job = RetentionJob(committer, settings, lambda: channels or [], clock=lambda: NOW)
        counts = asyncio.run(job.run_once())
    finally:
        committer.stop()
    return {name: (c.content_blanked, c.deleted) for name, c in counts.items()}


def channel_file(name: str, retention: dict[str, object] | None) -> ChannelFile:
    data: dict[str, object] = {
        "name": name, "source": {"type": "memory"}, "destinations": [{"name": "d", "type": "x"}],
    }  # fmt: skip
    if retention is not None:
        data["retention"] = retention
    return ChannelFile.model_validate(data)


def test_old_finished_messages_are_blanked_then_deleted_unfinished_kept(any_store: Engine) -> None:
    db = any_store
    recent = add_message(db, "orders", "SENT", 2)
    to_blank = [add_message(db, "orders", "SENT", days) for days in (8, 9, 10, 20, 29)]
    to_delete = [
        add_message(db, "orders", "SENT", 31),
        add_message(db, "orders", "FILTERED", 40, entries=()),
        add_message(db, "orders", "SENT", 45, entries=("SENT", "SENT")),
    ]
    kept = [
        add_message(db, "orders", "ERROR", 40, entries=("ERROR",)),
        add_message(db, "orders", "QUEUED", 40, entries=("QUEUED",)),
        # A finished message with one delivery still open or failed is not finished.
        add_message(db, "orders", "SENT", 40, entries=("SENT", "QUEUED")),
        add_message(db, "orders", "SENT", 10, entries=("SENT", "ERROR")),
        # Received but never processed (the hub stopped): recovery resumes it.
        add_message(db, "orders", "RECEIVED", 40, entries=()),
        add_message(db, "orders", "TRANSFORMED", 40, entries=()),
    ]
    # Batches of 2: several transactions per pass, all of them counted.
    settings = RetentionSettings(content_days=7, metadata_days=30, batch_size=2)

    assert run_job(db, settings) == {DEFAULT_SCOPE: (5, 3)}

    assert is_intact(db, recent)
    for message_id in to_blank:
        assert is_blanked(db, message_id)
        row = message(db, message_id)
        assert row is not None
        assert (row["status"], row["accession"], row["message_type"]) == (
            "SENT",
            "ACC-1",
            "ORM^O01",
        )
        assert [e["status"] for e in entries(db, message_id)] == ["SENT"]
    for message_id in to_delete:
        assert message(db, message_id) is None
        assert entries(db, message_id) == []
        assert duplicate_count(db, message_id) == 0
    for message_id in kept:
        assert is_intact(db, message_id)
    # A second run finds nothing left to do.
    assert run_job(db, settings) == {DEFAULT_SCOPE: (0, 0)}


def test_channel_overrides_the_hub_defaults_key_by_key(store: Engine) -> None:
    default_old = add_message(store, "adt", "SENT", 10)
    gone_channel = add_message(store, "retired", "SENT", 10)
    kept_forever = add_message(store, "legal", "SENT", 400)
    short_deleted = add_message(store, "short", "SENT", 6)
    short_blanked = add_message(store, "short", "SENT", 3)
    settings = RetentionSettings(content_days=7, metadata_days=365)
    channels = [
        channel_file("adt", None),
        # Keeps content and rows for ever, whatever the hub says.
        channel_file("legal", {"content_days": None, "metadata_days": None}),
        # Shorter than the hub on both counts.
        channel_file("short", {"metadata_days": 5, "content_days": 2}),
    ]

    counts = run_job(store, settings, channels)

    # "legal" has nothing to prune: no run for it at all.
    assert counts == {DEFAULT_SCOPE: (2, 0), "short": (1, 1)}
    assert is_blanked(store, default_old)
    assert is_blanked(store, gone_channel)  # no longer configured: the hub defaults
    assert is_intact(store, kept_forever)
    assert message(store, short_deleted) is None
    assert is_blanked(store, short_blanked)


def test_a_key_left_out_of_the_channel_keeps_the_hub_value() -> None:
    default = RetentionSettings(content_days=7, metadata_days=365)
    assert effective_policy(None, default) == RetentionPolicy(content_days=7, metadata_days=365)
    only_rows = RetentionPolicy.model_validate({"metadata_days": 30})
    assert effective_policy(only_rows, default) == RetentionPolicy(content_days=7, metadata_days=30)
    forever = RetentionPolicy.model_validate({"content_days": None})
    assert effective_policy(forever, default) == RetentionPolicy(
        content_days=None, metadata_days=365
    )


def test_retention_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="keep_days"):
        channel_file("adt", {"keep_days": 3})
    with pytest.raises(ValidationError, match="greater than 0"):
        channel_file("adt", {"content_days": 0})
    settings = HubSettings.model_validate({"retention": {"content_days": 30}})
    assert settings.retention.metadata_days is None  # default: rows kept for ever
    assert HubSettings().retention.content_days is None  # default: nothing pruned


MEMORY_CHANNEL = """
name: pruned
source:
  type: memory
  instance: retention-src
destinations:
  - name: out
    type: memory
    instance: retention-out
retention:
  content_days: 7
"""


def test_the_hub_scheduler_runs_the_prune_and_alert_jobs(tmp_path: Path) -> None:
    channels = tmp_path / "channels"
    channels.mkdir()
    (channels / "pruned.yaml").write_text(MEMORY_CHANNEL)
    url = next(store_url("sqlite", tmp_path))
    engine = open_engine(url)
    now = datetime.now(UTC)
    old = add_message(engine, "pruned", "SENT", 30, now=now)
    young = add_message(engine, "pruned", "SENT", 1, now=now)
    # Waiting for two hours on a channel no longer deployed: a queue-age alert.
    add_message(engine, "retired", "QUEUED", 1 / 12, entries=("QUEUED",), now=now)
    engine.dispose()
    settings = HubSettings.model_validate(
        {
            "channels_dir": channels, "transforms_dir": REPO / "transforms",
            "data_dir": tmp_path / "var", "db_url": url, "dicom": {"port": 0},
            "admin": {"port": 0}, "retention": {"prune_every_minutes": 0.005},
            "alerts": {"check_every_minutes": 0.005},
        }
    )  # fmt: skip

    async def body() -> None:
        hub = Hub(settings, load_channels(channels))
        await hub.start()
        try:
            assert hub.scheduler is not None
            deadline = asyncio.get_running_loop().time() + 10
            while min(hub.scheduler.runs.values()) < 2:
                assert asyncio.get_running_loop().time() < deadline, "the job never ran"
                await asyncio.sleep(0.05)
        finally:
            await hub.stop()

    asyncio.run(body())
    engine = open_engine(url)
    try:
        assert is_blanked(engine, old)
        assert is_intact(engine, young)
        [alert] = list_alerts(engine)
        assert alert.kind == "queue_age"
        assert alert.message.startswith("retired/dest0: oldest queued entry waits 120 min")
    finally:
        engine.dispose()
