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
import random
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import create_engine

from connectors.dicom_mwl import MODALITY_WORKLIST_FIND, DicomListenerConfig, MWLServer
from engine.worklist import WorklistStore, worklist_items
from engine.worklist_item import WorklistItem

SEED = 20240105
CALLED_AE = "MERIDIAN"
CALLING_AE = "BENCHSCU"
HOST = "127.0.0.1"

# (modality, share of the daily volume, stations)
MODALITIES = [
    ("CT", 0.28, ["CT1", "CT2", "CT3", "CT4"]),
    ("MR", 0.18, ["MR1", "MR2", "MR3"]),
    ("CR", 0.22, ["CR1", "CR2", "CR3"]),
    ("US", 0.16, ["US1", "US2", "US3", "US4"]),
    ("MG", 0.08, ["MG1", "MG2"]),
    ("NM", 0.08, ["NM1"]),
]
FAMILY = ["Smith", "Jones", "Garcia", "Müller", "Nguyen", "Kowalski", "Rossi", "Dubois",
          "Larsen", "Yilmaz", "Brown", "Schäfer", "Novak", "Silva", "Martin", "Olsen"]  # fmt: skip
GIVEN = ["Anna", "Ben", "Chloé", "David", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jonas",
         "Karin", "Liam", "Maria", "Noah", "Olga", "Paul", "René", "Sara"]  # fmt: skip


# -- synthetic items ------------------------------------------------------------


def synthetic_item(index: int, n: int, per_day: int, today: date) -> dict[str, Any]:
    """Item ``index`` of ``n``: the same attributes every run (seeded by index)."""
    rng = random.Random(SEED * 1_000_003 + index)
    days = max(1, n // per_day)
    ahead = min(7, days // 4)  # mostly history, up to a week scheduled ahead
    day = today + timedelta(days=(index % days) - (days - 1 - ahead))
    modality, stations = _pick_modality(rng)
    minutes = 7 * 60 + rng.randrange(0, 12 * 60, 5)
    patient = rng.randrange(max(1, n // 3))
    return {
        "PatientID": f"P{patient:07d}",
        "PatientName": f"{FAMILY[patient % len(FAMILY)]}^{GIVEN[patient % len(GIVEN)]}",
        "PatientBirthDate": f"{1930 + patient % 80}{1 + patient % 12:02d}{1 + patient % 28:02d}",
        "PatientSex": "MF"[patient % 2],
        "AccessionNumber": f"A{index:09d}",
        "RequestedProcedureID": f"RP{index:08d}",
        "RequestedProcedureDescription": f"{modality} examination",
        "StudyInstanceUID": f"1.2.826.0.1.3680043.10.1434.{SEED}.{index}",
        "ReferringPhysicianName": "Referrer^Rita",
        "ScheduledProcedureStepSequence": [
            {
                "Modality": modality,
                "ScheduledStationAETitle": rng.choice(stations),
                "ScheduledProcedureStepStartDate": day.strftime("%Y%m%d"),
                "ScheduledProcedureStepStartTime": f"{minutes // 60:02d}{minutes % 60:02d}00",
                "ScheduledProcedureStepID": f"SPS{index:08d}",
                "ScheduledProcedureStepDescription": f"{modality} examination",
                "ScheduledPerformingPhysicianName": "Tech^Tom",
            }
        ],
    }


def _pick_modality(rng: random.Random) -> tuple[str, list[str]]:
    roll = rng.random()
    for modality, share, stations in MODALITIES:
        if roll < share:
            return modality, stations
        roll -= share
    return MODALITIES[-1][0], MODALITIES[-1][2]


def typical_queries(count: int, n: int, today: date) -> list[Dataset]:
    """What modalities ask all day: 40% modality+today, 30% station+today, 15% PID, 15% ACC."""
    rng = random.Random(SEED)
    day = today.strftime("%Y%m%d")
    queries = []
    for number in range(count):
        kind = number % 20
        if kind < 8:
            queries.append(_query(step={"Modality": rng.choice(MODALITIES)[0]}, date_=day))
        elif kind < 14:
            station = rng.choice(rng.choice(MODALITIES)[2])
            queries.append(_query(step={"ScheduledStationAETitle": station}, date_=day))
        elif kind < 17:
            queries.append(_query(PatientID=f"P{rng.randrange(max(1, n // 3)):07d}"))
        else:
            queries.append(_query(AccessionNumber=f"A{rng.randrange(n):09d}"))
    return queries


def _query(step: dict[str, str] | None = None, date_: str = "", **keys: str) -> Dataset:
    """A modality's identifier: its matching keys plus the usual return keys."""
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "AccessionNumber", "RequestedProcedureID", "RequestedProcedureDescription",
                    "StudyInstanceUID", "ReferringPhysicianName"):  # fmt: skip
        setattr(ds, keyword, keys.get(keyword, ""))
    item = Dataset()
    for keyword in ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartTime",
                    "ScheduledProcedureStepID", "ScheduledProcedureStepDescription",
                    "ScheduledPerformingPhysicianName"):  # fmt: skip
        setattr(item, keyword, (step or {}).get(keyword, ""))
    item.ScheduledProcedureStepStartDate = date_
    ds.ScheduledProcedureStepSequence = [item]
    return ds


# -- the two servers ------------------------------------------------------------


def load_store(db: Path, n: int, per_day: int, today: date) -> float:
    """Apply N create actions through WorklistStore.apply; returns the seconds taken."""
    engine = create_engine(f"sqlite:///{db}")
    worklist_items.create(engine)
    store = WorklistStore(engine)
    started = time.perf_counter()
    for first in range(0, n, 5000):
        with engine.begin() as conn:
            for index in range(first, min(n, first + 5000)):
                attributes = synthetic_item(index, n, per_day, today)
                item = WorklistItem(action="create", key=f"ORD{index}", attributes=attributes)
                store.apply(conn, item)
    engine.dispose()
    return time.perf_counter() - started


def _element(tag: int, vr: str, value: str) -> bytes:
    """One explicit VR little endian element with a 2-byte length (text VRs only)."""
    raw = value.encode("latin-1")  # every synthetic value fits ISO_IR 100
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


def _encode(attributes: dict[str, Any]) -> bytes:
    """A dataset (text values and sequences) as explicit VR little endian bytes.

    Hand-rolled because pydicom's writer made 100k files take minutes; the
    result is checked by wlmscpfs answering with the same matches as Meridian.
    """
    encoded = b""
    for tag, keyword in sorted((_tag(k), k) for k in attributes):
        value = attributes[keyword]
        if dictionary_VR(keyword) != "SQ":
            encoded += _element(tag, dictionary_VR(keyword), value)
            continue
        items = b"".join(
            struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
            + _encode(item)
            + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            for item in value
        )
        encoded += struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, 0xFFFFFFFF)
        encoded += items + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return encoded


def _file_meta(instance_uid: str) -> bytes:
    group = (
        struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2)
        + b"\x00\x01"
        + _element(0x00020002, "UI", MODALITY_WORKLIST_FIND)
        + _element(0x00020003, "UI", instance_uid)
        + _element(0x00020010, "UI", ExplicitVRLittleEndian)
        + _element(0x00020012, "UI", PYDICOM_IMPLEMENTATION_UID)
    )
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group))
    return b"\0" * 128 + b"DICM" + length + group


def write_wl_files(root: Path, n: int, per_day: int, today: date) -> float:
    """The same items as wlmscpfs data files (``root/<called AE>/*.wl`` and a lockfile)."""
    folder = root / CALLED_AE
    folder.mkdir(parents=True)
    (folder / "lockfile").touch()
    started = time.perf_counter()
    for index in range(n):
        attributes = {
            "SpecificCharacterSet": "ISO_IR 100",
            **synthetic_item(index, n, per_day, today),
        }
        instance_uid = f"{attributes['StudyInstanceUID']}.1"
        (folder / f"item{index:07d}.wl").write_bytes(_file_meta(instance_uid) + _encode(attributes))
    return time.perf_counter() - started


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


def bench_size(n: int, args: argparse.Namespace, today: date) -> list[str]:
    """Build both servers for N items, measure, and return the table rows."""
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"mwl-bench-{n}-") as tmp:
        work = Path(tmp)
        loaded = load_store(work / "worklist.db", n, args.per_day, today)
        written = write_wl_files(work / "wlistdb", n, args.per_day, today)
        print(
            f"N={n}: store load {loaded:.1f}s, .wl files {written:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        queries = typical_queries(args.queries, n, today)
        meridian = Meridian.start(work / "worklist.db")
        dcmtk, dcmtk_port = start_wlmscpfs(work / "wlistdb")
        try:
            for persistent in (False, True):
                mode = "persistent" if persistent else "per-query"
                ours = measure(meridian.port, queries, persistent, budget=float("inf"))
                theirs = measure(dcmtk_port, queries, persistent, budget=args.dcmtk_budget)
                _check_same_matches(ours, theirs, n, mode)
                rows.append(_row(n, mode, ours, theirs))
                rows.extend(_by_kind(n, mode, ours))
        finally:
            meridian.stop()
            dcmtk.terminate()
            dcmtk.wait(10)
    return rows


def _check_same_matches(ours: Run, theirs: Run, n: int, mode: str) -> None:
    compared = len(theirs.counts)
    if ours.counts[:compared] != theirs.counts:
        diff = sum(a != b for a, b in zip(ours.counts, theirs.counts, strict=False))
        print(f"WARNING N={n} {mode}: {diff} queries matched differently", file=sys.stderr)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f}"


def _row(n: int, mode: str, ours: Run, theirs: Run) -> str:
    # Same queries on both sides: wlmscpfs may have run only the first ones.
    ratio = theirs.percentile(50) / ours.head(len(theirs.latencies)).percentile(50)
    matches = statistics.mean(ours.counts)
    return (
        f"{n:>7} {mode:<10} {len(ours.latencies):>4} {_ms(ours.percentile(50))} "
        f"{_ms(ours.percentile(99))} {len(theirs.latencies):>4} {_ms(theirs.percentile(50))} "
        f"{_ms(theirs.percentile(99))} {ratio:>8.1f}x {matches:>7.1f}"
    )


def _query_kind(index: int) -> str:
    """The kind of query ``index`` of :func:`typical_queries` (same modulo rule)."""
    kind = index % 20
    if kind < 14:
        return "modality/station + today"
    return "patient ID / accession"


def _by_kind(n: int, mode: str, ours: Run) -> list[str]:
    """Meridian's p50/p99 per kind of query: a list of the day vs one order."""
    rows = []
    for kind in ("modality/station + today", "patient ID / accession"):
        picked = [i for i in range(len(ours.latencies)) if _query_kind(i) == kind]
        part = Run([ours.latencies[i] for i in picked], [ours.counts[i] for i in picked])
        rows.append(
            f"{'':>7} {'':<10} {len(picked):>4} {_ms(part.percentile(50))} "
            f"{_ms(part.percentile(99))}   <- {kind}, {statistics.mean(part.counts):.1f} matches"
        )
    return rows


def _header() -> Iterator[str]:
    yield "                      ---- Meridian MWLServer ---  --------- wlmscpfs --------"
    yield "      N mode          qry   p50 ms    p99 ms  qry   p50 ms    p99 ms  p50 ratio matches"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--per-day", type=int, default=300, help="items scheduled per day")
    parser.add_argument(
        "--dcmtk-budget", type=float, default=20.0, help="seconds per N and mode for wlmscpfs"
    )
    args = parser.parse_args()
    if shutil.which("wlmscpfs") is None:
        print("dcmtk's wlmscpfs is not installed", file=sys.stderr)
        return 1
    today = date.today()
    rows = [row for n in args.items for row in bench_size(n, args, today)]
    print(f"MWL C-FIND latency, {args.queries} typical modality queries, {args.per_day} items/day")
    print(*_header(), *rows, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
