"""C-FIND latency: Meridian's MWL SCP next to dcmtk's wlmscpfs, same items, queries and client.

    .venv/bin/python bench/mwl.py [--items 10000 100000] [--queries 200]

For each worklist size N the script

1. generates N synthetic items (deterministic seed; a constant daily volume,
   ``--per-day``, so a bigger N means a longer history, as in a real store:
   today's queries return the same number of matches for every N, and what
   changes is only how much the server has to search through);
2. loads them into a :class:`WorklistStore` on SQLite (a temp dir) and serves
   them with :class:`MWLServer` in a child process (its own GIL, as wlmscpfs
   has its own process);
3. writes the same items as ``.wl`` files for ``wlmscpfs -dfp DIR -dfr``
   (``DIR/<called AE>/*.wl`` plus a ``lockfile``) and starts it on another
   port, in its default mode (a forked child per association);
4. sends the same typical modality queries to both with one pynetdicom SCU:
   modality + today, station AE + today, patient ID, accession number. Two
   ways: a new association per query (what most modalities do) and one
   persistent association for all queries;
5. prints p50/p99 latency per server, mode and N, and the ratio.

wlmscpfs reads every file on every query, so at large N its queries take
seconds; ``--dcmtk-budget`` caps the seconds spent per (N, mode) on it (the
table says how many queries it ran). With the defaults the whole run takes
about 4 minutes on a 2-core VM (generating and loading the 100k items is
about half of it).
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom import AE
from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.mwl_items import (
    CALLED_AE,
    load_store,
    typical_queries,
    write_wl_files,
)
from bench.rows import Output, Row, tool_version, write_json
from connectors.dicom_mwl import MODALITY_WORKLIST_FIND, DicomListenerConfig, MWLServer
from engine.worklist import WorklistStore

CALLING_AE = "BENCHSCU"
HOST = "127.0.0.1"


# -- the two servers ------------------------------------------------------------


def _serve_meridian(db: Path, conn: multiprocessing.connection.Connection) -> None:
    engine = create_engine(f"sqlite:///{db}")
    config = DicomListenerConfig(ae_title=CALLED_AE, host=HOST, port=0, max_associations=50)
    server = MWLServer(config, WorklistStore(engine))
    server.start()
    conn.send(server.bound_port)
    conn.recv()  # until the parent says stop
    server.stop()


@dataclass
class Meridian:
    """MWLServer in a child process."""

    process: multiprocessing.process.BaseProcess
    pipe: multiprocessing.connection.Connection
    port: int

    @classmethod
    def start(cls, db: Path) -> Meridian:
        parent, child = multiprocessing.get_context("fork").Pipe()
        process = multiprocessing.get_context("fork").Process(
            target=_serve_meridian, args=(db, child), daemon=True
        )
        process.start()
        return cls(process, parent, int(parent.recv()))

    def stop(self) -> None:
        self.pipe.send("stop")
        self.process.join(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def start_wlmscpfs(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    process = subprocess.Popen(
        ["wlmscpfs", "-dfp", str(root), "-dfr", "--max-associations", "50", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return process, port
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("wlmscpfs did not start listening")


# -- measuring ------------------------------------------------------------------


@dataclass
class Run:
    """Latencies (seconds) and result counts of one server, mode and N."""

    latencies: list[float]
    counts: list[int]

    def head(self, count: int) -> Run:
        """The first ``count`` queries (to compare with a budget-capped run)."""
        return Run(self.latencies[:count], self.counts[:count])

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _client() -> AE:
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    return ae


def _find(assoc: Any, identifier: Dataset) -> int:
    matches = 0
    for status, _ in assoc.send_c_find(identifier, MODALITY_WORKLIST_FIND):
        if status.Status == 0xFF00:
            matches += 1
        elif status.Status != 0x0000:
            raise RuntimeError(f"C-FIND failed with status 0x{status.Status:04X}")
    return matches


def _no_delay(assoc: Any) -> None:
    """TCP_NODELAY on the client socket, as dcmtk and most modality stacks set it.

    pynetdicom sends a C-FIND request as two PDUs (command, then identifier);
    with Nagle on, the second waits for the server's delayed ACK and every
    query gains ~40 ms whatever the server does.
    """
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # The client's reactor polls every 1 ms by default, which would add ~1 ms per
    # response received to both servers' figures; dcmtk's findscu does not poll.
    assoc.dul._run_loop_delay = 0.0001


def measure(port: int, queries: list[Dataset], persistent: bool, budget: float) -> Run:
    """Time each query; stop early once ``budget`` seconds are spent."""
    ae = _client()
    run = Run([], [])
    started = time.perf_counter()
    assoc = ae.associate(HOST, port, ae_title=CALLED_AE) if persistent else None
    if assoc is not None:
        _no_delay(assoc)
    for identifier in queries:
        if time.perf_counter() - started > budget:
            break
        began = time.perf_counter()
        current = assoc if assoc is not None else ae.associate(HOST, port, ae_title=CALLED_AE)
        if not current.is_established:
            raise RuntimeError("association refused")
        if assoc is None:
            _no_delay(current)
        run.counts.append(_find(current, identifier))
        if assoc is None:
            current.release()
        run.latencies.append(time.perf_counter() - began)
    if assoc is not None:
        assoc.release()
    return run


# -- the run --------------------------------------------------------------------

MODES = {"per-query": "association per query", "persistent": "persistent association"}
KINDS = {
    "modality/station + today": "meridian, day's list (modality/station + today)",
    "patient ID / accession": "meridian, one order (patient ID / accession)",
}


@dataclass
class Measured:
    """Both servers' runs for one N and mode."""

    n: int
    mode: str
    ours: Run
    theirs: Run


def bench_size(n: int, args: argparse.Namespace, today: date) -> list[Measured]:
    """Build both servers for N items and measure both modes."""
    measured = []
    with tempfile.TemporaryDirectory(prefix=f"mwl-bench-{n}-") as tmp:
        work = Path(tmp)
        # The .wl files are written by a child while this process loads the store (2 cores).
        writer = multiprocessing.get_context("fork").Process(
            target=write_wl_files, args=(work / "wlistdb", n, args.per_day, today)
        )
        writer.start()
        loaded = load_store(work / "worklist.db", n, args.per_day, today)
        writer.join()
        if writer.exitcode != 0:
            raise RuntimeError(f"writing the .wl files failed (exit code {writer.exitcode})")
        print(f"N={n}: store loaded in {loaded:.1f}s", file=sys.stderr, flush=True)
        queries = typical_queries(args.queries, n, today)
        meridian = Meridian.start(work / "worklist.db")
        dcmtk, dcmtk_port = start_wlmscpfs(work / "wlistdb")
        try:
            for persistent in (False, True):
                mode = "persistent" if persistent else "per-query"
                ours = measure(meridian.port, queries, persistent, budget=float("inf"))
                theirs = measure(dcmtk_port, queries, persistent, budget=args.dcmtk_budget)
                _check_same_matches(ours, theirs, n, mode)
                measured.append(Measured(n, mode, ours, theirs))
        finally:
            meridian.stop()
            dcmtk.terminate()
            dcmtk.wait(10)
    return measured


def _check_same_matches(ours: Run, theirs: Run, n: int, mode: str) -> None:
    compared = len(theirs.counts)
    if ours.counts[:compared] != theirs.counts:
        diff = sum(a != b for a, b in zip(ours.counts, theirs.counts, strict=False))
        print(f"WARNING N={n} {mode}: {diff} queries matched differently", file=sys.stderr)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f}"


def _ratio(m: Measured) -> float:
    """wlmscpfs p50 ÷ Meridian p50 over the same queries (wlmscpfs may have run only the first)."""
    return m.theirs.percentile(50) / m.ours.head(len(m.theirs.latencies)).percentile(50)


def _row(m: Measured) -> str:
    ours, theirs = m.ours, m.theirs
    matches = statistics.mean(ours.counts)
    return (
        f"{m.n:>7} {m.mode:<10} {len(ours.latencies):>4} {_ms(ours.percentile(50))} "
        f"{_ms(ours.percentile(99))} {len(theirs.latencies):>4} {_ms(theirs.percentile(50))} "
        f"{_ms(theirs.percentile(99))} {_ratio(m):>8.1f}x {matches:>7.1f}"
    )


def _query_kind(index: int) -> str:
    """The kind of query ``index`` of :func:`typical_queries` (same modulo rule)."""
    kind = index % 20
    if kind < 14:
        return "modality/station + today"
    return "patient ID / accession"


def _kinds(ours: Run) -> Iterator[tuple[str, Run]]:
    """Meridian's run split by kind of query: a list of the day vs one order."""
    for kind in KINDS:
        picked = [i for i in range(len(ours.latencies)) if _query_kind(i) == kind]
        yield kind, Run([ours.latencies[i] for i in picked], [ours.counts[i] for i in picked])


def _by_kind(m: Measured) -> list[str]:
    """Meridian's p50/p99 per kind of query."""
    return [
        f"{'':>7} {'':<10} {len(part.latencies):>4} {_ms(part.percentile(50))} "
        f"{_ms(part.percentile(99))}   <- {kind}, {statistics.mean(part.counts):.1f} matches"
        for kind, part in _kinds(m.ours)
    ]


def _header() -> Iterator[str]:
    yield "                      ---- Meridian MWLServer ---  --------- wlmscpfs --------"
    yield "      N mode          qry   p50 ms    p99 ms  qry   p50 ms    p99 ms  p50 ratio matches"


def _report_row(m: Measured, server: str, run: Run, anchor: str | None = None) -> Row:
    return Row(
        case=f"{m.n:,} items, {MODES[m.mode]}",
        server=server,
        anchor=anchor,
        p50_ms=run.percentile(50) * 1000,
        p95_ms=run.percentile(95) * 1000,
        p99_ms=run.percentile(99) * 1000,
        count=len(run.latencies),
        params={"matches": round(statistics.mean(run.counts), 1)},
    )


def report_rows(measured: list[Measured]) -> list[Row]:
    """The JSON rows: wlmscpfs (anchor), Meridian, and Meridian by kind of query."""
    rows = []
    for m in measured:
        ours = _report_row(m, "meridian", m.ours, anchor="wlmscpfs")
        compared = len(m.theirs.latencies)
        ours.basis = m.ours.head(compared).percentile(50) * 1000
        ours.params["ratio on"] = f"p50 {ours.basis:.1f} ms of the same first {compared} queries"
        rows += [_report_row(m, "wlmscpfs", m.theirs), ours]
        rows += [_report_row(m, KINDS[kind], part) for kind, part in _kinds(m.ours)]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--per-day", type=int, default=300, help="items scheduled per day")
    parser.add_argument(
        "--dcmtk-budget", type=float, default=20.0, help="seconds per N and mode for wlmscpfs"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    if shutil.which("wlmscpfs") is None:
        print("dcmtk's wlmscpfs is not installed", file=sys.stderr)
        return 1
    today = date.today()
    measured = [m for n in args.items for m in bench_size(n, args, today)]
    rows = [line for m in measured for line in (_row(m), *_by_kind(m))]
    print(f"MWL C-FIND latency, {args.queries} typical modality queries, {args.per_day} items/day")
    print(*_header(), *rows, sep="\n")
    if args.json:
        notes = [
            f"{args.queries} typical modality queries per N and mode, {args.per_day} items per "
            f"day; wlmscpfs capped at {args.dcmtk_budget:g} s per N and mode (its queries column); "
            "Meridian's ratio compares the same first queries wlmscpfs ran"
        ]
        output = Output("mwl", "p50_ms", report_rows(measured), notes, count_label="queries")
        output.versions["dcmtk"] = tool_version("wlmscpfs")
        write_json(args.json, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
