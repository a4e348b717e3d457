"""Parallel delivery lanes: order per key (the patient by default), keys in parallel.

A hub runs in-process with a channel whose MLLP destination points at a real
MLLP receiver on a free port (a stand-in for the EHR) that can hold back or
garble its answers for one patient, so the tests can watch one key stall while
the others go on. The worklist test uses the hub's own transactional worklist
destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from connectors.memory import MEMORY_SOURCES
from engine.channel_files import validate_text
from engine.checks import check_all
from engine.config import HubSettings
from engine.hub import Hub
from engine.loader import load_channels
from engine.templating import TemplateEnvironment
from engine.worklist import WorklistStore
from tests.support.databases import store_url
from tests.support.mllp_receivers import Receiver, ack
from tests.support.orders import orm

REPO = Path(__file__).resolve().parents[1]
_names = itertools.count(1)

MLLP_CHANNEL = """\
name: keyed
source:
  type: memory
  instance: {instance}
destinations:
  - name: ehr
    type: mllp
    host: 127.0.0.1
    port: {port}
    timeout_seconds: 30
    retry:
      initial_backoff_seconds: 0.05
      max_backoff_seconds: 0.1
      jitter: 0
    queue:
{queue}
"""

WORKLIST_CHANNEL = """\
name: keyed-worklist
inbound:
  accept_message_types: [ORM^O01]
source:
  type: memory
  instance: {instance}
transform:
  template: orm_to_mwl.j2
  output: mwl-items
destinations:
  - name: worklist
    type: worklist
    queue:
      workers: 4
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from store_url(request.param, tmp_path)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield from store_url("sqlite", tmp_path)


class KeyedReceiver(Receiver):
    """ACKs each message (AA) unless its patient is held back, garbled or refused.

    ``acked`` lists (patient, placer) in the order the answers were given: for one
    patient that is the order of delivery, since a lane sends a key's next entry
    only after the ACK of the previous one.
    """

    def __init__(self, jitter: float = 0.0) -> None:
        super().__init__()
        self.jitter = jitter
        self.acked: list[tuple[str, str]] = []
        self.attempts: Counter[str] = Counter()  # per placer
        self.held: dict[str, asyncio.Event] = {}  # patient -> answer once set
        self.garbled: set[str] = set()  # patients whose ACK is garbage (sender retries)
        self.refused: set[str] = set()  # placers answered AR (sender gives up on them)
        self.in_flight = 0
        self.max_in_flight = 0

    async def reply(self, message: bytes) -> bytes | None:
        patient, placer = _patient_and_placer(message)
        self.attempts[placer] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.jitter:
                await asyncio.sleep(random.uniform(0, self.jitter))
            gate = self.held.get(patient)
            if gate is not None:
                await gate.wait()
            if patient in self.garbled:
                return b"\x00not an ACK"
            if placer in self.refused:
                return ack(message, "AR", "refused")
            self.acked.append((patient, placer))
            return ack(message, "AA")
        finally:
            self.in_flight -= 1

    def acked_for(self, patient: str) -> list[str]:
        """The placers of ``patient`` acknowledged, in order."""
        return [placer for who, placer in self.acked if who == patient]


def _patient_and_placer(message: bytes) -> tuple[str, str]:
    segments = {s[:3]: s.split("|") for s in message.decode().split("\r") if s}
    return segments["PID"][3].split("^")[0], segments["ORC"][2]


def settings_for(tmp_path: Path, db_url: str) -> HubSettings:
    return HubSettings.model_validate(
        {
            "channels_dir": tmp_path / "channels",
            "transforms_dir": REPO / "transforms",
            "data_dir": tmp_path / "var",
            "db_url": db_url,
            "dicom": {"port": 0},
            "admin": {"port": 0},
        }
    )


@contextlib.asynccontextmanager
async def running_hub(tmp_path: Path, db_url: str, channel: str) -> AsyncIterator[Hub]:
    """A hub on ``db_url`` running the one channel ``channel`` (its file text)."""
    channels = tmp_path / "channels"
    channels.mkdir(exist_ok=True)
    (channels / "channel.yaml").write_text(channel)
    hub = Hub(settings_for(tmp_path, db_url), load_channels(channels))
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


def mllp_channel(instance: str, port: int, queue: str) -> str:
    indented = "\n".join(f"      {line}" for line in queue.strip().splitlines())
    return MLLP_CHANNEL.format(instance=instance, port=port, queue=indented)


async def inject(instance: str, message: str) -> None:
    reply = await MEMORY_SOURCES[instance].inject(message.encode())
    assert reply is not None and b"MSA|AA" in reply, reply


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def entries(db_url: str) -> list[tuple[str | None, str]]:
    """(order_key, status) of every queue entry, oldest first."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT order_key, status FROM queue_entries ORDER BY id"))
            return [(row[0], row[1]) for row in rows]
    finally:
        engine.dispose()


def interleaved(patients: list[str], per_patient: int) -> list[tuple[str, str]]:
    """(patient, placer) round-robin over the patients: P1-0, P2-0, ..., P1-1, ..."""
    return [(p, f"{p}-{i}") for i in range(per_patient) for p in patients]


def order(patient: str, placer: str, control: str = "NW", modality: str = "CT") -> str:
    return orm(
        patient_id=patient,
        placer=placer,
        accession=f"A{placer}",
        control=control,
        modality=modality,
    )


# -- order per key, keys in parallel ---------------------------------------------------


def test_four_lanes_keep_each_patients_order_and_work_in_parallel(
    tmp_path: Path, db_url: str
) -> None:
    instance = f"keyed-{next(_names)}"
    patients = [f"PAT{i}" for i in range(6)]
    sent = interleaved(patients, 6)

    async def body(receiver: KeyedReceiver) -> None:
        gate = asyncio.Event()  # no answers until everything is queued
        receiver.held.update(dict.fromkeys(patients, gate))
        for patient, placer in sent:
            await inject(instance, order(patient, placer))
        # Four lanes, four patients' first orders waiting for their answers at once.
        await until(lambda: receiver.in_flight == 4)
        gate.set()
        await until(lambda: len(receiver.acked) == len(sent))

    receiver = run_with_receiver(tmp_path, db_url, instance, "workers: 4", body, jitter=0.01)
    for patient in patients:
        assert receiver.acked_for(patient) == [pl for who, pl in sent if who == patient]
    assert sorted(receiver.acked) == sorted(sent)  # each delivered exactly once
    assert receiver.max_in_flight == 4  # never more than the lanes
    # The default key is the patient ID, stored with each entry.
    assert entries(db_url) == [(patient, "SENT") for patient, _ in sent]


def test_one_lane_keeps_the_total_arrival_order(tmp_path: Path, sqlite_url: str) -> None:
    instance = f"keyed-{next(_names)}"
    sent = interleaved([f"PAT{i}" for i in range(5)], 5)

    async def body(receiver: KeyedReceiver) -> None:
        for patient, placer in sent:
            await inject(instance, order(patient, placer))
        await until(lambda: len(receiver.acked) == len(sent))

    receiver = run_with_receiver(tmp_path, sqlite_url, instance, "workers: 1", body, jitter=0.01)
    assert receiver.acked == sent
    assert receiver.max_in_flight == 1


def test_a_slow_patient_does_not_hold_the_others(tmp_path: Path, db_url: str) -> None:
    instance = f"keyed-{next(_names)}"
    slow = "SLOW"
    fast = interleaved(["FAST1", "FAST2", "FAST3"], 4)
    slow_orders = [(slow, f"{slow}-{i}") for i in range(3)]

    async def body(receiver: KeyedReceiver) -> None:
        gate = receiver.held[slow] = asyncio.Event()
        for patient, placer in slow_orders + fast:  # the slow patient's orders come first
            await inject(instance, order(patient, placer))
        await until(lambda: len(receiver.acked) == len(fast))
        # Every other patient is done while the slow one's first order waits for its
        # answer; its later orders were not even sent.
        assert receiver.attempts[f"{slow}-0"] == 1
        assert receiver.attempts[f"{slow}-1"] == receiver.attempts[f"{slow}-2"] == 0
        assert [status for key, status in entries(db_url) if key == slow] == ["QUEUED"] * 3
        gate.set()
        await until(lambda: len(receiver.acked) == len(fast) + len(slow_orders))

    receiver = run_with_receiver(tmp_path, db_url, instance, "workers: 4", body)
    assert receiver.acked_for(slow) == [placer for _, placer in slow_orders]
    for patient in ("FAST1", "FAST2", "FAST3"):
        assert receiver.acked_for(patient) == [pl for who, pl in fast if who == patient]


def test_a_retrying_patient_blocks_only_its_own_orders(tmp_path: Path, db_url: str) -> None:
    instance = f"keyed-{next(_names)}"
    sent = interleaved(["BAD", "OK1", "OK2"], 3)
    others = [(who, placer) for who, placer in sent if who != "BAD"]

    async def body(receiver: KeyedReceiver) -> None:
        receiver.garbled.add("BAD")
        for patient, placer in sent:
            await inject(instance, order(patient, placer))
        await until(lambda: len(receiver.acked) == len(others) and receiver.attempts["BAD-0"] >= 3)
        # BAD's head is retried with backoff; the orders behind it wait, in order.
        assert receiver.attempts["BAD-1"] == receiver.attempts["BAD-2"] == 0
        receiver.garbled.clear()  # the EHR recovers
        await until(lambda: len(receiver.acked) == len(sent))

    receiver = run_with_receiver(tmp_path, db_url, instance, "workers: 4", body)
    assert receiver.acked_for("BAD") == ["BAD-0", "BAD-1", "BAD-2"]
    assert sorted(receiver.acked) == sorted(sent)
    assert all(status == "SENT" for _, status in entries(db_url))


def test_a_refused_order_is_an_error_and_its_patient_goes_on(
    tmp_path: Path, sqlite_url: str
) -> None:
    instance = f"keyed-{next(_names)}"
    sent = interleaved(["PAT1", "PAT2"], 3)

    async def body(receiver: KeyedReceiver) -> None:
        receiver.refused.add("PAT1-0")
        for patient, placer in sent:
            await inject(instance, order(patient, placer))
        await until(lambda: len(receiver.acked) == len(sent) - 1)

    receiver = run_with_receiver(tmp_path, sqlite_url, instance, "workers: 2", body)
    assert receiver.acked_for("PAT1") == ["PAT1-1", "PAT1-2"]
    assert receiver.attempts["PAT1-0"] == 1  # a refusal is not retried
    assert entries(sqlite_url)[0] == ("PAT1", "ERROR")


def test_an_order_key_template_sets_the_key(tmp_path: Path, sqlite_url: str) -> None:
    instance = f"keyed-{next(_names)}"
    # Keyed by accession here: each order of one patient is its own key.
    queue = 'workers: 3\norder_key: \'{{ msg.seg("OBR")["18"] }}\''

    async def body(receiver: KeyedReceiver) -> None:
        await inject(instance, order("PAT1", "PL1"))
        await inject(instance, order("PAT1", "PL2"))
        await until(lambda: len(receiver.acked) == 2)

    run_with_receiver(tmp_path, sqlite_url, instance, queue, body)
    assert entries(sqlite_url) == [("APL1", "SENT"), ("APL2", "SENT")]


def test_an_order_key_that_fails_is_a_message_error(tmp_path: Path, sqlite_url: str) -> None:
    instance = f"keyed-{next(_names)}"
    queue = "workers: 2\norder_key: '{{ msg.no_such_thing }}'"

    async def body(receiver: KeyedReceiver) -> None:
        reply = await MEMORY_SOURCES[instance].inject(order("PAT1", "PL1").encode())
        assert reply is not None and b"MSA|AE" in reply
        assert b"order key of destination 'ehr'" in reply

    run_with_receiver(tmp_path, sqlite_url, instance, queue, body)
    assert entries(sqlite_url) == []


def run_with_receiver(
    tmp_path: Path,
    db_url: str,
    instance: str,
    queue: str,
    body: Callable[[KeyedReceiver], Awaitable[None]],
    *,
    jitter: float = 0.0,
) -> KeyedReceiver:
    """Run ``body`` with a hub whose ``ehr`` destination sends to a KeyedReceiver."""
    receiver = KeyedReceiver(jitter)

    async def main() -> None:
        async with receiver:
            channel = mllp_channel(instance, receiver.port, queue)
            async with running_hub(tmp_path, db_url, channel):
                await body(receiver)

    asyncio.run(main())
    return receiver


# -- transactional destination ---------------------------------------------------------


def test_worklist_with_four_lanes_applies_each_patients_orders_in_order(
    tmp_path: Path, db_url: str
) -> None:
    instance = f"worklist-{next(_names)}"
    patients = [f"WL{i}" for i in range(8)]
    # New order (CT), change to MR, and for every other patient a cancel: interleaved.
    messages = [(p, "NW", "CT") for p in patients] + [(p, "XO", "MR") for p in patients]
    messages += [(p, "CA", "MR") for p in patients[::2]]

    def done() -> bool:
        stored = entries(db_url)
        return len(stored) == len(messages) and all(s != "QUEUED" for _, s in stored)

    async def main() -> None:
        async with running_hub(tmp_path, db_url, WORKLIST_CHANNEL.format(instance=instance)):
            for patient, control, modality in messages:
                await inject(instance, order(patient, f"O{patient}", control, modality))
            await until(done)

    asyncio.run(main())
    assert all(status == "SENT" for _, status in entries(db_url))  # no CA before its NW
    engine = create_engine(db_url)
    try:
        items = WorklistStore(engine).list_items(active_only=False)
    finally:
        engine.dispose()
    by_patient = {item["patient_id"]: item for item in items}
    assert sorted(by_patient) == patients
    for index, patient in enumerate(patients):
        item = by_patient[patient]
        assert item["modality"] == "MR"  # the change came after the new order
        assert item["active"] is (index % 2 == 1)  # the cancelled ones are gone


# -- validation ------------------------------------------------------------------------


def test_a_bad_order_key_template_is_rejected_with_its_line(tmp_path: Path) -> None:
    channel = mllp_channel("check", 2575, "workers: 2\norder_key: '{{ msg.seg( }}'")
    templates = TemplateEnvironment(REPO / "transforms")
    path = tmp_path / "channels" / "keyed.yaml"
    _, errors = validate_text(channel, path, templates=templates, directory=None)
    assert [(e.field, e.line) for e in errors] == [
        ("destinations.0.queue.order_key", _line_of(channel, "order_key:"))
    ]
    # meridian check says the same.
    path.parent.mkdir()
    path.write_text(channel)
    problems = check_all(settings_for(tmp_path, "sqlite://"))
    assert len(problems) == 1 and "queue.order_key" in problems[0]


@pytest.mark.parametrize("queue", ["workers: 0", "workers: 2\nlanes: 3", "order_key: ''"])
def test_bad_queue_settings_are_rejected(tmp_path: Path, queue: str) -> None:
    channel = mllp_channel("check", 2575, queue)
    templates = TemplateEnvironment(REPO / "transforms")
    _, errors = validate_text(channel, tmp_path / "keyed.yaml", templates=templates, directory=None)
    assert errors and errors[0].field.startswith("destinations.0.queue")


def _line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)
