"""C-STORE ingest throughput: Meridian's Storage SCP next to a bare pynetdicom SCP and Orthanc.

    .venv/bin/python bench/store.py [--images 400] [--rows 512] [--rounds 5] [--db postgresql]
                                    [--dir /dev/shm] [--no-orthanc] [--json PATH]

The script writes ``--images`` synthetic CT images (``rows x rows`` 16-bit
pixels: 512 gives 512 KB each; 4 series of one study) once, then, for each
round, sends the whole folder with **one** ``storescu +sd`` run (one
association, one C-STORE after another, as a modality does) to each server in
turn, every server starting on fresh, empty storage:

* ``bare``: pynetdicom with the same presentation contexts and connection
  tuning as the hub, whose C-STORE handler only writes
  ``event.encoded_dataset()`` to ``<dir>/<SOPInstanceUID>.dcm``, no fsync
  (the floor: what pynetdicom costs);
* ``bare+fsync``: the same with the hub's file durability (temporary file,
  fsync, rename, fsync of the folder), no index: the fair baseline;
* ``meridian``: :class:`DicomListener` + :class:`StorageService` +
  :class:`DicomSource` + :class:`Archive` on a fresh store (SQLite by default;
  ``--db postgresql``: a fresh database on 127.0.0.1:5432 per run): header
  check, durable file, index row through the group committer, then the
  quiet-period assembly (its batch is awaited after the timing, with the
  quiet period reported apart);
* ``orthanc``: the Orthanc binary, temp config, default storage settings,
  ``TCP_NODELAY=1`` in its environment (see :func:`orthanc`).

The Python servers run in child processes (their own GIL, as Orthanc has its
own process). The table shows the median over rounds: images/s, MB/s and the
ratio to ``bare`` and ``bare+fsync``, after one warm-up round that is not
counted. About 2 minutes with the defaults on a 2-core VM. ``--dir /dev/shm``
takes the disk out (fsync is free on tmpfs): what is left is CPU and protocol.
``--json PATH`` also writes the rows for ``bench/run_all.py`` (bench/rows.py):
each server against its anchor (``bare+fsync`` against ``bare``, ``meridian``
and ``orthanc`` against ``bare+fsync``), with the seconds of every round.

Hook for the rest of the pipeline: :func:`channel_handler` is what the
DicomSource hands each batch to; it only counts today. When normalization
and routing are wired in the hub, build the channel's runtime there (the
batch JSON goes to ``ChannelRuntime.handle``) so the run measures them too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.rows import Output, Row, tool_version, write_json
from connectors.base import InboundHandler, Origin
from tests.support.dicom_files import write_study

HOST = "127.0.0.1"
HUB_AE = "CT_IN"
QUIET_SECONDS = 1.0

Pipe = multiprocessing.connection.Connection


# -- the servers (child processes) ------------------------------------------------------


def _tune(event: Any) -> None:
    """The hub listener's connection tuning (TCP_NODELAY, 0.1 ms reactor poll)."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    event.assoc.dul._run_loop_delay = 0.0001


def _serve_bare(directory: Path, fsync: bool, conn: Pipe) -> None:
    from pydicom.uid import UID
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.events import EventHandlerType

    from connectors.dicom_store import STORAGE_TRANSFER_SYNTAXES

    def on_store(event: Any) -> int:
        path = directory / f"{event.request.AffectedSOPInstanceUID}.dcm"
        data = event.encoded_dataset()
        if not fsync:
            path.write_bytes(data)
            return 0x0000
        temporary = path.with_name(f".{path.name}.tmp")
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        folder = os.open(directory, os.O_RDONLY)
        os.fsync(folder)
        os.close(folder)
        return 0x0000

    ae = AE(ae_title="BARE")
    syntaxes: list[str | UID] = list(STORAGE_TRANSFER_SYNTAXES)
    for context in AllStoragePresentationContexts:  # the hub's contexts
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, syntaxes)
    handlers: list[EventHandlerType] = [(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, _tune)]
    server = ae.start_server((HOST, 0), block=False, evt_handlers=handlers)
    assert server is not None
    conn.send(server.server_address[1])
    conn.recv()
    server.shutdown()
    conn.send({"stored": len(list(directory.glob("*.dcm")))})


def channel_handler(batches: list[str]) -> InboundHandler:
    """The channel's side of the DicomSource (the hook for normalization and routing)."""

    async def handle(raw: bytes, origin: Origin) -> bytes | None:
        batches.append(raw.decode())
        return None

    return handle


def _serve_meridian(directory: Path, db_url: str, conn: Pipe) -> None:
    asyncio.run(_meridian(directory, db_url, conn))


async def _meridian(directory: Path, db_url: str, conn: Pipe) -> None:
    from connectors.dicom_mwl import DicomListener, DicomListenerConfig
    from connectors.dicom_store import DicomSource, DicomSourceConfig, StorageService
    from engine.archive import Archive
    from engine.store.db import open_engine
    from engine.store.group_commit import GroupCommitter

    store = open_engine(db_url)
    committer = GroupCommitter(store)
    committer.start()
    archive = Archive(directory / "archive", store, committer)
    storage = StorageService(archive)
    listener = DicomListener(DicomListenerConfig(host=HOST, port=0))
    listener.add_service(storage)
    listener.start()
    config = DicomSourceConfig(type="dicom", ae_title=HUB_AE, quiet_period_seconds=QUIET_SECONDS)
    source = DicomSource(config, channel="bench", storage=storage, archive=archive)
    batches: list[str] = []
    await source.start(channel_handler(batches))
    conn.send(listener.bound_port)
    await asyncio.to_thread(conn.recv)  # storescu finished
    started = time.perf_counter()
    while not batches and time.perf_counter() - started < 30:
        await asyncio.sleep(0.01)
    assembled = time.perf_counter() - started
    await source.stop()
    listener.stop()
    committer.stop()
    store.dispose()
    instances = len(json.loads(batches[0])["instances"]) if batches else 0
    conn.send(
        {
            "stored": instances,
            "batch_after": assembled,
            "commits": committer.commits,
            "operations": committer.operations,
        }
    )


@contextmanager
def python_server(target: Callable[..., None], *args: Any) -> Iterator[tuple[int, Pipe]]:
    """Run ``target(*args, conn)`` in a child process; yields (port, conn)."""
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(target=target, args=(*args, child), daemon=True)
    process.start()
    try:
        yield parent.recv(), parent
    finally:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()


# -- Orthanc ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def orthanc(directory: Path) -> Iterator[tuple[int, str]]:
    """Orthanc on free ports with its storage in ``directory``; yields (DICOM port, URL)."""
    dicom_port, http_port = _free_port(), _free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(directory / "storage"),
        "IndexDirectory": str(directory / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": False,
        "Plugins": [],
    }
    directory.mkdir(parents=True)
    (directory / "orthanc.json").write_text(json.dumps(config))
    log = (directory / "orthanc.log").open("wb")
    # dcmtk (inside Orthanc) leaves Nagle's algorithm on unless TCP_NODELAY is set
    # in its environment: every C-STORE response then waits ~40 ms for the
    # peer's delayed ACK (400 images: ~20 s instead of ~5 s). The hub's listener
    # sets TCP_NODELAY itself, so Orthanc gets it too.
    process = subprocess.Popen(
        ["Orthanc", str(directory / "orthanc.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    url = f"http://{HOST}:{http_port}"
    try:
        _wait_http(url + "/system", process)
        yield dicom_port, url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _wait_http(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("Orthanc exited at start; see orthanc.log")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("Orthanc did not start")


# -- the run --------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    seconds: float
    stored: int
    extra: dict[str, Any]


def storescu(port: int, folder: Path, called: str) -> float:
    """One storescu run over ``folder``; returns the seconds it took."""
    command = ["storescu", "-aet", "BENCHSCU", "-aec", called, HOST, str(port), "+sd", str(folder)]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - started


def run_bare(folder: Path, work: Path, fsync: bool) -> Result:
    work.mkdir(parents=True)
    with python_server(_serve_bare, work, fsync) as (port, conn):
        seconds = storescu(port, folder, "BARE")
        conn.send("stop")
        stats = conn.recv()
    return Result("bare+fsync" if fsync else "bare", seconds, stats.pop("stored"), stats)


def run_meridian(folder: Path, work: Path, db: str) -> Result:
    work.mkdir(parents=True)
    with store_url(db, work) as url, python_server(_serve_meridian, work, url) as (port, conn):
        seconds = storescu(port, folder, HUB_AE)
        conn.send("stop")
        stats = conn.recv()
    return Result("meridian", seconds, stats.pop("stored"), stats)


@contextmanager
def store_url(db: str, work: Path) -> Iterator[str]:
    """A fresh, empty store for one run."""
    if db == "sqlite":
        yield f"sqlite:///{work / 'meridian.db'}"
        return
    from tests.support.databases import postgres_database

    yield from postgres_database()


def run_orthanc(folder: Path, work: Path) -> Result:
    with orthanc(work) as (port, url):
        seconds = storescu(port, folder, "ORTHANC")
        stored = httpx.get(url + "/statistics", timeout=10).json()["CountInstances"]
    return Result("orthanc", seconds, int(stored), {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--rows", type=int, default=512, help="rows = columns; 512 -> 512 KB")
    parser.add_argument("--rounds", type=int, default=5, help="counted, after one warm-up")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument(
        "--dir", default=None, help="work folder (default: the system's temp; /dev/shm: no disk)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="meridian-bench-store-", dir=args.dir))
    try:
        folder = root / "images"
        series = 4
        study = write_study(
            folder,
            series=series,
            per_series=args.images // series,
            rows=args.rows,
            columns=args.rows,
        )
        total = sum(path.stat().st_size for path in study.paths)
        print(f"{len(study.paths)} images, {total / 1e6:.1f} MB, one storescu association each")
        results: dict[str, list[Result]] = {}
        # Round 0 warms the page cache and the code paths; it is not counted.
        for number in range(args.rounds + 1):
            work = root / f"round{number}"
            runs: list[tuple[Callable[..., Result], tuple[Any, ...]]] = [
                (run_bare, (folder, work / "bare", False)),
                (run_bare, (folder, work / "bare-fsync", True)),
                (run_meridian, (folder, work / "meridian", args.db)),
            ]
            if not args.no_orthanc and shutil.which("Orthanc"):
                runs.append((run_orthanc, (folder, work / "orthanc")))
            for function, arguments in runs:
                # The previous server's dirty pages must not be flushed during this one's run.
                os.sync()
                result = function(*arguments)
                if result.stored != len(study.paths):
                    raise SystemExit(f"{result.name}: stored {result.stored} of {len(study.paths)}")
                if number:
                    results.setdefault(result.name, []).append(result)
            shutil.rmtree(work)
        notes = report(results, len(study.paths), total, args.db)
        if args.json:
            rounds = f"{args.rounds} round{'s' if args.rounds > 1 else ''}"
            case = f"{len(study.paths)} images, {total / 1e6:.0f} MB, {rounds}"
            if args.dir:
                case += f", in {args.dir}"
            output = Output("store", "throughput", report_rows(results, case, total), notes)
            output.count_label = "rounds"
            output.sample_label = "each round (s)"
            if "orthanc" in results:
                output.versions["Orthanc"] = tool_version("Orthanc")
            write_json(args.json, output)
    finally:
        shutil.rmtree(root, ignore_errors=True)


ANCHORS = {"bare": None, "bare+fsync": "bare", "meridian": "bare+fsync", "orthanc": "bare+fsync"}


def report_rows(results: dict[str, list[Result]], case: str, total: int) -> list[Row]:
    """The JSON rows: median images/s per server next to its anchor, every round's seconds."""
    rows = []
    for name, runs in results.items():
        seconds = statistics.median(r.seconds for r in runs)
        images = runs[0].stored
        rows.append(
            Row(
                case=case,
                server=name,
                anchor=ANCHORS.get(name),
                throughput=images / seconds,
                unit="img/s",
                count=len(runs),
                params={"median s": round(seconds, 3), "MB/s": round(total / 1e6 / seconds, 1)},
                samples=[round(r.seconds, 3) for r in runs],
            )
        )
    return rows


def report(results: dict[str, list[Result]], images: int, total: int, db: str) -> list[str]:
    """Print the table; returns the notes for the JSON output."""
    median = {name: statistics.median(r.seconds for r in runs) for name, runs in results.items()}
    header = f"{'server':<12} {'seconds':>8} {'images/s':>9} {'MB/s':>7} {'vs bare':>8}"
    print(f"\n{header} {'vs bare+fsync':>14}   rounds (s)")
    for name, seconds in median.items():
        rounds = " ".join(f"{r.seconds:.2f}" for r in results[name])
        print(
            f"{name:<12} {seconds:>8.2f} {images / seconds:>9.1f} {total / 1e6 / seconds:>7.1f}"
            f" {median['bare'] / seconds:>7.2f}x {median['bare+fsync'] / seconds:>13.2f}x"
            f"   {rounds}"
        )
    hub = results["meridian"][-1].extra
    note = (
        f"meridian: store {db}; {hub['operations']} index writes in "
        f"{hub['commits']} commits (last round); batch of {images} handed on "
        f"{hub['batch_after']:.2f} s after storescu ended (quiet period {QUIET_SECONDS} s)"
    )
    print(f"\n{note}")
    return [note]


if __name__ == "__main__":
    main()
