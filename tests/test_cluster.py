"""Several hub nodes on one PostgreSQL store: each message delivered by one node, in order.

Real ``meridian serve`` processes (tests/support/cluster.py) share a fresh
PostgreSQL database; each has its own MLLP port, as behind a TCP load balancer.
The channel relays every order to two real MLLP receivers in this process: one
destination with four delivery lanes (order per patient), one with a single
lane. The EHR side sends each patient's orders one after another on its own
connection (waiting for each ACK, as an EHR does), so a patient's orders have
a definite order; patients are spread over the nodes.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from tests.support.cluster import relay_channel, start_node
from tests.support.databases import postgres_database
from tests.support.hub_process import HubProcess, free_port, kill_when_frozen_state, wait_for_port
from tests.support.mllp_client import frame, msa, read_frame
from tests.support.mllp_receivers import Receiver, ack
from tests.support.orders import orm

LANES = {"keyed": 4, "strict": 1}


class RecordingReceiver(Receiver):
    """ACKs every message after ``delay`` seconds, recording (patient, placer) as received."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.log: list[tuple[str, str]] = []

    async def reply(self, message: bytes) -> bytes | None:
        segments = {s[:3]: s.split("|") for s in message.decode().split("\r") if s}
        self.log.append((segments["PID"][3].split("^")[0], segments["ORC"][2]))
        await asyncio.sleep(self.delay)
        return ack(message, "AA")

    def first_receipts(self, patient: str) -> list[str]:
        """The placers of ``patient`` in the order each first arrived."""
        seen: dict[str, None] = {}
        for who, placer in list(self.log):
            if who == patient:
                seen.setdefault(placer)
        return list(seen)


class Receivers:
    """The two receivers, on their own event loop in a thread (the nodes are processes)."""

    def __init__(self, delay: float) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.by_name = {name: self._run(RecordingReceiver(delay).start()) for name in LANES}

    def _run(self, coroutine: object) -> RecordingReceiver:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)  # type: ignore[arg-type]

    def channel(self, port: int) -> str:
        return relay_channel(port, {n: (r.port, LANES[n]) for n, r in self.by_name.items()})

    def stop(self) -> None:
        for receiver in self.by_name.values():
            asyncio.run_coroutine_threadsafe(receiver.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class PatientSender(threading.Thread):
    """Sends one patient's orders in order, each after the previous ACK; fails over.

    When its node goes away it resends the unanswered order to the next live node,
    as an EHR behind a load balancer does.
    """

    def __init__(self, ports: list[int], first: int, orders: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.ports, self.node, self.orders = ports, first, orders
        self.acked = 0
        self.failovers = 0

    def run(self) -> None:
        sock: socket.socket | None = None
        index = 0
        while index < len(self.orders):
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.ports[self.node]))
                sock.sendall(frame(self.orders[index]))
                assert msa(read_frame(sock, 30))[1] == "AA"
                self.acked += 1
                index += 1
            except OSError:
                if sock is not None:
                    sock.close()
                sock = None
                self.failovers += 1
                self.node = (self.node + 1) % len(self.ports)
                time.sleep(0.05)
        if sock is not None:
            sock.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    running = Receivers(delay=0.002)
    yield running
    running.stop()


def patient_orders(patients: int, per_patient: int) -> dict[str, list[bytes]]:
    return {
        f"P{p:02d}": [
            orm(
                patient_id=f"P{p:02d}", placer=f"P{p:02d}-{i:03d}", accession=f"A{p:02d}{i:03d}"
            ).encode()
            for i in range(per_patient)
        ]
        for p in range(patients)
    }


def start_senders(ports: list[int], orders: dict[str, list[bytes]]) -> list[PatientSender]:
    """One sender per patient, the patients spread round robin over the ports."""
    senders = [
        PatientSender(ports, n % len(ports), messages) for n, messages in enumerate(orders.values())
    ]
    for sender in senders:
        sender.start()
    return senders


def start_nodes(tmp_path: Path, url: str, receivers: Receivers, count: int) -> list[HubProcess]:
    return [
        start_node(tmp_path / f"node{n}", f"node-{n}", url, receivers.channel, lease_seconds=3)
        for n in range(count)
    ]


def scalar(store: Engine, sql: str) -> int:
    with store.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def wait_drained(store: Engine, receivers: Receivers, total: int, nodes: list[HubProcess]) -> None:
    deadline = time.monotonic() + 90
    while scalar(store, "SELECT count(*) FROM queue_entries WHERE status <> 'SENT'") or any(
        len({p for p in r.log}) < total for r in receivers.by_name.values()
    ):
        logs = "\n".join(node.log()[-2000:] for node in nodes)
        assert time.monotonic() < deadline, f"work left undelivered\n{logs}"
        time.sleep(0.2)


def assert_each_patient_in_order(receivers: Receivers, orders: dict[str, list[bytes]]) -> None:
    for name, receiver in receivers.by_name.items():
        for patient, messages in orders.items():
            expected = [f"{patient}-{i:03d}" for i in range(len(messages))]
            assert receiver.first_receipts(patient) == expected, f"{name}: {patient} out of order"


def test_two_nodes_deliver_every_message_once_in_order_per_patient(
    tmp_path: Path, pg_url: str, receivers: Receivers
) -> None:
    nodes = start_nodes(tmp_path, pg_url, receivers, 2)
    store = create_engine(pg_url)
    try:
        orders = patient_orders(patients=12, per_patient=25)
        senders = start_senders([node.mllp_port for node in nodes], orders)
        for sender in senders:
            sender.join(120)
        wait_drained(store, receivers, 300, nodes)
        for name, receiver in receivers.by_name.items():
            assert len(receiver.log) == 300, f"{name}: a message was delivered twice"
        assert_each_patient_in_order(receivers, orders)
    finally:
        for node in nodes:
            node.stop()
        store.dispose()


def kill_while_holding_claims(node: HubProcess, node_id: str, store: Engine) -> int:
    """SIGKILL ``node`` at a moment it holds claimed, undelivered entries; how many."""
    held = (
        f"SELECT count(*) FROM queue_entries WHERE claimed_by = '{node_id}' AND status = 'QUEUED'"
    )
    return kill_when_frozen_state(
        node, lambda: scalar(store, held), "holding claims", attempts=2000
    )


def test_a_node_killed_mid_load_loses_nothing_and_the_others_finish_its_work(
    tmp_path: Path, pg_url: str, receivers: Receivers
) -> None:
    nodes = start_nodes(tmp_path, pg_url, receivers, 3)
    store = create_engine(pg_url)
    try:
        orders = patient_orders(patients=18, per_patient=40)
        total = 18 * 40
        senders = start_senders([node.mllp_port for node in nodes], orders)
        while sum(s.acked for s in senders) < total // 4:
            time.sleep(0.01)
        claimed_at_kill = kill_while_holding_claims(nodes[0], "node-0", store)
        killed_at = time.monotonic()
        for sender in senders:
            sender.join(120)
            assert not sender.is_alive()
        assert sum(s.failovers for s in senders) > 0, "the load went on over the other nodes"
        wait_drained(store, receivers, total, nodes[1:])
        # The killed node's claims ran out (3 s lease) and the others delivered them.
        assert time.monotonic() - killed_at >= 2.5

        # Stored exactly once each (a resent order that the dead node had committed is
        # answered from duplicate control), and every copy was delivered.
        assert scalar(store, "SELECT count(DISTINCT control_id) FROM messages") == total
        assert scalar(store, "SELECT count(*) FROM messages") == total
        assert (
            scalar(store, "SELECT count(*) FROM queue_entries WHERE status = 'SENT'") == 2 * total
        )
        for name, receiver in receivers.by_name.items():
            assert {placer for _, placer in receiver.log} == {
                f"{p}-{i:03d}" for p in orders for i in range(40)
            }, name
            # At least once: only what the dead node had claimed can arrive twice.
            assert len(receiver.log) - total <= claimed_at_kill, name
        assert_each_patient_in_order(receivers, orders)
    finally:
        for node in nodes:
            node.stop()
        store.dispose()


HAPROXY_CFG = """\
global
    maxconn 256

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 1s

frontend mllp
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance leastconn
    option tcp-check
    tcp-check connect
    default-server inter 300ms fall 2 rise 2 on-marked-down shutdown-sessions
{servers}
"""


def start_haproxy(tmp_path: Path, nodes: list[HubProcess]) -> tuple[subprocess.Popen[bytes], int]:
    """HAProxy in TCP mode in front of the nodes' MLLP ports (as in docs/clustering.md)."""
    port = free_port()
    servers = "\n".join(
        f"    server node{n} 127.0.0.1:{node.mllp_port} check" for n, node in enumerate(nodes)
    )
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CFG.format(port=port, servers=servers))
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wait_for_port(port, proc=proc)
    return proc, port


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="HAProxy not installed")
def test_behind_haproxy_the_senders_never_see_the_dead_node(
    tmp_path: Path, pg_url: str, receivers: Receivers
) -> None:
    """The EHR knows one address (HAProxy); a node dies; it reconnects and goes on."""
    nodes = start_nodes(tmp_path, pg_url, receivers, 2)
    haproxy, port = start_haproxy(tmp_path, nodes)
    store = create_engine(pg_url)
    try:
        orders = patient_orders(patients=8, per_patient=30)
        total = 8 * 30
        senders = start_senders([port], orders)
        while sum(s.acked for s in senders) < total // 3:
            time.sleep(0.01)
        nodes[0].proc.kill()
        nodes[0].proc.wait(10)
        for sender in senders:
            sender.join(120)
            assert not sender.is_alive()
        wait_drained(store, receivers, total, nodes[1:])
        assert scalar(store, "SELECT count(*) FROM messages") == total
        for name, receiver in receivers.by_name.items():
            assert {placer for _, placer in receiver.log} == {
                f"{p}-{i:03d}" for p in orders for i in range(30)
            }, name
        assert_each_patient_in_order(receivers, orders)
    finally:
        haproxy.terminate()
        haproxy.wait(10)
        for node in nodes:
            node.stop()
        store.dispose()
