"""The engine with in-memory connectors: queueing, retry, ordering, filters, duplicates.

The in-memory source and destination stand in for network peers here so the
engine's own rules can be driven precisely (a destination switched down and
up again); the network connectors have their own tests against real peers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from connectors.memory import MEMORY_DESTINATIONS, MEMORY_SOURCES
from engine.config import HubSettings
from engine.hub import Hub
from engine.loader import load_channels
from tests.support.databases import store_url
from tests.support.orders import orm

CHANNEL = """
name: memory-orders
inbound:
  accept_message_types: [ORM^O01]
source:
  type: memory
  instance: {name}
filters:
  - name: only new orders or changes
    when: msg.seg("ORC")["1"] in ("NW", "XO")
destinations:
  - name: first
    type: memory
    instance: {name}-first
    retry:
      initial_backoff_seconds: 0.05
      max_backoff_seconds: 0.2
  - name: second
    type: memory
    instance: {name}-second
"""

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from store_url(request.param, tmp_path)


def run(
    coro_factory: Callable[[Hub], object],
    tmp_path: Path,
    name: str,
    db_url: str,
    *,
    extra_only: bool = False,
) -> None:
    """Start a hub with the memory channel on the store ``db_url``, run the body, stop it.

    With ``extra_only`` the test has written its own channel files already.
    """
    channels = tmp_path / "channels"
    if not extra_only:
        channels.mkdir()
        (channels / "memory.yaml").write_text(CHANNEL.format(name=name))
    settings = HubSettings.model_validate(
        {
            "channels_dir": channels,
            "transforms_dir": REPO / "transforms",
            "data_dir": tmp_path / "var",
            "db_url": db_url,
            "dicom": {"port": 0},
            "admin": {"port": 0},
        }
    )

    async def body() -> None:
        hub = Hub(settings, load_channels(channels))
        await hub.start()
        try:
            await coro_factory(hub)  # type: ignore[misc]
        finally:
            await hub.stop()

    asyncio.run(body())


async def inject(name: str, message: str) -> str:
    reply = await MEMORY_SOURCES[name].inject(message.encode())
    assert reply is not None
    return reply.decode()


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def statuses(db_url: str) -> list[str]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(text("SELECT status FROM messages ORDER BY id"))]
    finally:
        engine.dispose()


def test_destination_down_then_up_delivers_everything_in_order(tmp_path: Path, db_url: str) -> None:
    async def body(hub: Hub) -> None:
        first = MEMORY_DESTINATIONS["down-first"]
        first.down = True
        for i in range(5):
            assert "MSA|AA" in await inject("down", orm(placer=f"D{i}", accession=f"AD{i}"))
        await until(lambda: first.attempts >= 3)
        assert first.received == []
        second = MEMORY_DESTINATIONS["down-second"]
        # The second destination has its own worker: it gets everything while the first
        # is still down (waited for, not asserted at once: the two workers run apart).
        await until(lambda: len(second.received) == 5)
        assert first.received == [], "one destination down never blocks another"
        first.down = False
        await until(lambda: len(first.received) == 5)
        placers = [payload.split("ORC|NW|")[1].split("|")[0] for payload in first.received]
        assert placers == [f"D{i}" for i in range(5)], "delivered in arrival order"
        await until(lambda: statuses(db_url) == ["SENT"] * 5)

    run(body, tmp_path, "down", db_url)


def test_refused_message_is_marked_error_and_the_queue_moves_on(
    tmp_path: Path, db_url: str
) -> None:
    async def body(hub: Hub) -> None:
        first = MEMORY_DESTINATIONS["refuse-first"]
        first.refuse = True
        await inject("refuse", orm(placer="R1", accession="AR1"))
        await until(lambda: statuses(db_url) == ["ERROR"])
        first.refuse = False
        await inject("refuse", orm(placer="R2", accession="AR2"))
        await until(lambda: len(first.received) == 1)
        await until(lambda: statuses(db_url) == ["ERROR", "SENT"])

    run(body, tmp_path, "refuse", db_url)


def test_filtered_message_is_acked_and_not_delivered(tmp_path: Path, db_url: str) -> None:
    async def body(hub: Hub) -> None:
        reply = await inject("filter", orm(control="CA", placer="F1", accession="AF1"))
        assert "MSA|AA" in reply
        assert statuses(db_url) == ["FILTERED"]
        await asyncio.sleep(0.2)
        assert MEMORY_DESTINATIONS["filter-first"].received == []

    run(body, tmp_path, "filter", db_url)


def test_reused_control_id_with_new_content_is_not_a_duplicate(tmp_path: Path, db_url: str) -> None:
    async def body(hub: Hub) -> None:
        first = orm(placer="U1", accession="AU1", mcid="SAME")
        again = orm(placer="U2", accession="AU2", mcid="SAME")
        await inject("dup", first)
        await inject("dup", first)
        await inject("dup", again)
        await until(lambda: len(MEMORY_DESTINATIONS["dup-first"].received) == 2)
        assert len(statuses(db_url)) == 2, "the exact resend is not stored again"

    run(body, tmp_path, "dup", db_url)


def test_rejected_type_is_stored_as_error_with_ar(tmp_path: Path, db_url: str) -> None:
    async def body(hub: Hub) -> None:
        reply = await inject("rej", orm(placer="X1").replace("ORM^O01", "ORU^R01"))
        assert "MSA|AR" in reply
        assert statuses(db_url) == ["ERROR"]

    run(body, tmp_path, "rej", db_url)


FORWARDING = """
name: front
source: {{type: memory, instance: {name}-front}}
destinations:
  - name: onward
    type: channel
    channel: back
"""

BACK = """
name: back
source: {{type: memory, instance: {name}-back}}
destinations:
  - name: sink
    type: memory
    instance: {name}-sink
"""


def test_channel_destination_forwards_to_another_channel(tmp_path: Path, db_url: str) -> None:
    (tmp_path / "channels").mkdir()
    (tmp_path / "channels" / "back.yaml").write_text(BACK.format(name="fwd"))
    (tmp_path / "channels" / "front.yaml").write_text(FORWARDING.format(name="fwd"))

    async def body(hub: Hub) -> None:
        reply = await inject("fwd-front", orm(placer="FW1", accession="AFW1"))
        assert "MSA|AA" in reply
        sink = MEMORY_DESTINATIONS["fwd-sink"]
        await until(lambda: len(sink.received) == 1)
        assert "ORC|NW|FW1|" in sink.received[0]

    run(body, tmp_path, "memory-unused", db_url, extra_only=True)


STUDY_ROUTING = """
name: study-routing
inbound:
  data_type: dicom-study
source: {{type: memory, instance: {name}-in}}
destinations:
  - name: from-ct1
    type: memory
    instance: {name}-ct1
    filters: [{{name: sent by CT1, when: 'batch.calling_aet == "CT1"'}}]
  - name: head-procedures
    type: memory
    instance: {name}-head
    filters: [{{name: CT head procedure, when: 'study.ProcedureCode == "CTHEAD"'}}]
  - name: mornings
    type: memory
    instance: {name}-morning
    filters: [{{name: before noon, when: "now.hour < 12"}}]
"""


def queued_for(db_url: str, destination: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            query = text("SELECT count(*) FROM queue_entries WHERE destination = :d")
            return int(conn.execute(query, {"d": destination}).scalar_one())
    finally:
        engine.dispose()


def study_batch(calling_aet: str, procedure: str) -> str:
    from engine.study_batch import InstanceRef, StudyBatch

    ref = InstanceRef(sop_instance_uid="1.2.3.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                      series_instance_uid="1.2.3.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                      path="/nonexistent/1.dcm")  # fmt: skip
    return StudyBatch(
        study_instance_uid=f"1.2.3.{calling_aet}.{procedure}", batch=1, calling_aet=calling_aet,
        called_aet="MERIDIAN", instances=[ref],
        metadata={"Modality": "CT", "ProcedureCode": procedure},
    ).model_dump_json()  # fmt: skip


def test_studies_are_routed_by_source_ae_procedure_and_time_of_day(
    tmp_path: Path, db_url: str
) -> None:
    from datetime import datetime

    (tmp_path / "channels").mkdir()
    (tmp_path / "channels" / "routing.yaml").write_text(STUDY_ROUTING.format(name="route"))

    async def body(hub: Hub) -> None:
        morning = datetime.now().hour < 12
        source = MEMORY_SOURCES["route-in"]
        assert await source.inject(study_batch("CT1", "CTHEAD").encode()) is None
        assert await source.inject(study_batch("MR2", "MRKNEE").encode()) is None
        ct1, head = MEMORY_DESTINATIONS["route-ct1"], MEMORY_DESTINATIONS["route-head"]
        await until(lambda: len(ct1.received) == 1 and len(head.received) == 1)
        assert '"calling_aet":"CT1"' in ct1.received[0]
        assert '"ProcedureCode":"CTHEAD"' in head.received[0]
        # The routing decision is committed with the message: count the queue entries.
        assert queued_for(db_url, "mornings") == (2 if morning else 0)

    run(body, tmp_path, "unused", db_url, extra_only=True)
