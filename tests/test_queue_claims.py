"""Queue claims across nodes on one PostgreSQL store (engine.store.queue_claims).

Each "node" here is a QueueClaimer with its own id and its own connection
pool on a fresh PostgreSQL database: the claims go through real row locks
(``FOR UPDATE SKIP LOCKED``) and real leases, as between hub processes.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select, update

from engine.errors import IllegalTransition
from engine.states import MessageStatus
from engine.store.db import open_engine
from engine.store.messages import (
    InboundRecord,
    QueueEntry,
    QueueItem,
    insert_inbound,
    mark_retry,
    mark_sent,
    now,
)
from engine.store.queue_claims import QueueClaimer
from engine.store.tables import queue_entries
from tests.support.databases import postgres_database

CHANNEL, DESTINATION = "orders", "ris"


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture
def store(pg_url: str) -> Iterator[Engine]:
    engine = open_engine(pg_url)
    yield engine
    engine.dispose()


def node_engines(url: str, count: int) -> list[Engine]:
    """One engine (pool) per node, as separate processes would have."""
    return [open_engine(url) for _ in range(count)]


def queue(store: Engine, keys: list[str | None]) -> None:
    """One message per key in ``keys`` (in that order), each with one queue entry."""
    with store.begin() as conn:
        for index, key in enumerate(keys):
            record = InboundRecord(
                channel=CHANNEL,
                origin="test",
                raw=f"message {index}",
                status=MessageStatus.QUEUED,
                queue=[QueueItem(DESTINATION, f"payload {index}", key)],
            )
            insert_inbound(record, duplicate_control=False)(conn)


def sent(engine: Engine, entry: QueueEntry) -> None:
    with engine.begin() as conn:
        mark_sent(conn, entry, "AA")


def test_a_claimed_head_is_not_claimed_by_another_node(store: Engine) -> None:
    queue(store, ["p1", "p1", "p2"])
    a, b = QueueClaimer("node-a", 30), QueueClaimer("node-b", 30)
    first = a.claim_heads(store, CHANNEL, DESTINATION, 10).due
    assert [e.payload for e in first] == ["payload 0", "payload 2"]
    assert {e.claimed_by for e in first} == {"node-a"}
    # node-b sees both keys held: p1's second entry is not a head, p2's head is a's.
    assert b.claim_heads(store, CHANNEL, DESTINATION, 10).due == []


def test_the_next_entry_of_a_key_is_claimable_only_once_its_head_is_sent(store: Engine) -> None:
    queue(store, ["p1", "p1"])
    a, b = QueueClaimer("node-a", 30), QueueClaimer("node-b", 30)
    [head] = a.claim_heads(store, CHANNEL, DESTINATION, 10).due
    assert b.claim_key_head(store, CHANNEL, DESTINATION, "p1") is None
    sent(store, head)
    following = b.claim_key_head(store, CHANNEL, DESTINATION, "p1")
    assert following is not None and following.payload == "payload 1"
    assert following.claimed_by == "node-b"


def test_one_lane_owns_the_whole_destination_while_its_run_is_out(store: Engine) -> None:
    queue(store, ["p1", "p2", "p3"])
    a, b = QueueClaimer("node-a", 30), QueueClaimer("node-b", 30)
    run = a.claim_run(store, CHANNEL, DESTINATION, 2)
    assert run is not None
    assert [e.payload for e in run] == ["payload 0", "payload 1"]
    assert b.claim_run(store, CHANNEL, DESTINATION, 10) is None, "node-a delivers it"
    sent(store, run[0])
    # The new head (payload 1) is still node-a's: node-b must not jump ahead of it.
    assert b.claim_run(store, CHANNEL, DESTINATION, 10) is None
    sent(store, run[1])
    assert [e.payload for e in b.claim_run(store, CHANNEL, DESTINATION, 10) or []] == ["payload 2"]
    assert b.claim_run(store, CHANNEL, "nothing-here", 10) == [], "empty, not held"


def test_a_dead_nodes_claims_are_taken_over_after_the_lease(store: Engine) -> None:
    queue(store, ["p1", "p2"])
    dead, alive = QueueClaimer("node-a", 1), QueueClaimer("node-b", 1)
    claimed = dead.claim_run(store, CHANNEL, DESTINATION, 10)
    assert claimed is not None and len(claimed) == 2
    assert alive.claim_run(store, CHANNEL, DESTINATION, 10) is None
    time.sleep(1.2)  # node-a never renews: it is dead
    taken = alive.claim_run(store, CHANNEL, DESTINATION, 10)
    assert taken is not None
    assert [e.payload for e in taken] == ["payload 0", "payload 1"]
    # node-a wakes up and tries to mark what is now node-b's: refused.
    with pytest.raises(IllegalTransition, match="no longer claimed by node-a"):
        sent(store, claimed[0])
    sent(store, taken[0])


def test_renewing_keeps_a_live_nodes_claims(store: Engine) -> None:
    queue(store, ["p1"])
    a, b = QueueClaimer("node-a", 1), QueueClaimer("node-b", 1)
    [head] = a.claim_heads(store, CHANNEL, DESTINATION, 10).due
    for _ in range(3):
        time.sleep(0.5)
        assert a.renew(store) == 1
        assert b.claim_heads(store, CHANNEL, DESTINATION, 10).due == []
    sent(store, head)


def test_a_retry_and_a_clean_stop_give_the_claim_back(store: Engine) -> None:
    queue(store, ["p1", "p2"])
    a, b = QueueClaimer("node-a", 30), QueueClaimer("node-b", 30)
    first, second = a.claim_heads(store, CHANNEL, DESTINATION, 10).due
    with store.begin() as conn:
        mark_retry(conn, first, now(), "peer down")
    assert a.release(store, CHANNEL, DESTINATION) == 1  # the other one
    taken = b.claim_heads(store, CHANNEL, DESTINATION, 10).due
    assert {e.id for e in taken} == {first.id, second.id}


def test_a_head_not_due_is_returned_unclaimed_for_the_wait(store: Engine) -> None:
    queue(store, ["p1"])
    later = now().replace(year=now().year + 1)
    with store.begin() as conn:
        conn.execute(update(queue_entries).values(next_attempt_at=later))
    a = QueueClaimer("node-a", 30)
    [head] = a.claim_run(store, CHANNEL, DESTINATION, 10) or []
    assert head.claimed_by is None and head.next_attempt_at == later
    heads = a.claim_heads(store, CHANNEL, DESTINATION, 10)
    assert heads.due == [] and heads.next_attempt_at == later


def test_a_stopped_destination_gives_back_only_its_own_claims(store: Engine) -> None:
    queue(store, ["p1"])
    with store.begin() as conn:  # a second destination of the same message stream
        record = InboundRecord(
            channel=CHANNEL,
            origin="test",
            raw="other",
            status=MessageStatus.QUEUED,
            queue=[QueueItem("pacs", "other payload", "p1")],
        )
        insert_inbound(record, duplicate_control=False)(conn)
    a, b = QueueClaimer("node-a", 30), QueueClaimer("node-b", 30)
    assert len(a.claim_run(store, CHANNEL, DESTINATION, 10) or []) == 1
    assert len(a.claim_run(store, CHANNEL, "pacs", 10) or []) == 1
    assert a.release(store, CHANNEL, DESTINATION) == 1
    assert len(b.claim_run(store, CHANNEL, DESTINATION, 10) or []) == 1
    assert b.claim_run(store, CHANNEL, "pacs", 10) is None, "still node-a's"


@pytest.mark.parametrize("mode", ["keyed", "run"])
def test_three_racing_nodes_deliver_each_entry_once_in_order_per_key(
    pg_url: str, store: Engine, mode: str
) -> None:
    """Six claimers (two per connection pool) claim and deliver one backlog at full speed."""
    keys = [f"p{i % 7}" for i in range(420)]
    queue(store, keys)
    deliveries: list[tuple[str | None, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def lane(claimer: QueueClaimer, engine: Engine) -> None:
        while not stop.is_set():
            if mode == "keyed":
                batch = claimer.claim_heads(engine, CHANNEL, DESTINATION, 2).due
            else:
                batch = claimer.claim_run(engine, CHANNEL, DESTINATION, 5) or []
            for entry in batch:
                with lock:  # "delivered": the receiver sees it now
                    deliveries.append((entry.order_key, entry.id))
                sent(engine, entry)
            if not batch:
                time.sleep(0.001)

    engines = node_engines(pg_url, 3)
    # Two claimers per node's pool: within a node the lanes also share an in-memory
    # key set, which this test leaves out, so each racing thread is a node of its own.
    threads = [
        threading.Thread(target=lane, args=(QueueClaimer(f"node-{n}{i}", 30), engine))
        for n, engine in zip("abc", engines, strict=True)
        for i in range(2)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while len(deliveries) < len(keys) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()

    ids = [entry_id for _, entry_id in deliveries]
    assert len(ids) == len(keys) and len(set(ids)) == len(keys), "each entry exactly once"
    for key, group in itertools.groupby(
        sorted(deliveries, key=lambda d: str(d[0])), lambda d: d[0]
    ):
        in_order = [entry_id for k, entry_id in deliveries if k == key]
        assert in_order == sorted(in_order), f"key {key} out of order"
        assert len(list(group)) == 60
    if mode == "run":
        assert ids == sorted(ids), "one lane: the total arrival order"
    with store.connect() as conn:
        left = conn.execute(
            select(queue_entries.c.id).where(queue_entries.c.status != "SENT")
        ).all()
    assert left == []


def test_the_cluster_view_lists_live_nodes_the_leader_and_claims(pg_url: str) -> None:
    from engine.cluster_nodes import cluster_view
    from engine.leadership import JobLeadership

    a = open_engine(pg_url, application_name="meridian:node-a")
    b = open_engine(pg_url, application_name="meridian:node-b")
    gone = open_engine(pg_url, application_name="meridian:node-c")
    leadership = JobLeadership(b)
    try:
        assert leadership.check()
        queue(a, ["p1", "p2"])
        QueueClaimer("node-c", 30).claim_heads(gone, CHANNEL, DESTINATION, 1)
        gone.dispose()  # node-c dies: its connections close, its claim stays until the lease
        with a.connect():
            view = cluster_view(a, "node-a")
        assert view["this_node"] == "node-a"
        nodes = {n["node"]: n for n in view["nodes"]}
        assert set(nodes) == {"node-a", "node-b"}
        assert nodes["node-b"]["leader"] and not nodes["node-a"]["leader"]
        assert view["claims"] == [{"node": "node-c", "entries": 1, "expired": False}]
    finally:
        asyncio.run(leadership.release())
        a.dispose()
        b.dispose()
