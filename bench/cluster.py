"""Cluster throughput: 1, 2, 3 hub nodes on one PostgreSQL store (issue 8).

For each node count N: a fresh PostgreSQL database, N ``meridian serve``
processes on it (tests/support/cluster.py), each with its own copy of the
shipped orders-to-worklist channel on its own MLLP port (MLLP in → filter →
Jinja → validation → durable commit → ACK; the worklist destination applies
the items behind, in the store's own transaction). An EHR-like load: K
persistent connections dealt round robin over the nodes (a TCP load balancer),
each waiting for its ACK before the next pre-built unique ORM^O01.

Measured per N: ACKed msg/s and ACK latency p50/p95/p99, and the drain: the
time from the first order sent until every queue entry of the run is SENT
(its ``updated_at``), so drain msg/s counts orders that are on the worklist.
Alongside, where the CPU goes: CPU seconds of the nodes, of PostgreSQL and of
this client per message, and how busy the machine's cores were, so a missed
target says what limits it.

The target (issue 8): 2 nodes ≥ 1.7 times one node's msg/s. Nodes, PostgreSQL
and the client share this machine's cores: with 2 cores, extra nodes mostly
compete for the same CPU rather than add to it.

Usage: .venv/bin/python bench/cluster.py [--messages 3000] [--connections 12]
       [--nodes 1 2 3] [--rounds 2] [--quick] [--json PATH]

The orders are split over ``--rounds`` rounds, node counts run 1 2 3, then
3 2 1, ...: other work on the machine then weighs on every node count alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import yaml
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cpu_use import CpuSample, CpuUse, postgres_pids  # noqa: E402
from bench.mllp import _connection, build_messages  # noqa: E402
from bench.pg import PG_ADMIN_URL, fresh_database, postgres_version  # noqa: E402
from bench.rows import Output, Row, nearest_rank, write_json  # noqa: E402
from tests.support.cluster import start_node  # noqa: E402
from tests.support.hub_process import HubProcess  # noqa: E402

CHANNEL = REPO / "channels" / "orders-to-worklist.yaml"
TARGET_RATIO = 1.7
WARMUP_PER_CONNECTION = 20
DRAIN_TIMEOUT_SECONDS = 180.0
STATS_FLUSH_SECONDS = 1.1  # backends report their transaction counts at most once a second
CORES = os.cpu_count() or 1
TIMES = "\u00d7"


# -- the workload --------------------------------------------------------------------------


def worklist_channel(port: int) -> str:
    """The shipped orders-to-worklist channel, listening on ``port`` on loopback."""
    channel = yaml.safe_load(CHANNEL.read_text())
    channel["source"].update(host="127.0.0.1", port=port)
    return yaml.safe_dump(channel, sort_keys=False)


async def _load(ports: list[int], messages: list[bytes], connections: int) -> list[float]:
    """Send ``messages`` over ``connections``, connection i to ``ports[i % len(ports)]``."""
    latencies: list[float] = []
    shares = [messages[i::connections] for i in range(connections)]
    await asyncio.gather(
        *(_connection(ports[i % len(ports)], share, latencies) for i, share in enumerate(shares))
    )
    return latencies


# -- CPU accounting ------------------------------------------------------------------------


# -- one node count ------------------------------------------------------------------------


@dataclass
class Result:
    """What N nodes did with one load (or with several rounds of it, merged)."""

    nodes: int
    connections: int
    messages: int
    ack_seconds: float
    drain_seconds: float
    backlog_at_last_ack: int
    """Orders not yet on the worklist at the last ACK (the largest over the rounds)."""
    latencies: list[float]
    ack_cpu: CpuUse
    """While the load ran (first order sent → last ACK)."""
    run_cpu: CpuUse
    """First order sent → every order on the worklist."""
    load_average: float
    """1-minute load average just before (the highest over the rounds)."""
    transactions: int
    """PostgreSQL transactions of the database, first order sent → all on the worklist."""
    delivered_by: dict[str, int] = field(default_factory=dict)
    round_rates: list[float] = field(default_factory=list)
    """ACKed msg/s of each round."""

    @classmethod
    def merge(cls, rounds: list[Result]) -> Result:
        """The rounds of one node count as one result: totals over total time."""
        delivered: dict[str, int] = {}
        for one in rounds:
            for node, count in one.delivered_by.items():
                delivered[node] = delivered.get(node, 0) + count
        return cls(
            nodes=rounds[0].nodes,
            connections=rounds[0].connections,
            messages=sum(one.messages for one in rounds),
            ack_seconds=sum(one.ack_seconds for one in rounds),
            drain_seconds=sum(one.drain_seconds for one in rounds),
            backlog_at_last_ack=max(one.backlog_at_last_ack for one in rounds),
            latencies=[latency for one in rounds for latency in one.latencies],
            ack_cpu=CpuUse.merge([one.ack_cpu for one in rounds]),
            run_cpu=CpuUse.merge([one.run_cpu for one in rounds]),
            load_average=max(one.load_average for one in rounds),
            transactions=sum(one.transactions for one in rounds),
            delivered_by=dict(sorted(delivered.items())),
            round_rates=[one.rate for one in rounds],
        )

    @property
    def server(self) -> str:
        """The row name: ``1 node``, ``2 nodes``..."""
        return f"{self.nodes} node{'s' if self.nodes > 1 else ''}"

    @property
    def rate(self) -> float:
        """Orders ACKed per second."""
        return self.messages / self.ack_seconds

    @property
    def drain_rate(self) -> float:
        """Orders on the worklist per second, first order sent → last entry SENT."""
        return self.messages / self.drain_seconds

    def latency_ms(self, fraction: float) -> float:
        """ACK latency at ``fraction`` (nearest rank), in milliseconds."""
        return nearest_rank(self.latencies, fraction) * 1000

    def cpu_ms(self) -> dict[str, float]:
        """CPU milliseconds per order by part, over the whole run (ACK phase and drain)."""
        use = self.run_cpu
        return {
            "nodes": use.per_order_ms(use.nodes, self.messages),
            "postgres": use.per_order_ms(use.postgres, self.messages),
            "client": use.per_order_ms(use.client, self.messages),
        }


def _scalar(store: Engine, sql: str, **params: object) -> int:
    with store.connect() as conn:
        value = conn.execute(text(sql), params).scalar_one()
    return int(value or 0)


def wait_drained(store: Engine, after_id: int, expected: int) -> float:
    """Wait until the ``expected`` entries above ``after_id`` are SENT; the last one's time."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    counts = text(
        "SELECT count(*), count(*) FILTER (WHERE status <> 'SENT'),"
        " count(*) FILTER (WHERE status = 'ERROR'), extract(epoch FROM max(updated_at))"
        " FROM queue_entries WHERE id > :after"
    )
    while True:
        with store.connect() as conn:
            total, open_, errors, last = conn.execute(counts, {"after": after_id}).one()
        if errors:
            raise RuntimeError(f"{errors} queue entries in ERROR")
        if total >= expected and open_ == 0:
            return float(last)
        if time.monotonic() > deadline:
            raise RuntimeError(f"not drained after {DRAIN_TIMEOUT_SECONDS:.0f} s: {open_} open")
        time.sleep(0.05)


def _delivered_by(store: Engine, after_id: int) -> dict[str, int]:
    with store.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT coalesce(claimed_by, '-'), count(*) FROM queue_entries"
                " WHERE id > :after GROUP BY 1 ORDER BY 1"
            ),
            {"after": after_id},
        ).all()
    return {str(node): int(count) for node, count in rows}


def _transactions(admin: Engine, database: str) -> int:
    """Transactions committed or rolled back in ``database`` so far."""
    return _scalar(
        admin,
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :database",
        database=database,
    )


def _check_alive(nodes: list[HubProcess]) -> None:
    for index, node in enumerate(nodes):
        if node.proc.poll() is not None:
            raise RuntimeError(f"node-{index} exited:\n{node.log()[-3000:]}")


def run_nodes(count: int, messages: int, connections: int, workdir: Path) -> Result:
    """Start ``count`` nodes on a fresh database, warm them up, measure one load."""
    admin = create_engine(PG_ADMIN_URL)
    with fresh_database() as url:
        store = create_engine(url)
        nodes: list[HubProcess] = []
        try:
            for n in range(count):
                # One after the other: the first one creates the schema.
                nodes.append(
                    start_node(workdir / f"n{count}-{n}", f"node-{n}", url, worklist_channel)
                )
            ports = [node.mllp_port for node in nodes]
            warmup = build_messages(WARMUP_PER_CONNECTION * connections, f"W{count}")
            asyncio.run(_load(ports, warmup, connections))
            wait_drained(store, 0, len(warmup))
            base = _scalar(store, "SELECT coalesce(max(id), 0) FROM queue_entries")
            orders = build_messages(messages, f"N{count}")
            database = url.rsplit("/", 1)[1]
            pids = postgres_pids(admin, database)
            transactions = _transactions(admin, database)
            load_average = os.getloadavg()[0]

            before = CpuSample.take(nodes, pids)
            started_wall, started = time.time(), time.perf_counter()
            latencies = asyncio.run(_load(ports, orders, connections))
            ack_seconds = time.perf_counter() - started
            at_ack = CpuSample.take(nodes, pids)
            backlog = _scalar(
                store,
                "SELECT count(*) FROM queue_entries WHERE id > :after AND status <> 'SENT'",
                after=base,
            )
            drain_seconds = wait_drained(store, base, messages) - started_wall
            drained = CpuSample.take(nodes, postgres_pids(admin, database))
            _check_alive(nodes)
            time.sleep(STATS_FLUSH_SECONDS)
            transactions = _transactions(admin, database) - transactions
            return Result(
                nodes=count,
                connections=connections,
                messages=messages,
                ack_seconds=ack_seconds,
                drain_seconds=drain_seconds,
                backlog_at_last_ack=backlog,
                latencies=latencies,
                ack_cpu=CpuUse.between(before, at_ack),
                run_cpu=CpuUse.between(before, drained),
                load_average=load_average,
                transactions=transactions,
                delivered_by=_delivered_by(store, base),
                round_rates=[messages / ack_seconds],
            )
        finally:
            for node in nodes:
                node.stop()
            store.dispose()
            admin.dispose()


# -- report --------------------------------------------------------------------------------


def ratios(results: list[Result]) -> dict[int, tuple[float, float]]:
    """(ACK ratio, drain ratio) of each node count against 1 node (when 1 node ran)."""
    one = next((r for r in results if r.nodes == 1), None)
    if one is None:
        return {}
    return {r.nodes: (r.rate / one.rate, r.drain_rate / one.drain_rate) for r in results}


def print_table(results: list[Result]) -> None:
    """The figures, one line per node count, then where the CPU went."""
    against = ratios(results)
    print(
        f"{'nodes':>5}{'conns':>6}{'msg/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'drain/s':>9}"
        f"{'ratio':>7}{'drain' + TIMES:>8}{'backlog':>9}"
    )
    for r in results:
        ack_ratio, drain_ratio = against.get(r.nodes, (float("nan"), float("nan")))
        print(
            f"{r.nodes:>5}{r.connections:>6}{r.rate:>8.0f}{r.latency_ms(0.5):>8.1f}"
            f"{r.latency_ms(0.99):>8.1f}{r.drain_rate:>9.0f}{ack_ratio:>7.2f}{drain_ratio:>8.2f}"
            f"{r.backlog_at_last_ack:>9}"
        )
    print(
        f"ratio, drain{TIMES}: msg/s and drain msg/s against 1 node; backlog: orders not yet on"
        " the worklist at the last ACK"
    )
    print()
    print(f"CPU while ACKing, in cores of {CORES} (CPU seconds per second), and per order:")
    print(
        f"{'nodes':>5}{'busy':>7}{'nodes':>7}{'/node':>7}{'pg':>7}{'client':>8}{'other':>7}"
        f"{'load':>7}{'node ms':>9}{'pg ms':>7}{'cli ms':>8}{'tx/order':>10}"
    )
    for r in results:
        use, ms = r.ack_cpu, r.cpu_ms()
        print(
            f"{r.nodes:>5}{use.busy:>7.2f}{use.nodes:>7.2f}{use.nodes / r.nodes:>7.2f}"
            f"{use.postgres:>7.2f}{use.client:>8.2f}{use.other:>7.2f}{r.load_average:>7.2f}"
            f"{ms['nodes']:>9.2f}{ms['postgres']:>7.2f}{ms['client']:>8.2f}"
            f"{r.transactions / r.messages:>10.2f}"
        )
    print(
        "busy: the whole machine; pg: this database's backends + WAL writer/checkpointer;"
        " other: busy minus nodes, pg and client (other work on the machine); load: 1-min"
        " load average before the run; ms: CPU per order over ACK + drain; tx/order:"
        " PostgreSQL transactions per order (commits are shared by several orders)"
    )


def verdict(results: list[Result]) -> str:
    """The target and whether this run met it, with the measured ratio."""
    against = ratios(results)
    if 2 not in against:
        return f"target 2 nodes ≥ {TARGET_RATIO}{TIMES} one node: not evaluated (needs --nodes 1 2)"
    measured = against[2][0]
    status = "met" if measured >= TARGET_RATIO else "NOT met"
    return (
        f"target 2 nodes ≥ {TARGET_RATIO}{TIMES} one node's msg/s: {status}"
        f" (measured {measured:.2f}{TIMES})"
    )


def analysis(results: list[Result]) -> list[str]:
    """Where the time goes, from the CPU counters (notes for the report)."""
    notes: list[str] = []
    for r in results:
        use, ms = r.ack_cpu, r.cpu_ms()
        total = sum(ms.values())
        delivered = ", ".join(f"{node} {count}" for node, count in r.delivered_by.items())
        notes.append(
            f"{r.server}: {use.busy:.2f} of {CORES} cores busy while ACKing (nodes"
            f" {use.nodes:.2f}, i.e. {use.nodes / r.nodes:.2f} per node; PostgreSQL"
            f" {use.postgres:.2f}; client {use.client:.2f}; other work {use.other:.2f});"
            f" CPU per order {ms['nodes']:.1f} ms nodes + {ms['postgres']:.1f} ms PostgreSQL"
            f" + {ms['client']:.1f} ms client = {total:.1f} ms, i.e. at most"
            f" ~{CORES * 1000 / total:.0f} orders/s if all {CORES} cores did nothing else;"
            f" {r.transactions / r.messages:.2f} PostgreSQL transactions per order;"
            f" worklist deliveries by node: {delivered}"
        )
    return notes


def rows(results: list[Result]) -> list[Row]:
    """The report rows: ACK throughput and drain throughput, each node count against 1 node."""
    anchor = "1 node" if any(r.nodes == 1 for r in results) else None
    out: list[Row] = []
    for r in results:
        use, ms = r.ack_cpu, r.cpu_ms()
        out.append(
            Row(
                case=f"ACK, {r.connections} connections",
                server=r.server,
                anchor=anchor if r.nodes != 1 else None,
                throughput=r.rate,
                unit="msg/s",
                p50_ms=r.latency_ms(0.5),
                p95_ms=r.latency_ms(0.95),
                p99_ms=r.latency_ms(0.99),
                count=r.messages,
                samples=[round(rate, 1) for rate in r.round_rates],
                params={
                    "cores busy": round(use.busy, 2),
                    "nodes": round(use.nodes, 2),
                    "PostgreSQL": round(use.postgres, 2),
                    "other": round(use.other, 2),
                    "CPU ms/order": round(sum(ms.values()), 1),
                    "PostgreSQL tx/order": round(r.transactions / r.messages, 2),
                },
            )
        )
    for r in results:
        out.append(
            Row(
                case="drain: first order sent → all on the worklist",
                server=r.server,
                anchor=anchor if r.nodes != 1 else None,
                throughput=r.drain_rate,
                unit="msg/s",
                count=r.messages,
                params={
                    "backlog at last ACK": r.backlog_at_last_ack,
                    "delivered by": " ".join(f"{k}:{v}" for k, v in r.delivered_by.items()),
                },
            )
        )
    return out


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds: nodes stopped, databases dropped


def main() -> None:
    """Measure each node count, print the tables and the verdict, write the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, help="orders per node count (default 3000)")
    parser.add_argument(
        "--connections", type=int, default=12, help="EHR connections, dealt over the nodes"
    )
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3], metavar="N")
    parser.add_argument(
        "--rounds",
        type=int,
        help="split the orders over this many rounds, node counts in 1 2 3, 3 2 1... order"
        " (default 2; --quick: 1)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 300 orders, 1 round")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    messages = args.messages or (300 if args.quick else 3000)
    rounds = args.rounds or (1 if args.quick else 2)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    try:
        version = postgres_version()
    except OperationalError as exc:
        sys.exit(f"PostgreSQL not reachable at {PG_ADMIN_URL} ({exc.__class__.__name__})")
    started = time.monotonic()
    measured: dict[int, list[Result]] = {count: [] for count in args.nodes}
    with tempfile.TemporaryDirectory(prefix="meridian-cluster-") as workdir:
        for round_ in range(rounds):
            # Back and forth, so a change of the machine's other load hits every node count.
            order = args.nodes if round_ % 2 == 0 else args.nodes[::-1]
            for count in order:
                where = Path(workdir) / f"round{round_}"
                result = run_nodes(count, messages // rounds, args.connections, where)
                print(
                    f"round {round_ + 1}, {result.server}: {result.rate:.0f} msg/s ACKed,"
                    f" drained at {result.drain_rate:.0f} msg/s;"
                    f" other work {result.ack_cpu.other:.2f} cores",
                    flush=True,
                )
                measured[count].append(result)
    results = [Result.merge(measured[count]) for count in args.nodes]

    print()
    print(
        f"orders-to-worklist on {version}, {messages // rounds * rounds} ORM^O01 per node"
        f" count in {rounds} round(s), {args.connections} connections dealt round robin over"
        " the nodes"
    )
    print_table(results)
    print()
    print(verdict(results))
    notes = analysis(results)
    for note in notes:
        print(note)
    caveat = (
        f"This machine has {CORES} CPU cores, shared by the nodes, PostgreSQL and the client:"
        " a second node can only use what one node leaves idle, a third competes with the"
        " others for the same cores."
    )
    print(caveat)
    print(f"total {time.monotonic() - started:.0f} s")
    if args.json:
        header = (
            f"{messages // rounds * rounds} orders per node count in {rounds} round(s) (node"
            f" counts {' '.join(map(str, args.nodes))}, then back), each round on a fresh"
            f" database after a warm-up of {WARMUP_PER_CONNECTION} orders per connection;"
            " figures are totals over the rounds, `each:` lists each round's msg/s"
        )
        output = Output(
            "cluster",
            "throughput",
            rows(results),
            [header, verdict(results), *notes, caveat],
            {"postgresql": version},
        )
        write_json(args.json, output)


if __name__ == "__main__":
    main()
