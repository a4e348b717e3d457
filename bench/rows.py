"""The machine-readable result every bench script writes with ``--json PATH``.

A bench measures one or more *cases* (1 connection, 100k items, ...); in each
case every server it ran gets a :class:`Row`. A row names the server it is
compared with (``anchor``: another row's ``server`` in the same case, measured
in the same run); ``bench/report.py`` computes the ratios from the rows, so a
script only reports what it measured. :data:`Output.metric` says which figure
the ratio compares: ``throughput`` (higher is better: ``row ÷ anchor``) or a
latency field such as ``p50_ms`` (lower is better: ``anchor ÷ row``). Either
way a ratio above 1 means "better than the anchor".
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "METRICS",
    "Output",
    "Row",
    "nearest_rank",
    "read_json",
    "tool_version",
    "write_json",
]

METRICS = ("throughput", "p50_ms", "p95_ms", "p99_ms")


@dataclass
class Row:
    """What one server did in one case."""

    case: str
    server: str
    anchor: str | None = None
    throughput: float | None = None
    unit: str = ""
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    count: int = 0
    basis: float | None = None
    """The value the ratio uses instead of the metric (e.g. over the same first queries)."""
    params: dict[str, Any] = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)
    """Raw figures worth plotting (e.g. seconds per round); kept short."""

    def metric(self, name: str) -> float | None:
        """The figure called ``name`` (one of :data:`METRICS`)."""
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; one of {', '.join(METRICS)}")
        value: float | None = getattr(self, name)
        return value


@dataclass
class Output:
    """One bench run: its rows and what else it wants said next to them."""

    bench: str
    metric: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    count_label: str = "n"
    """What :attr:`Row.count` counts (messages, queries, rounds, studies)."""
    sample_label: str = "each"
    """What :attr:`Row.samples` are (e.g. seconds per round)."""

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; one of {', '.join(METRICS)}")


def write_json(path: str | Path, output: Output) -> None:
    """Write ``output`` as JSON (the ``--json PATH`` of every bench script)."""
    Path(path).write_text(json.dumps(asdict(output), indent=1, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Output:
    """Read what :func:`write_json` wrote; unknown keys are an error, not ignored."""
    data = json.loads(Path(path).read_text())
    rows = [Row(**row) for row in data.pop("rows")]
    return Output(rows=rows, **data)


def nearest_rank(values: Sequence[float], fraction: float) -> float:
    """The ceil(fraction·n)-th smallest value (with 100 values, p99 is the 99th)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def tool_version(executable: str) -> str:
    """The first line ``executable --version`` prints (an anchor's version, for the report)."""
    try:
        done = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (done.stdout + done.stderr).splitlines()
    return next((line.strip(" $") for line in lines if line.strip(" $")), "unknown")
