"""The benchmarks ``make bench`` runs, in order, with their sizes and the issues' targets.

To add one (e.g. ``bench/cluster.py``):

1. the script takes ``--json PATH`` and writes a :class:`bench.rows.Output`
   there (``bench`` = the registered name; one :class:`bench.rows.Row` per
   server and case, each naming its ``anchor``);
2. append a :class:`Bench` to :data:`BENCHES` with its full and ``--quick``
   arguments, the executables it needs and its targets;
3. optionally put ``<!-- bench:NAME:start -->`` / ``<!-- bench:NAME:end -->``
   where its section belongs in BENCHMARKS.md (otherwise ``bench/run_all.py``
   appends a section titled :attr:`Bench.title` at the end).

Sizes are chosen so the whole full run takes at most about 12 minutes on 2 cores.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.report import Target

__all__ = ["BENCHES", "Bench", "by_name"]

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bench:
    """One registered benchmark script."""

    name: str
    title: str
    script: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    targets: tuple[Target, ...] = ()
    requires: tuple[str, ...] = ()
    timeout_seconds: float = 900.0

    def command(self, json_path: Path, *, quick: bool = False) -> list[str]:
        """The command line, run from the repository root."""
        args = self.quick_args if quick else self.args
        return [sys.executable, self.script, *args, "--json", str(json_path)]

    def shown_command(self, *, quick: bool = False) -> str:
        """The command as the report shows it (what to type to repeat it)."""
        args = self.quick_args if quick else self.args
        return " ".join([".venv/bin/python", self.script, *args])

    def missing(self) -> list[str]:
        """Required executables not on PATH."""
        return [tool for tool in self.requires if shutil.which(tool) is None]


AI_QUIET_SECONDS = 2.0

BENCHES: tuple[Bench, ...] = (
    Bench(
        name="mllp",
        title="MLLP: ORM^O01 → durable store → ACK (issue 2)",
        script="bench/mllp.py",
        args=("--messages", "3000"),
        quick_args=("--messages", "150"),
        targets=(
            Target(
                "meridian hub ≥ 0.7\u00d7 the bare python-hl7 server's msg/s,"
                " every connection count (issue 2)",
                server="meridian hub",
                field="ratio",
                op=">=",
                value=0.7,
            ),
        ),
        timeout_seconds=600,
    ),
    Bench(
        name="mwl",
        title="MWL: C-FIND latency (issue 2)",
        script="bench/mwl.py",
        args=("--items", "10000", "100000", "--queries", "200", "--dcmtk-budget", "15"),
        quick_args=("--items", "2000", "--queries", "40", "--dcmtk-budget", "3"),
        targets=(
            Target(
                "Meridian C-FIND p50 ≤ 10 ms at 100,000 items, all typical queries (issue 2)",
                server="meridian",
                field="p50_ms",
                op="<=",
                value=10.0,
                case="100,000 items",
            ),
            Target(
                "the same, one-order lookups (patient ID / accession) on a persistent association",
                server="meridian, one order (patient ID / accession)",
                field="p50_ms",
                op="<=",
                value=10.0,
                case="100,000 items, persistent",
            ),
        ),
        requires=("wlmscpfs",),
    ),
    Bench(
        name="store",
        title="Storage SCP: C-STORE ingest (issue 3)",
        script="bench/store.py",
        args=("--images", "400", "--rounds", "5"),
        quick_args=("--images", "40", "--rows", "256", "--rounds", "1"),
        targets=(
            Target(
                "meridian ≥ 0.8\u00d7 the bare pynetdicom SCP, fair anchor: bare+fsync (issue 3)",
                server="meridian",
                field="ratio",
                op=">=",
                value=0.8,
            ),
            Target(
                "the same against the bare SCP without fsync (durability not counted)",
                server="meridian",
                field="ratio",
                op=">=",
                value=0.8,
                against="bare",
            ),
        ),
        requires=("storescu",),  # Orthanc: measured when installed
    ),
    Bench(
        name="ai_latency",
        title="AI latency (issue 4)",
        script="bench/ai_latency.py",
        args=("--studies", "30", "--quiet", f"{AI_QUIET_SECONDS:g}"),
        quick_args=("--studies", "2", "--quiet", f"{AI_QUIET_SECONDS:g}"),
        targets=(
            Target(
                f"dispatch (last image → AI request sent) p99 ≤ quiet period + 1 s"
                f" = {(AI_QUIET_SECONDS + 1) * 1000:,.0f} ms (issue 4)",
                server="dispatch",
                field="p99_ms",
                op="<=",
                value=(AI_QUIET_SECONDS + 1) * 1000,
            ),
            Target(
                "reading worklist reprioritized p99 ≤ 1,000 ms after the result batch is"
                " complete (issue 4)",
                server="result batch complete → worklist",
                field="p99_ms",
                op="<=",
                value=1000.0,
            ),
        ),
        requires=("storescu",),
    ),
    Bench(
        name="cluster",
        title="Cluster: nodes on one PostgreSQL store (issue 8)",
        script="bench/cluster.py",
        args=("--messages", "3000"),
        quick_args=("--quick",),
        targets=(
            Target(
                "2 nodes ≥ 1.7\u00d7 one node's ACKed msg/s (issue 8; 2 cores shared by"
                " the nodes, PostgreSQL and the client)",
                server="2 nodes",
                field="ratio",
                op=">=",
                value=1.7,
                case="ACK",
            ),
            Target(
                "the same for the drain (orders on the worklist per second)",
                server="2 nodes",
                field="ratio",
                op=">=",
                value=1.7,
                case="drain",
            ),
        ),
        timeout_seconds=600,  # needs PostgreSQL on 127.0.0.1:5432
    ),
)


def by_name(names: list[str]) -> list[Bench]:
    """The registered benches called ``names`` (all when empty), in registry order."""
    known = {bench.name for bench in BENCHES}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise KeyError(f"unknown bench {', '.join(unknown)}; registered: {', '.join(known)}")
    return [bench for bench in BENCHES if not names or bench.name in names]
