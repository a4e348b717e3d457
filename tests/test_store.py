"""Message store: group commit, duplicate keys, the state machine of a queue entry."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, func, select, text

from engine.config import RetryPolicy
from engine.errors import IllegalTransition, StoreError
from engine.queue import backoff_delay
from engine.states import MessageStatus, check_transition
from engine.store.db import open_engine
from engine.store.group_commit import GroupCommitter
from engine.store.messages import (
    InboundRecord,
    QueueItem,
    insert_inbound,
    mark_error,
    mark_sent,
    pending_entries,
)
from engine.store.tables import messages


@pytest.fixture
def store(tmp_path: Path) -> Engine:
    return open_engine(f"sqlite:///{tmp_path / 'store.db'}")


@pytest.fixture
def committer(store: Engine) -> GroupCommitter:
    writer = GroupCommitter(store)
    writer.start()
    yield writer  # type: ignore[misc]
    writer.stop()


def record(control_id: str, raw: str = "MSH|...", queue: int = 1) -> InboundRecord:
    return InboundRecord(
        channel="c",
        origin="test",
        raw=raw,
        status=MessageStatus.QUEUED,
        response="ACK",
        sender="RIS^HOSP",
        control_id=control_id,
        content_hash=f"h-{raw}",
        queue=[QueueItem("d", f"payload-{control_id}-{i}") for i in range(queue)],
    )


def test_sqlite_store_is_wal_with_full_sync(store: Engine) -> None:
    with store.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL


def test_concurrent_writes_share_commits(committer: GroupCommitter, store: Engine) -> None:
    def writer(start: int) -> None:
        for i in range(start, start + 50):
            committer.run(insert_inbound(record(f"M{i}", raw=f"r{i}"), duplicate_control=True))

    threads = [threading.Thread(target=writer, args=(n * 50,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(messages)).scalar() == 400
    assert committer.operations == 400
    assert committer.commits < 400, "several writers' operations must share a commit"


def test_a_failing_operation_does_not_sink_its_batch(committer: GroupCommitter) -> None:
    def bad(conn: Connection) -> None:
        conn.execute(text("INSERT INTO no_such_table VALUES (1)"))

    futures = [
        committer.submit(insert_inbound(record(f"G{i}", raw=f"g{i}"), duplicate_control=True))
        for i in range(5)
    ]
    failing = committer.submit(bad)
    futures += [committer.submit(insert_inbound(record("G9", raw="g9"), duplicate_control=True))]
    assert all(f.result().message_id > 0 for f in futures)
    with pytest.raises(StoreError):
        failing.result()


def test_exact_resend_returns_the_first_answer(committer: GroupCommitter) -> None:
    first = committer.run(insert_inbound(record("D1", raw="same"), duplicate_control=True))
    again = committer.run(insert_inbound(record("D1", raw="same"), duplicate_control=True))
    assert again.duplicate and again.message_id == first.message_id
    assert again.response == "ACK"


def test_queue_entry_cannot_be_finished_twice(committer: GroupCommitter, store: Engine) -> None:
    committer.run(insert_inbound(record("Q1", queue=2), duplicate_control=False))
    first, second = pending_entries(store, "c", "d", 10)
    committer.run(lambda conn: mark_sent(conn, first, "ok"))
    with pytest.raises(IllegalTransition):
        committer.run(lambda conn: mark_error(conn, first, "late"))
    committer.run(lambda conn: mark_error(conn, second, "refused"))
    with store.connect() as conn:
        status = conn.execute(select(messages.c.status)).scalar()
    assert status == "ERROR", "a message with a failed copy is ERROR once nothing is queued"


def test_state_machine_refuses_illegal_moves() -> None:
    assert check_transition(MessageStatus.RECEIVED, MessageStatus.TRANSFORMED)
    with pytest.raises(IllegalTransition):
        check_transition(MessageStatus.FILTERED, MessageStatus.SENT)
    with pytest.raises(IllegalTransition):
        check_transition(MessageStatus.RECEIVED, MessageStatus.SENT)


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(initial_backoff_seconds=1, multiplier=2, max_backoff_seconds=10, jitter=0)
    assert [backoff_delay(policy, n) for n in (1, 2, 3, 4, 5, 9)] == [1, 2, 4, 8, 10, 10]
    jittered = RetryPolicy(initial_backoff_seconds=4, jitter=0.25)
    delays = {backoff_delay(jittered, 1, random.Random(seed)) for seed in range(20)}
    assert all(3 <= d <= 5 for d in delays) and len(delays) > 1


def test_a_cancelled_waiter_neither_gets_its_write_nor_stops_the_writer(
    store: Engine, committer: GroupCommitter
) -> None:
    gate = threading.Event()
    blocker = committer.submit(lambda conn: gate.wait(5))  # holds the writer in a batch
    cancelled = committer.submit(insert_inbound(record("C1", raw="c1"), duplicate_control=True))
    assert cancelled.cancel()
    gate.set()
    blocker.result(timeout=5)
    later = committer.submit(insert_inbound(record("C2", raw="c2"), duplicate_control=True))
    after = later.result(timeout=5)  # a dead writer would never answer
    assert after.message_id > 0, "the writer is still alive"
    with store.connect() as conn:
        controls = [row[0] for row in conn.execute(select(messages.c.control_id))]
    assert controls == ["C2"]
