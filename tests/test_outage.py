"""Outage: the EHR's MLLP receiver goes down, reports queue, and all arrive in order after.

A real hub process with the shipped channels: signed reports (ORU^R01) come in on
``reports-from-ris`` and go out through ``results-to-ehr`` to the EHR's MLLP
receiver (a real asyncio server, tests/support/mllp_receivers.py). The receiver
takes the first report, is stopped, and is started again on the same port after
the outage. Meanwhile the reports wait in the durable queue, the head one is
retried with exponential backoff and jitter, and /metrics and GET /api/dashboard
(a user made with ``meridian user add``) show the queue's depth and oldest age.

The issue's outage lasts minutes; here it lasts OUTAGE_SECONDS (20 s) with the
channel's retry policy scaled down to match (0.5 s first delay, doubling, capped
at 6 s): the same code paths run and the whole backoff curve (growth, then the
cap) is seen, while the test stays well within its CI budget.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import mllp_client
from tests.support.hub_process import (
    HubProcess,
    Overrides,
    free_port,
    start_hub,
    wait_for_port,
)
from tests.support.mllp_receivers import AckReceiver

pytestmark = pytest.mark.timeout(120)

OUTAGE_SECONDS = 20.0
REPORTS = 12
RETRY = {"initial_backoff_seconds": 0.5, "multiplier": 2.0, "max_backoff_seconds": 6.0}
JITTER = 0.2  # RetryPolicy's default, asserted below
CHANNEL, DESTINATION = "results-to-ehr", "ehr-oru"
PASSWORD = "correct horse battery"
STUDY_ROOT = "1.2.826.0.1.3680043.8.498.77"


def signed_report(index: int) -> bytes:
    """A final ORU^R01 from the RIS; every report is for the same patient (one order key)."""
    accession = f"ACCOUT{index:02d}"
    return (
        f"MSH|^~\\&|RADREPORT|HOSP|MERIDIAN|HOSP|20261123120000||ORU^R01|OUT{index:02d}|P|2.5.1\r"
        "PID|1||POUT1^^^HOSP^MR||DOE^JANE||19800101|F\r"
        f"OBR|1|PL{accession}|{accession}|CTHEAD^CT Head^LOCAL|||20261123101500|||||||||||"
        f"{accession}||||20261123115500||CT|F|||||||4711&HOUSE&GREGORY\r"
        f"OBX|1|TX|&GDT^Report text||Report number {index}.||||||F\r"
        f"ZDS|{STUDY_ROOT}.{index + 1}^MERIDIAN^Application^DICOM\r"
    ).encode()


class RecordingReceiver(AckReceiver):
    """An AA receiver that also notes when each message arrived."""

    def __init__(self, port: int, arrivals: list[tuple[float, bytes]]) -> None:
        super().__init__(port)
        self.arrivals = arrivals

    async def reply(self, message: bytes) -> bytes | None:
        self.arrivals.append((time.monotonic(), message))
        return await super().reply(message)


class EHRReceiver:
    """The EHR's MLLP receiver on its own event loop thread, stoppable and restartable."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.arrivals: list[tuple[float, bytes]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._receiver: AckReceiver | None = None

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> None:
        """Listen on the same port every time (as a restarted EHR interface does)."""
        self._receiver = self._call(RecordingReceiver(self.port, self.arrivals).start())

    def stop(self) -> None:
        """Stop listening and drop the hub's open connection."""
        if self._receiver is not None:
            self._call(self._receiver.stop())
            self._receiver = None

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def accessions(self) -> list[str]:
        """OBR-3 (the filler number: our accession) of each ORU received, in arrival order."""
        found = []
        for _, message in list(self.arrivals):
            obr = next(s for s in message.decode().split("\r") if s.startswith("OBR|"))
            found.append(obr.split("|")[3].split("^")[0])
        return found


@pytest.fixture
def ehr() -> Iterator[EHRReceiver]:
    receiver = EHRReceiver(free_port())
    yield receiver
    receiver.close()


@pytest.fixture
def hub(tmp_path: Path, ehr: EHRReceiver) -> Iterator[tuple[HubProcess, int]]:
    ris_port = free_port()
    overrides: Overrides = {
        "reports-from-ris": {"source": {"port": ris_port}},
        CHANNEL: {
            "destinations": {
                DESTINATION: {"port": ehr.port, "timeout_seconds": 5, "retry": RETRY},
                "ehr-fhir": {"enabled": False},
            }
        },
    }
    running = start_hub(tmp_path, overrides)
    yield running, ris_port
    code = running.stop()
    assert code == 0, running.log()[-3000:]


def add_user(hub: HubProcess, name: str) -> None:
    """``meridian user add`` against the hub's store, as an operator would."""
    meridian = shutil.which("meridian", path=str(Path(sys.executable).parent)) or "meridian"
    data = ["--data", str(hub.data_dir)]
    done = subprocess.run(
        [meridian, "user", "add", name, "--role", "viewer", "--password-stdin", *data],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def head_attempt(db: Path) -> tuple[int, int, datetime, datetime] | None:
    """(entry id, attempts, last attempt time, next attempt time) of the queue's head."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        row = conn.execute(
            "SELECT id, attempts, updated_at, next_attempt_at FROM queue_entries"
            " WHERE channel=? AND destination=? AND status='QUEUED' ORDER BY id LIMIT 1",
            (CHANNEL, DESTINATION),
        ).fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    return int(row[0]), int(row[1]), datetime.fromisoformat(row[2]), datetime.fromisoformat(row[3])


def queue_gauges(client: httpx.Client) -> tuple[int, float] | None:
    """meridian_queue_depth and meridian_queue_oldest_age_seconds of the EHR queue."""
    text = client.get("/metrics").text
    labels = re.escape(f'{{channel="{CHANNEL}",destination="{DESTINATION}"}}')
    depth = re.search(rf"^meridian_queue_depth{labels} (\d+)$", text, re.M)
    age = re.search(rf"^meridian_queue_oldest_age_seconds{labels} ([0-9.]+)$", text, re.M)
    if depth is None or age is None:
        return None
    return int(depth.group(1)), float(age.group(1))


def dashboard_queue(client: httpx.Client) -> dict[str, Any] | None:
    answer = client.get("/api/dashboard")
    assert answer.status_code == 200, answer.text
    queues = [q for q in answer.json()["queues"] if q["channel"] == CHANNEL]
    return next((q for q in queues if q["destination"] == DESTINATION), None)


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_outage_queues_retries_with_backoff_and_delivers_in_order(
    hub: tuple[HubProcess, int], ehr: EHRReceiver
) -> None:
    process, ris_port = hub
    wait_for_port(process.admin_port, proc=process.proc)
    add_user(process, "ops")
    client = httpx.Client(base_url=f"http://127.0.0.1:{process.admin_port}", timeout=30)
    login = client.post("/api/login", json={"username": "ops", "password": PASSWORD})
    assert login.status_code == 200, login.text

    ehr.start()
    send_report(ris_port, 0)
    wait_for(lambda: len(ehr.arrivals) == 1, 20, "the first report while the EHR is up")
    ehr.stop()
    outage_started = time.monotonic()
    for index in range(1, REPORTS):
        send_report(ris_port, index)

    attempts, gauges = watch_outage(process, client, outage_started)
    ehr.start()
    recovered = time.monotonic()
    wait_for(
        lambda: len(ehr.arrivals) == REPORTS, 20, f"all reports after recovery: {ehr.arrivals}"
    )
    assert ehr.accessions() == [f"ACCOUT{i:02d}" for i in range(REPORTS)], "out of order"
    assert ehr.arrivals[1][0] - recovered < RETRY["max_backoff_seconds"] * (1 + JITTER) + 2

    assert_backoff(attempts)
    assert_visible(gauges, outage_started)
    wait_for(lambda: queue_gauges(client) is None, 10, "the queue gauge once empty")
    assert dashboard_queue(client) is None, "an empty queue leaves the dashboard"


def send_report(port: int, index: int) -> None:
    ack = mllp_client.send(port, signed_report(index))
    assert mllp_client.msa(ack)[1] == "AA", ack


Sample = tuple[float, int, float, dict[str, Any]]


def watch_outage(
    process: HubProcess, client: httpx.Client, started: float
) -> tuple[dict[int, tuple[datetime, datetime]], list[Sample]]:
    """Until the outage ends: each attempt on the head entry, and the gauges now and then.

    Returns {attempts: (attempt time, next attempt time)} and samples of
    (seconds into the outage, metrics depth, metrics oldest age, dashboard queue).
    """
    attempts: dict[int, tuple[datetime, datetime]] = {}
    head_id: int | None = None
    samples: list[Sample] = []
    next_sample = 3.0
    while (elapsed := time.monotonic() - started) < OUTAGE_SECONDS:
        head = head_attempt(process.db_path)
        if head is not None and head[1] > 0:
            head_id = head_id or head[0]
            assert head[0] == head_id, "the head entry must wait, not be skipped"
            attempts.setdefault(head[1], (head[2], head[3]))
        if elapsed >= next_sample:
            gauge = queue_gauges(client)
            board = dashboard_queue(client)
            if gauge is not None and board is not None:
                samples.append((elapsed, gauge[0], gauge[1], board))
            next_sample += 5.0
        time.sleep(0.05)
    return attempts, samples


def assert_backoff(attempts: dict[int, tuple[datetime, datetime]]) -> None:
    """Attempts keep coming; the delays double up to the cap; jitter moves each one."""
    assert sorted(attempts) == list(range(1, len(attempts) + 1)), "an attempt went unseen"
    assert len(attempts) >= 6, f"only {len(attempts)} attempts in a {OUTAGE_SECONDS}s outage"
    initial, cap = RETRY["initial_backoff_seconds"], RETRY["max_backoff_seconds"]
    scheduled = []
    for count, (at, next_at) in sorted(attempts.items()):
        nominal = min(initial * RETRY["multiplier"] ** (count - 1), cap)
        delay = (next_at - at).total_seconds()
        # The stored attempt time is stamped by the store writer a moment after the
        # delay was drawn, so it may be short by that moment (never long).
        assert nominal * (1 - JITTER) - 0.25 <= delay <= nominal * (1 + JITTER), (count, delay)
        scheduled.append((nominal, delay))
    delays = [delay for _, delay in scheduled]
    assert delays[:4] == sorted(delays[:4]) and delays[3] > 2 * delays[0], delays
    assert any(abs(delay / nominal - 1) > 0.01 for nominal, delay in scheduled), "no jitter"
    times = [at for _, (at, _) in sorted(attempts.items())]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert gaps[:4] == sorted(gaps[:4]), f"the time between attempts must grow: {gaps}"
    for gap, delay in zip(gaps, delays, strict=False):
        assert gap >= delay - 0.25, "an attempt came before its backoff delay"
    print(
        f"\nbackoff delays drawn: {[round(d, 2) for d in delays]}; "
        f"gaps between attempts: {[round(g, 2) for g in gaps]}"
    )


def assert_visible(samples: list[Sample], outage_started: float) -> None:
    """Depth and oldest age in /metrics and on the dashboard, the age growing."""
    assert len(samples) >= 3, samples
    for elapsed, depth, age, board in samples:
        assert depth == REPORTS - 1, (elapsed, depth)
        assert board["depth"] == REPORTS - 1, board
        assert age >= elapsed - 2, (elapsed, age)
        assert board["oldest_age_seconds"] >= elapsed - 2, (elapsed, board)
    ages = [age for _, _, age, _ in samples]
    assert ages == sorted(ages) and ages[-1] - ages[0] >= 5, ages
