"""Run every registered benchmark and write BENCHMARKS.md and the plots (``make bench``).

    .venv/bin/python bench/run_all.py [--quick] [--only NAME ...] [--out FILE] [--results DIR]

Each bench in :data:`bench.registry.BENCHES` runs in turn, alone on the
machine, as ``python bench/NAME.py ARGS --json FILE``; its printed output is
shown live and kept in ``RESULTS/NAME.txt``, its rows in ``RESULTS/NAME.json``,
its plots in ``RESULTS/NAME-*.png``. Then its block of BENCHMARKS.md (between
``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->``) is rewritten
from the rows; the text outside the blocks is kept as written. A bench that
fails, times out or is missing a tool gets a block saying so, the others still
run, and the exit status is 1. A missed target is a result, not a failure.

``--quick`` runs small sizes (a smoke run of a few minutes) and by default
writes to a copy under ``/tmp/meridian-bench-quick`` so the committed figures
stay those of a full run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.plots import plot
from bench.registry import BENCHES, REPO, Bench, by_name
from bench.report import (
    Machine,
    Outcome,
    Verdict,
    evaluate,
    failure_block,
    result_block,
    summary_block,
    update_document,
)
from bench.rows import read_json

QUICK_DIR = Path(tempfile.gettempdir()) / "meridian-bench-quick"
QUICK_LABEL = "Quick smoke run (--quick): small sizes, figures not representative."
TAIL_LINES = 30


# -- the machine ---------------------------------------------------------------------------


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _first_line(path: str, prefix: str) -> str:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def this_machine() -> Machine:
    """The machine, software and commit of this run."""
    memory_kb = _first_line("/proc/meminfo", "MemTotal").split()
    memory = f"{int(memory_kb[0]) / 2**20:.1f} GiB" if memory_kb else "unknown"
    try:
        distribution = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except OSError:
        distribution = ""
    system = f"{platform.system()} {platform.release()} {platform.machine()}"
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += " with uncommitted changes"
    return Machine(
        cpus=os.cpu_count() or 0,
        cpu=_first_line("/proc/cpuinfo", "model name"),
        memory=memory,
        os=f"{distribution} ({system})" if distribution else system,
        python=platform.python_version(),
        commit=commit,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


# -- running one bench ---------------------------------------------------------------------


@dataclass
class Ran:
    """How one bench's process ended."""

    bench: Bench
    seconds: float
    failure: str
    tail: str
    json_path: Path
    load: float | None = None


def _tee(stream: IO[str], sinks: list[IO[str]], tail: deque[str]) -> None:
    for line in stream:
        tail.append(line)
        for sink in sinks:
            sink.write(line)
            sink.flush()


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM the bench's process group (it stops its servers), SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _environment() -> dict[str, str]:
    """The bench's environment: this one, with the repository importable (``bench.rows``)."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def run_bench(bench: Bench, results: Path, quick: bool) -> Ran:
    """Run one bench, its output shown live and kept in ``results/NAME.txt``."""
    json_path = results / f"{bench.name}.json"
    json_path.unlink(missing_ok=True)
    missing = bench.missing()
    if missing:
        return Ran(bench, 0.0, f"{', '.join(missing)} not installed", "", json_path)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    load = os.getloadavg()[0]
    started = time.monotonic()
    with (results / f"{bench.name}.txt").open("w") as printed:
        process = subprocess.Popen(
            bench.command(json_path, quick=quick),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group: stopped as a whole on timeout
            env=_environment(),
        )
        assert process.stdout is not None and process.stderr is not None
        readers = [
            threading.Thread(target=_tee, args=(process.stdout, [printed, sys.stdout], tail)),
            threading.Thread(target=_tee, args=(process.stderr, [sys.stderr], tail)),
        ]
        for reader in readers:
            reader.start()
        failure = ""
        try:
            code = process.wait(timeout=bench.timeout_seconds)
            if code != 0:
                failure = f"exit status {code}"
        except subprocess.TimeoutExpired:
            _stop(process)
            failure = f"timed out after {bench.timeout_seconds:.0f} s"
        except KeyboardInterrupt:
            _stop(process)
            raise
        for reader in readers:
            reader.join(timeout=10)
    if not failure and not json_path.exists():
        failure = f"no JSON written to {json_path.name}"
    return Ran(bench, time.monotonic() - started, failure, "".join(tail), json_path, load)


# -- the report ----------------------------------------------------------------------------


def block_for(ran: Ran, machine: Machine, out: Path, quick: bool) -> tuple[str, Outcome]:
    """The bench's Markdown block and its outcome (verdicts, or why it failed)."""
    bench = ran.bench
    command = bench.shown_command(quick=quick)
    label = QUICK_LABEL if quick else ""
    if not ran.failure:
        try:
            output = read_json(ran.json_path)
            images = plot(output, ran.json_path.parent, label="quick" if quick else "")
        except (ValueError, TypeError, KeyError) as exc:
            ran.failure = f"its JSON could not be read ({exc})"
    if ran.failure:
        block = failure_block(
            command=command,
            seconds=ran.seconds,
            machine=machine,
            targets=bench.targets,
            reason=ran.failure,
            output_tail=ran.tail,
            load=ran.load,
        )
        verdicts = [Verdict(t, "not evaluated", reason="the bench failed") for t in bench.targets]
        return block, Outcome(bench.title, verdicts, ran.failure)
    shown = [(alt, os.path.relpath(path, out.parent)) for alt, path in images]
    block = result_block(
        output,
        command=command,
        seconds=ran.seconds,
        machine=machine,
        targets=bench.targets,
        images=shown,
        label=label,
        load=ran.load,
    )
    return block, Outcome(bench.title, [evaluate(target, output) for target in bench.targets])


def write_report(out: Path, blocks: dict[str, str], benches: list[Bench]) -> None:
    """Rewrite the benches' blocks of ``out`` (a quick run starts from a copy of the real one)."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "BENCHMARKS.md", out)
    titles = {"summary": "Summary", **{bench.name: bench.title for bench in benches}}
    out.write_text(update_document(out.read_text(), blocks, titles))


def main(argv: list[str] | None = None) -> int:
    """Run the benches, write the report; 1 when any bench failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run these only")
    parser.add_argument("--out", type=Path, help="the report (default BENCHMARKS.md)")
    parser.add_argument("--results", type=Path, help="JSON, output and plots (bench/results)")
    parser.add_argument("--list", action="store_true", help="list the registered benches")
    args = parser.parse_args(argv)
    try:
        benches = by_name(args.only)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    if args.list:
        for bench in benches:
            print(f"{bench.name:<12} {bench.shown_command()}")
        return 0
    base = QUICK_DIR if args.quick else REPO
    out = args.out or base / "BENCHMARKS.md"
    return run(benches, out, args.results or base / "bench" / "results", quick=args.quick)


def run(benches: list[Bench], out: Path, results: Path, *, quick: bool = False) -> int:
    """Run ``benches`` one after the other, write their blocks of ``out``; 1 if any failed."""
    out, results = out.resolve(), results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    machine = this_machine()
    started = time.monotonic()
    blocks: dict[str, str] = {}
    outcomes: list[Outcome] = []
    for bench in benches:
        print(f"\n=== {bench.name}: {bench.shown_command(quick=quick)}", flush=True)
        ran = run_bench(bench, results, quick)
        blocks[bench.name], outcome = block_for(ran, machine, out, quick)
        outcomes.append(outcome)
        print(f"=== {bench.name}: {ran.failure or 'done'} ({ran.seconds:.0f} s)", flush=True)
    seconds = time.monotonic() - started
    if [bench.name for bench in benches] == [bench.name for bench in BENCHES]:
        label = QUICK_LABEL if quick else ""
        blocks["summary"] = summary_block(outcomes, seconds=seconds, machine=machine, label=label)
    write_report(out, blocks, benches)
    print(f"\n=== {len(benches)} benches in {seconds:.0f} s; report: {out}")
    for outcome in outcomes:
        print(f"{outcome.title}: {'FAILED, ' + outcome.failure if outcome.failure else 'ran'}")
        for verdict in outcome.verdicts:
            print(f"  {verdict.status:<13} {verdict.target.text}")
    return 1 if any(outcome.failure for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
