"""PNG plots of a bench's rows: throughput bars and latency bars, hub next to its anchor.

One figure per kind, per bench, in ``bench/results/``:

* ``NAME-throughput.png``: throughput per case, one bar per server, the
  ratio to the anchor written above each compared bar;
* ``NAME-latency.png``: p50 as a bar and p99 as a tick on a line above it,
  per case and server (log scale when the figures span more than 50 times);
* ``NAME-rounds.png``: for rows with raw samples and no latency (the storage
  bench's seconds per round), every sample as a dot and the median as a bar.

matplotlib runs on the Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bench.report import ratio
from bench.rows import Output, Row

__all__ = ["plot"]

Value = Callable[[Row], float | None]


def _ordered(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _grid(output: Output, has: Value) -> tuple[list[str], list[str], dict[tuple[str, str], Row]]:
    rows = [row for row in output.rows if has(row) is not None]
    cases = _ordered([row.case for row in rows])
    servers = _ordered([row.server for row in rows])
    return cases, servers, {(row.case, row.server): row for row in rows}


def _figure(cases: int, servers: int) -> tuple[Figure, Axes]:
    width = min(16.0, max(6.0, 1.2 + cases * (0.5 + 0.45 * servers))) + 2.5  # + the legend
    figure, axes = plt.subplots(figsize=(width, 4.2), dpi=100)
    return figure, axes


def _bars(
    axes: Axes,
    output: Output,
    value: Value,
    *,
    tick: Value | None = None,
    annotate: Callable[[Row], str] | None = None,
) -> None:
    """Grouped bars: one group per case, one bar (colour) per server."""
    cases, servers, grid = _grid(output, value)
    width = 0.8 / max(1, len(servers))
    for index, server in enumerate(servers):
        xs: list[float] = []
        heights: list[float] = []
        for position, case in enumerate(cases):
            row = grid.get((case, server))
            height = value(row) if row is not None else None
            if row is None or height is None:
                continue
            x = position - 0.4 + width * (index + 0.5)
            xs.append(x)
            heights.append(height)
            top = tick(row) if tick is not None else None
            if top is not None:
                axes.plot([x, x], [height, top], color="black", linewidth=0.8)
                axes.plot([x], [top], marker="_", color="black", markersize=10)
            text = annotate(row) if annotate is not None else ""
            if text:
                axes.annotate(text, (x, max(height, top or 0.0)), ha="center", va="bottom",
                              fontsize=8, xytext=(0, 2), textcoords="offset points")  # fmt: skip
        axes.bar(xs, heights, width=width * 0.95, label=server)
    axes.set_xticks(range(len(cases)), [case.replace(", ", ",\n", 1) for case in cases])
    axes.tick_params(axis="x", labelsize=8)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes.grid(axis="y", alpha=0.3)


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)
    return path


def _title(output: Output, what: str, label: str) -> str:
    return f"{output.bench}: {what}" + (f" ({label})" if label else "")


def throughput_plot(output: Output, path: Path, label: str = "") -> Path:
    """Throughput bars per case and server, with each ratio to the anchor."""
    cases, servers, _ = _grid(output, lambda row: row.throughput)
    figure, axes = _figure(len(cases), len(servers))

    def annotate(row: Row) -> str:
        value = ratio(row, output) if output.metric == "throughput" else None
        return f"{value:.2f}\u00d7" if value is not None else ""

    _bars(axes, output, lambda row: row.throughput, annotate=annotate)
    unit = next((row.unit for row in output.rows if row.unit), "per second")
    axes.set_ylabel(f"{unit} (higher is better)")
    axes.set_title(_title(output, "throughput; ratio to the anchor above the bars", label))
    return _save(figure, path)


def latency_plot(output: Output, path: Path, label: str = "") -> Path:
    """p50 bars with p99 ticks per case and server."""
    cases, servers, grid = _grid(output, lambda row: row.p50_ms)
    figure, axes = _figure(len(cases), len(servers))
    _bars(axes, output, lambda row: row.p50_ms, tick=lambda row: row.p99_ms)
    figures = [v for row in grid.values() for v in (row.p50_ms, row.p99_ms) if v is not None]
    if figures and min(figures) > 0 and max(figures) / min(figures) > 50:
        axes.set_yscale("log")
    axes.set_ylabel("ms (lower is better)")
    axes.set_title(_title(output, "latency, bar p50, tick p99", label))
    return _save(figure, path)


def rounds_plot(output: Output, path: Path, label: str = "") -> Path:
    """Each sample as a dot over a median bar (rows with samples and no latency)."""

    def median(row: Row) -> float | None:
        if not row.samples:
            return None
        ordered = sorted(row.samples)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

    cases, servers, grid = _grid(output, median)
    figure, axes = _figure(len(cases), len(servers))
    _bars(axes, output, median)
    width = 0.8 / max(1, len(servers))
    for (case, server), row in grid.items():
        x = cases.index(case) - 0.4 + width * (servers.index(server) + 0.5)
        axes.scatter([x] * len(row.samples), row.samples, color="black", s=8, zorder=3)
    axes.set_ylabel("seconds per round (lower is better)")
    axes.set_title(_title(output, "each round (dots) and the median (bar)", label))
    return _save(figure, path)


def plot(output: Output, directory: Path, label: str = "") -> list[tuple[str, Path]]:
    """Every plot that fits ``output``'s rows; returns (alt text, path) pairs."""
    directory.mkdir(parents=True, exist_ok=True)
    name = output.bench
    made: list[tuple[str, Path]] = []
    if any(row.throughput is not None for row in output.rows):
        path = throughput_plot(output, directory / f"{name}-throughput.png", label)
        made.append((f"{name} throughput", path))
    if any(row.p50_ms is not None for row in output.rows):
        made.append((f"{name} latency", latency_plot(output, directory / f"{name}-latency.png",
                                                     label)))  # fmt: skip
    elif any(row.samples for row in output.rows):
        made.append((f"{name} rounds", rounds_plot(output, directory / f"{name}-rounds.png",
                                                   label)))  # fmt: skip
    return made
