"""AI latency: image arrival → AI dispatch, and AI result → reading worklist updated.

    .venv/bin/python bench/ai_latency.py [--studies 50] [--quiet 2] [--slices 10]
                                         [--results-quiet 0.5] [--ai-quiet 0.5]
                                         [--gap SECONDS] [--pacs] [--keep] [--json PATH]

Everything is a real process on localhost, as in tests/test_e2e_ai.py: the hub
(``meridian serve`` with the shipped channels), the reference AI node
(``meridian ai-node``), dcmtk ``storescu`` as the modality and, with
``--pacs``, Orthanc as the PACS (by default both ``pacs`` destinations are
disabled to keep the machine quiet for the hub). Overrides:

* images-to-ai: quiet period ``--quiet``; ``ai-ct-head`` → the AI node, model
  meridian-hyperdense 1.0.0 in *triage* mode; ``ai-external-chest`` disabled;
* ai-results-to-triage: quiet period ``--results-quiet`` (it assembles the
  node's SR + GSPS of a study into one batch);
* the AI node itself waits ``--ai-quiet`` seconds of silence before analysing.

Each study gets an ORM order (MLLP), then its synthetic CT head (``--slices``
64x64 slices; even-numbered studies carry a 70 HU blob, odd ones are normal)
in one ``storescu`` run. Studies are sent one at a time: the next one goes
when the previous one's ``worklist_reprioritized`` event is in the store, so
neither the AI node nor the hub's queues ever hold a backlog and each figure
is the latency of one study on an idle site (``--gap`` instead sends a study
every ``--gap`` seconds whatever the previous one's state).

Figures come from the hub's own records, read from its SQLite store after the
run (every timestamp is UTC from the hub's clock):

* dispatch = ``ai_requested.at`` - the study's last ``archive_instances
  .received_at`` (channel images-to-ai). ``ai_requested`` is written when the
  C-STORE of the study to the AI node succeeded. Target ≤ quiet period + 1 s.
* reprioritized, two ways:
  - from result arrival = ``worklist_reprioritized.at`` - the last result
    instance's ``received_at`` (channel ai-results-to-triage): what a reader
    sees, *including* the results channel's quiet period;
  - from batch complete = ``worklist_reprioritized.at`` - that result unit's
    ``archive_studies.completed_at``: the hub's own processing (dispatch,
    results parsing, worklist transaction). The ≤ 1 s target is judged on this
    one, since the quiet period is configuration, not processing.

p50/p99 are nearest-rank (the ceil(q·n)-th smallest value): below 100 studies,
p99 is the maximum. ``--json PATH`` also writes one row per span (no anchor:
nothing else does this job) for ``bench/run_all.py`` (bench/rows.py).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.rows import Output, Row, write_json  # noqa: E402
from tests.support import mllp_client  # noqa: E402
from tests.support.ct_head import BLOB, head_series  # noqa: E402
from tests.support.dicom_files import write_dataset  # noqa: E402
from tests.support.hub_process import HubProcess, free_port, start_hub, wait_for_port  # noqa: E402
from tests.support.orders import orm  # noqa: E402
from tests.support.orthanc import OrthancProcess, start_orthanc  # noqa: E402

MERIDIAN = str(Path(sys.executable).parent / "meridian")
IMAGES, RESULTS, AI_DESTINATION = "images-to-ai", "ai-results-to-triage", "ai-ct-head"
MODEL = "meridian-hyperdense"
RESULT_TARGET_SECONDS = 1.0
STUDY_TIMEOUT_SECONDS = 60.0


# -- the site -------------------------------------------------------------------------------


@dataclass
class Site:
    """The running processes and how to reach them."""

    hub: HubProcess
    ai_node: subprocess.Popen[bytes]
    pacs: OrthancProcess | None

    def rows(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Rows of a query on the hub's store (a short read transaction; WAL lets the hub go on)."""
        with contextlib.closing(sqlite3.connect(self.hub.db_path, timeout=10)) as db:
            return db.execute(sql, args).fetchall()


def overrides(
    args: argparse.Namespace, ai_port: int, pacs: OrthancProcess | None
) -> dict[str, Any]:
    """The channel overrides of this run (see the module docstring)."""
    pacs_images: dict[str, Any] = {"port": pacs.dicom_port} if pacs else {"enabled": False}
    pacs_results: dict[str, Any] = {"port": pacs.dicom_port} if pacs else {"enabled": False}
    ai = {"model": MODEL, "version": "1.0.0", "mode": "triage"}
    return {
        IMAGES: {
            "source": {"quiet_period_seconds": args.quiet},
            "destinations": {
                "pacs": pacs_images,
                AI_DESTINATION: {"port": ai_port, "ai": ai},
                "ai-external-chest": {"enabled": False},
            },
        },
        RESULTS: {
            "source": {"quiet_period_seconds": args.results_quiet},
            "destinations": {"pacs": pacs_results},
        },
        "ai-results-json": {"source": {"port": free_port()}},
    }


@contextlib.contextmanager
def running_site(args: argparse.Namespace, workdir: Path) -> Iterator[Site]:
    """Orthanc (with ``--pacs``), the hub, the AI node; all stopped on the way out."""
    with contextlib.ExitStack() as stack:
        pacs = start_orthanc(workdir / "orthanc") if args.pacs else None
        if pacs is not None:
            stack.callback(pacs.stop)
        ai_port = free_port()
        hub = start_hub(workdir / "hub", overrides(args, ai_port, pacs))
        stack.callback(hub.stop)
        ai_log = stack.enter_context((workdir / "ai-node.log").open("wb"))
        node = subprocess.Popen(
            [MERIDIAN, "ai-node", "--port", str(ai_port), "--bind", "127.0.0.1",
             "--results-port", str(hub.dicom_port), "--results-ae", "MERIDIAN_AI",
             "--quiet-seconds", str(args.ai_quiet)],
            stdout=ai_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        stack.callback(_stop_process, node)
        wait_for_port(ai_port, proc=node)
        yield Site(hub, node, pacs)


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack: every process is stopped


# -- the load -------------------------------------------------------------------------------


@dataclass
class Study:
    """One study sent."""

    uid: str
    accession: str
    critical: bool
    paths: list[Path]


def build_studies(count: int, slices: int, folder: Path, tag: str) -> list[Study]:
    """Write ``count`` CT heads (even: with the blob) before the clock starts."""
    studies = []
    for number in range(count):
        critical = number % 2 == 0
        accession = f"{tag}{number:03}"
        datasets = head_series(BLOB if critical else None, slices=slices)
        for ds in datasets:
            ds.AccessionNumber = accession
        directory = folder / accession
        paths = [write_dataset(ds, directory / f"{ds.InstanceNumber:03}.dcm") for ds in datasets]
        studies.append(Study(str(datasets[0].StudyInstanceUID), accession, critical, paths))
    return studies


def send(site: Site, study: Study) -> None:
    """The order (MLLP), then the images (one storescu association)."""
    message = orm(placer=f"P{study.accession}", accession=study.accession,
                  patient_id=f"PAT{study.accession}", modality="CT")  # fmt: skip
    ack = mllp_client.send(site.hub.mllp_port, message.encode())
    if mllp_client.msa(ack)[1] != "AA":
        raise RuntimeError(f"order {study.accession} not accepted: {ack[:200]!r}")
    subprocess.run(
        ["storescu", "-aet", "CT1", "-aec", "MERIDIAN", "127.0.0.1", str(site.hub.dicom_port),
         *map(str, study.paths)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def reprioritized(site: Site, uids: list[str]) -> set[str]:
    """Which of ``uids`` have a ``worklist_reprioritized`` event."""
    marks = ",".join("?" * len(uids))
    found = site.rows(
        "SELECT DISTINCT study_instance_uid FROM audit_events"
        f" WHERE kind = 'worklist_reprioritized' AND study_instance_uid IN ({marks})",
        *uids,
    )
    return {row[0] for row in found}


def has_update(site: Site, uid: str) -> bool:
    """Whether the study's reading worklist entry got its AI result."""
    return bool(reprioritized(site, [uid]))


def wait_for(check: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
    """Poll ``check`` until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def run_load(site: Site, studies: list[Study], gap: float | None) -> None:
    """Send every study (one at a time, or every ``gap`` s), then wait for the last results."""
    for number, study in enumerate(studies, 1):
        started = time.monotonic()
        send(site, study)
        if gap is None:
            done = functools.partial(has_update, site, study.uid)
            if not wait_for(done, STUDY_TIMEOUT_SECONDS):
                raise RuntimeError(f"study {study.accession}: no worklist update\n{_tail(site)}")
        else:
            time.sleep(max(0.0, gap - (time.monotonic() - started)))
        if number % 10 == 0:
            print(f"  {number}/{len(studies)} studies", file=sys.stderr, flush=True)
    uids = [s.uid for s in studies]
    if not wait_for(lambda: len(reprioritized(site, uids)) == len(uids), STUDY_TIMEOUT_SECONDS):
        missing = len(uids) - len(reprioritized(site, uids))
        raise RuntimeError(f"{missing} studies without a worklist update\n{_tail(site)}")


def _tail(site: Site) -> str:
    return site.hub.log()[-3000:]


# -- the figures ----------------------------------------------------------------------------


def _utc(value: str | None) -> datetime | None:
    """A stored timestamp (SQLite keeps them as naive UTC text)."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _latest(site: Site, sql: str, *args: object) -> dict[str, datetime]:
    """``{study uid: latest timestamp}`` over (uid, timestamp) rows."""
    latest: dict[str, datetime] = {}
    for uid, value in site.rows(sql, *args):
        at = _utc(value)
        if at is not None and (uid not in latest or at > latest[uid]):
            latest[uid] = at
    return latest


def _earliest(site: Site, sql: str, *args: object) -> dict[str, datetime]:
    earliest: dict[str, datetime] = {}
    for uid, value in site.rows(sql, *args):
        at = _utc(value)
        if at is not None and (uid not in earliest or at < earliest[uid]):
            earliest[uid] = at
    return earliest


@dataclass
class Figures:
    """Per-study latencies in seconds, by name."""

    series: dict[str, list[float]]
    critical_agree: int
    result_instances: int
    retried: dict[str, int]


def measure(site: Site, studies: list[Study]) -> Figures:
    """Latencies of every study from the hub's store."""
    instances = "SELECT study_instance_uid, received_at FROM archive_instances WHERE channel = ?"
    completed = "SELECT study_instance_uid, completed_at FROM archive_studies WHERE channel = ?"
    event = "SELECT study_instance_uid, at FROM audit_events WHERE kind = ?"
    last_image = _latest(site, instances, IMAGES)
    images_complete = _earliest(site, completed, IMAGES)
    routed = _earliest(site, event + " AND destination = ?", "routed", AI_DESTINATION)
    requested = _earliest(site, event, "ai_requested")
    last_result = _latest(site, instances, RESULTS)
    results_complete = _earliest(site, completed, RESULTS)
    updated = _earliest(site, event, "worklist_reprioritized")

    def spans(start: dict[str, datetime], end: dict[str, datetime]) -> list[float]:
        return [(end[s.uid] - start[s.uid]).total_seconds() for s in studies]

    series = {
        "dispatch": spans(last_image, requested),
        "  last image → study complete": spans(last_image, images_complete),
        "  complete → routed": spans(images_complete, routed),
        "  routed → ai_requested": spans(routed, requested),
        "AI node (ai_requested → result)": spans(requested, last_result),
        "result arrival → worklist": spans(last_result, updated),
        "result batch complete → worklist": spans(results_complete, updated),
    }
    critical = dict(site.rows("SELECT study_instance_uid, ai_critical FROM reading_items"))
    agree = sum(bool(critical.get(s.uid)) == s.critical for s in studies)
    (count,) = site.rows("SELECT count(*) FROM archive_instances WHERE channel = ?", RESULTS)[0]
    retried = site.rows(
        "SELECT channel || '/' || destination, count(*) FROM queue_entries"
        " WHERE attempts > 1 GROUP BY 1"
    )
    return Figures(series, agree, int(count), {name: int(n) for name, n in retried})


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def report_rows(figures: Figures) -> list[Row]:
    """One JSON row per span, in milliseconds (sub-spans of dispatch marked in ``params``)."""
    return [
        Row(
            case="per study",
            server=name.strip(),
            p50_ms=percentile(values, 0.5) * 1000,
            p95_ms=percentile(values, 0.95) * 1000,
            p99_ms=percentile(values, 0.99) * 1000,
            count=len(values),
            params={
                "max ms": round(max(values) * 1000, 1),
                **({"part of": "dispatch"} if name[0] == " " else {}),
            },
        )
        for name, values in figures.series.items()
    ]


def report(args: argparse.Namespace, figures: Figures, studies: int, seconds: float) -> list[str]:
    """Print the setup, the table and the verdicts; returns the notes for the JSON output."""
    pacs = "Orthanc (both pacs destinations on)" if args.pacs else "disabled (both channels)"
    pacing = (
        "next study after the previous one's worklist update"
        if args.gap is None
        else f"one study every {args.gap:g} s"
    )
    print(f"\nAI latency, {studies} CT heads ({args.slices} slices of 64x64; half with a blob),"
          f" one storescu association each; {pacing}")  # fmt: skip
    print(f"images-to-ai quiet period {args.quiet:g} s; ai-results-to-triage quiet period"
          f" {args.results_quiet:g} s; AI node quiet {args.ai_quiet:g} s; model {MODEL} 1.0.0"
          f" triage; PACS: {pacs}; store SQLite; run {seconds:.0f} s")  # fmt: skip
    print(f"\n{'span (s)':<36}{'p50':>8}{'p99':>8}{'max':>8}")
    for name, values in figures.series.items():
        print(
            f"{name:<36}{percentile(values, 0.5):>8.3f}{percentile(values, 0.99):>8.3f}"
            f"{max(values):>8.3f}"
        )
    dispatch_target = args.quiet + 1.0
    verdicts = [
        ("dispatch p99", percentile(figures.series["dispatch"], 0.99), dispatch_target,
         f"≤ quiet period + 1 s = {dispatch_target:g} s"),
        ("reprioritized p99 (batch complete → worklist)",
         percentile(figures.series["result batch complete → worklist"], 0.99),
         RESULT_TARGET_SECONDS, f"≤ {RESULT_TARGET_SECONDS:g} s (hub processing)"),
    ]  # fmt: skip
    print()
    for name, value, target, text in verdicts:
        print(f"{name:<48} {value:6.3f} s  target {text}: {'PASS' if value <= target else 'FAIL'}")
    arrival = percentile(figures.series["result arrival → worklist"], 0.99)
    print(
        f"{'reprioritized p99 (result arrival → worklist)':<48} {arrival:6.3f} s"
        f"  includes the results quiet period ({args.results_quiet:g} s); for information"
    )
    over = sum(value > dispatch_target for value in figures.series["dispatch"])
    print(f"\nstudies over the dispatch target: {over}/{studies}")
    print(
        f"AI verdicts on the worklist matching the synthetic truth: {figures.critical_agree}"
        f"/{studies}; {figures.result_instances} result instances received"
    )
    retried = ", ".join(f"{name}: {n}" for name, n in figures.retried.items()) or "none"
    print(f"deliveries that needed more than one attempt: {retried}")
    return [
        f"{studies} CT heads ({args.slices} slices), {pacing}; images-to-ai quiet period "
        f"{args.quiet:g} s, ai-results-to-triage quiet period {args.results_quiet:g} s, "
        f"AI node quiet {args.ai_quiet:g} s; PACS {pacs}; run {seconds:.0f} s",
        f"studies over the dispatch target: {over}/{studies}",
        f"AI verdicts on the worklist matching the synthetic truth: "
        f"{figures.critical_agree}/{studies}",
        f"deliveries that needed more than one attempt: {retried}",
    ]


def main() -> None:
    """Start the site, send the studies, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--quiet", type=float, default=2.0, help="images-to-ai quiet period (s)")
    parser.add_argument(
        "--slices", type=int, default=10, help="slices per study (≥ 6 for the blob)"
    )
    parser.add_argument("--results-quiet", type=float, default=0.5, help="results channel (s)")
    parser.add_argument("--ai-quiet", type=float, default=0.5, help="AI node quiet period (s)")
    parser.add_argument("--gap", type=float, default=None, help="send a study every GAP s")
    parser.add_argument("--pacs", action="store_true", help="forward to a started Orthanc")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (hub store)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    if args.studies < 1 or args.slices < 6:
        parser.error("--studies ≥ 1 and --slices ≥ 6 (the blob spans slices 4-6)")

    signal.signal(signal.SIGTERM, _sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="meridian-bench-ai-"))
    try:
        tag = f"AIL{int(time.time()) % 100000:05}"
        studies = build_studies(args.studies, args.slices, workdir / "studies", tag)
        with running_site(args, workdir) as site:
            started = time.monotonic()
            run_load(site, studies, args.gap)
            seconds = time.monotonic() - started
            figures = measure(site, studies)
        notes = report(args, figures, len(studies), seconds)
        if args.json:
            output = Output("ai_latency", "p99_ms", report_rows(figures), notes)
            output.count_label = "studies"
            write_json(args.json, output)
    finally:
        if args.keep:
            print(f"\nwork folder kept: {workdir} (hub store: hub/var/meridian.db)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
