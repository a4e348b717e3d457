"""ORM → durable store → ACK: the hub against a bare python-hl7 ACK server, side by side.

Both servers get the same pre-built ORM^O01 messages (unique MSH-10 and order
numbers) from the same asyncio client, with 1 and with 8 persistent
connections; each connection waits for its ACK before sending the next
message, as an EHR does. The hub runs the shipped orders-to-worklist channel:
decode, parse, filter, Jinja transform, validation, durable group commit
(SQLite WAL, synchronous=FULL), then ACK; worklist delivery runs behind.

Usage: .venv/bin/python bench/mllp.py [--messages 3000] [--json PATH]

``--json PATH`` also writes the rows for ``bench/run_all.py`` (see bench/rows.py).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.rows import Output, Row, write_json  # noqa: E402
from tests.support.hub_process import free_port, start_hub, wait_for_port  # noqa: E402
from tests.support.orders import orm  # noqa: E402

START, END = b"\x0b", b"\x1c\x0d"


@dataclass
class Run:
    """One measured load."""

    server: str
    connections: int
    messages: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        """Messages acknowledged per second."""
        return self.messages / self.seconds

    def percentile(self, fraction: float) -> float:
        """ACK latency at ``fraction`` (0..1), in milliseconds."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    def row(self, anchor: str | None) -> Row:
        """This run as a report row (``anchor``: the server it is compared with)."""
        plural = "s" if self.connections > 1 else ""
        return Row(
            case=f"{self.connections} connection{plural}",
            server=self.server,
            anchor=anchor,
            throughput=self.rate,
            unit="msg/s",
            p50_ms=self.percentile(0.5),
            p95_ms=self.percentile(0.95),
            p99_ms=self.percentile(0.99),
            count=self.messages,
        )


def build_messages(count: int, tag: str) -> list[bytes]:
    """Unique orders, so duplicate control never short-cuts the hub's work."""
    return [
        orm(
            placer=f"{tag}{i}",
            accession=f"{tag}A{i}",
            patient_id=f"{tag}P{i % 500}",
            mcid=f"{tag}M{i}",
        ).encode()
        for i in range(count)
    ]


async def _connection(port: int, messages: list[bytes], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**22)
    try:
        for message in messages:
            started = time.perf_counter()
            writer.write(START + message + END)
            await writer.drain()
            await reader.readuntil(START)
            ack = await reader.readuntil(END)
            latencies.append(time.perf_counter() - started)
            if b"MSA|AA" not in ack:
                raise RuntimeError(f"not accepted: {ack[:200]!r}")
    finally:
        writer.close()


async def load(server: str, port: int, messages: list[bytes], connections: int) -> Run:
    """Send ``messages`` split over ``connections`` and time it."""
    latencies: list[float] = []
    shares = [messages[i::connections] for i in range(connections)]
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, share, latencies) for share in shares))
    return Run(server, connections, len(messages), time.perf_counter() - started, latencies)


def measure(server: str, port: int, count: int, tag: str) -> list[Run]:
    """Warm up, then measure 1 and 8 connections."""
    asyncio.run(load(server, port, build_messages(200, f"W{tag}"), 4))
    return [asyncio.run(load(server, port, build_messages(count, f"{tag}{n}"), n)) for n in (1, 8)]


def main() -> None:
    """Run both servers, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()

    port = free_port()
    baseline = subprocess.Popen(
        [sys.executable, str(REPO / "bench/baseline_mllp_server.py"), str(port)]
    )
    try:
        wait_for_port(port)
        base_runs = measure("bare python-hl7", port, args.messages, "B")
    finally:
        baseline.terminate()
        baseline.wait()

    with tempfile.TemporaryDirectory() as workdir:
        hub = start_hub(Path(workdir))
        try:
            hub_runs = measure("meridian hub", hub.mllp_port, args.messages, "H")
        finally:
            hub.stop()

    print(f"ORM^O01 → ACK, {args.messages} messages per run, SQLite WAL synchronous=FULL")
    print(f"{'server':<18}{'conns':>6}{'msg/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}")
    for base, ours in zip(base_runs, hub_runs, strict=True):
        for run in (base, ours):
            ratio = run.rate / base.rate
            print(
                f"{run.server:<18}{run.connections:>6}{run.rate:>10.0f}"
                f"{run.percentile(0.5):>9.2f}{run.percentile(0.99):>9.2f}{ratio:>8.2f}"
            )
    mean_ms = statistics.mean(hub_runs[1].latencies) * 1000
    print(f"mean ACK latency hub (8 conns): {mean_ms:.2f} ms")
    if args.json:
        rows = []
        for base, ours in zip(base_runs, hub_runs, strict=True):
            rows += [base.row(None), ours.row(base.server)]
        notes = [
            f"{args.messages} messages per run after a 200-message warm-up; "
            f"mean ACK latency of the hub at 8 connections {mean_ms:.2f} ms"
        ]
        write_json(args.json, Output("mllp", "throughput", rows, notes, count_label="messages"))


if __name__ == "__main__":
    main()
