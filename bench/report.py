"""BENCHMARKS.md from the benches' JSON rows: ratios, targets, generated blocks.

Each bench owns one block of the document, between ``<!-- bench:NAME:start -->``
and ``<!-- bench:NAME:end -->``; :func:`update_document` replaces what is inside
and keeps every byte outside (the hand-written analysis). A block says which
command ran on which machine, gives a table with each figure next to its anchor
and the ratio, and judges the issue's targets (:class:`Target`) on the figures.
Nothing here measures anything: it is a pure function of the rows, unit tested
in ``tests/test_bench_report.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from bench.rows import Output, Row

__all__ = [
    "Machine",
    "Outcome",
    "Target",
    "Verdict",
    "evaluate",
    "failure_block",
    "ratio",
    "result_block",
    "summary_block",
    "update_document",
]

MET, NOT_MET, NOT_EVALUATED = "met", "not met", "not evaluated"
DASH, TIMES = "\u2013", "\u00d7"  # en dash, multiplication sign
OPERATORS = {">=": "≥", "<=": "≤"}


@dataclass(frozen=True)
class Machine:
    """Where and when a run happened, as said at the top of each block."""

    cpus: int
    memory: str
    os: str
    python: str
    commit: str
    date: str
    cpu: str = ""

    def line(self) -> str:
        """One line of Markdown."""
        model = f" ({self.cpu})" if self.cpu else ""
        return (
            f"Machine: {self.cpus} CPUs{model}, {self.memory} RAM, {self.os}, "
            f"Python {self.python}; commit {self.commit}; {self.date}"
        )


@dataclass(frozen=True)
class Target:
    """A target from an issue, judged on every row it selects (all must pass).

    ``field`` is ``ratio`` (against the row's anchor, or ``against``: another
    server of the same case) or a figure of :data:`bench.rows.METRICS`.
    ``case`` selects the cases whose name starts with it (all when empty).
    """

    text: str
    server: str
    field: str
    op: str
    value: float
    case: str = ""
    against: str | None = None

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise ValueError(f"unknown operator {self.op!r}; one of {', '.join(OPERATORS)}")

    def passes(self, measured: float) -> bool:
        """Whether one measured value meets the target."""
        return measured >= self.value if self.op == ">=" else measured <= self.value


@dataclass(frozen=True)
class Verdict:
    """A target judged on one run."""

    target: Target
    status: str
    measured: tuple[tuple[str, float], ...] = ()
    reason: str = ""


# -- ratios and targets ------------------------------------------------------------------


def _anchor_row(row: Row, rows: Iterable[Row], against: str | None = None) -> Row | None:
    name = against or row.anchor
    if name is None:
        return None
    for other in rows:
        if other.case == row.case and other.server == name:
            return other
    return None


def ratio(row: Row, output: Output, against: str | None = None) -> float | None:
    """``row`` relative to its anchor (or ``against``) in the same case; above 1 is better.

    Throughput: row ÷ anchor. A latency: anchor ÷ row (``row.basis`` replaces
    the row's own figure when set, e.g. over the same queries the anchor ran).
    None when there is no anchor or a figure is missing or zero.
    """
    anchor = _anchor_row(row, output.rows, against)
    if anchor is None:
        return None
    own = row.metric(output.metric) if row.basis is None else row.basis
    theirs = anchor.metric(output.metric)
    if own is None or theirs is None or own == 0 or theirs == 0:
        return None
    return own / theirs if output.metric == "throughput" else theirs / own


def evaluate(target: Target, output: Output) -> Verdict:
    """Judge ``target`` on the rows of ``output``."""
    selected = [
        row
        for row in output.rows
        if row.server == target.server and row.case.startswith(target.case)
    ]
    measured: list[tuple[str, float]] = []
    for row in selected:
        if target.field == "ratio":
            value = ratio(row, output, target.against)
        else:
            value = row.metric(target.field)
        if value is not None:
            measured.append((row.case, value))
    if not measured:
        return Verdict(target, NOT_EVALUATED, reason="no figure in this run")
    status = MET if all(target.passes(value) for _, value in measured) else NOT_MET
    return Verdict(target, status, tuple(measured))


# -- Markdown ------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return DASH
    return f"{value:,.{digits}f}"


def _has(rows: Sequence[Row], name: str) -> bool:
    return any(row.metric(name) is not None for row in rows)


def _details(row: Row, sample_label: str) -> str:
    parts = [f"{key} {value}" for key, value in row.params.items()]
    if row.samples:
        parts.append(f"{sample_label}: " + " ".join(f"{value:g}" for value in row.samples))
    return "; ".join(parts).replace("|", "\\|")


def _ratio_cell(row: Row, output: Output) -> str:
    value = ratio(row, output)
    if value is not None:
        return f"**{value:.2f}{TIMES}** vs {row.anchor}"
    if row.anchor is not None:
        return f"{DASH} (no {row.anchor} figure)"
    if any(other.anchor == row.server and other.case == row.case for other in output.rows):
        return "anchor"
    return DASH


def _compared(output: Output) -> bool:
    return any(row.anchor is not None for row in output.rows)


def _figure(name: str, digits: int) -> Callable[[Row], str]:
    return lambda row: _number(row.metric(name), digits)


def table(output: Output) -> list[str]:
    """The figures, each row next to its anchor, with the ratio."""
    rows = output.rows
    unit = next((row.unit for row in rows if row.throughput is not None), "")
    columns: list[tuple[str, Callable[[Row], str]]] = [
        ("case", lambda r: r.case),
        ("server", lambda r: r.server),
    ]
    if _has(rows, "throughput"):
        columns.append((unit or "per s", _figure("throughput", 0)))
    for name in ("p50_ms", "p95_ms", "p99_ms"):
        if _has(rows, name):
            columns.append((name.replace("_", " "), _figure(name, 1)))
    columns.append((output.count_label, lambda r: str(r.count)))
    if _compared(output):
        columns.append(("ratio", lambda r: _ratio_cell(r, output)))
    if any(row.params or row.samples for row in rows):
        columns.append(("details", lambda r: _details(r, output.sample_label)))
    lines = [
        "| " + " | ".join(name for name, _ in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    previous = None
    for row in rows:
        cells = [cell(row) for _, cell in columns]
        if row.case == previous:
            cells[0] = ""  # the case once per group
        previous = row.case
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ratio_rule(output: Output) -> str:
    """How this bench's ratio reads."""
    if output.metric == "throughput":
        return (
            "Ratio = throughput ÷ the anchor's throughput, same case, same run "
            "(above 1: faster than the anchor)."
        )
    figure = output.metric.removesuffix("_ms")
    return (
        f"Ratio = the anchor's {figure} ÷ this {figure}, same case, same run "
        "(above 1: faster than the anchor)."
    )


def _measured_text(verdict: Verdict) -> str:
    if not verdict.measured:
        return verdict.reason or DASH
    field = verdict.target.field
    cells = []
    for case, value in verdict.measured:
        shown = f"{value:.2f}{TIMES}" if field == "ratio" else f"{value:,.1f}"
        if field.endswith("_ms"):
            shown += " ms"
        cells.append(f"{case}: {shown}")
    return "; ".join(cells)


def targets_table(verdicts: Sequence[Verdict]) -> list[str]:
    """The issue's targets and whether this run met them."""
    lines = ["| target (from the issue) | measured | verdict |", "|---|---|---|"]
    for verdict in verdicts:
        shown = f"**{verdict.status}**" if verdict.status != NOT_EVALUATED else verdict.status
        lines.append(f"| {verdict.target.text} | {_measured_text(verdict)} | {shown} |")
    return lines


def _header(command: str, seconds: float, machine: Machine, load: float | None) -> list[str]:
    busy = f"; 1-minute load average before it: {load:.2f}" if load is not None else ""
    return [
        "<!-- Generated by `make bench` (bench/run_all.py): everything up to the end marker "
        "is rewritten on each run. -->",
        "",
        f"Command: `{command}` ({seconds:.0f} s{busy})",
        "",
        machine.line(),
    ]


def result_block(
    output: Output,
    *,
    command: str,
    seconds: float,
    machine: Machine,
    targets: Sequence[Target],
    images: Sequence[tuple[str, str]] = (),
    label: str = "",
    load: float | None = None,
) -> str:
    """The generated block of a bench that ran (``images``: (alt text, path) pairs).

    ``load``: the machine's 1-minute load average just before the bench (other
    work on the machine shows there).
    """
    lines = _header(command, seconds, machine, load)
    if output.versions:
        lines[-1] += "; " + ", ".join(output.versions.values())
    if label:
        lines += ["", f"**{label}**"]
    lines += ["", *table(output)]
    if _compared(output):
        lines += ["", ratio_rule(output)]
    if output.notes:
        lines += ["", *(f"- {note}" for note in output.notes)]
    if targets:
        lines += ["", *targets_table([evaluate(target, output) for target in targets])]
    if images:
        lines += ["", " ".join(f"![{alt}]({path})" for alt, path in images)]
    return "\n".join(lines)


def failure_block(
    *,
    command: str,
    seconds: float,
    machine: Machine,
    targets: Sequence[Target],
    reason: str,
    output_tail: str,
    load: float | None = None,
) -> str:
    """The generated block of a bench that failed: why, its last output, no figures."""
    lines = _header(command, seconds, machine, load)
    lines += ["", f"**This benchmark failed in this run: {reason}.** No figures."]
    if output_tail.strip():
        lines += ["", "```text", output_tail.strip().replace("```", "'''"), "```"]
    if targets:
        verdicts = [Verdict(t, NOT_EVALUATED, reason="the bench failed") for t in targets]
        lines += ["", *targets_table(verdicts)]
    return "\n".join(lines)


@dataclass(frozen=True)
class Outcome:
    """One bench of a whole run, for the summary: its verdicts, or why it failed."""

    title: str
    verdicts: Sequence[Verdict]
    failure: str = ""


def summary_block(
    outcomes: Sequence[Outcome], *, seconds: float, machine: Machine, label: str = ""
) -> str:
    """Every target of a whole run in one table (written only when every bench ran)."""
    lines = [
        "<!-- Generated by `make bench` (bench/run_all.py). -->",
        "",
        *([f"**{label}**", ""] if label else []),
        f"Every benchmark, one after the other: {seconds / 60:.1f} minutes. {machine.line()}",
        "",
        "| benchmark | target | measured | verdict |",
        "|---|---|---|---|",
    ]
    for outcome in outcomes:
        if outcome.failure:
            lines.append(f"| {outcome.title} | {DASH} | failed: {outcome.failure} | {DASH} |")
        for verdict in outcome.verdicts:
            shown = f"**{verdict.status}**" if verdict.status != NOT_EVALUATED else verdict.status
            lines.append(
                f"| {outcome.title} | {verdict.target.text} | {_measured_text(verdict)} | {shown} |"
            )
    return "\n".join(lines)


# -- the document --------------------------------------------------------------------------


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def update_document(text: str, blocks: Mapping[str, str], titles: Mapping[str, str]) -> str:
    """``text`` with each named block replaced; everything outside the markers is kept.

    A bench without markers yet gets a new section at the end, titled
    ``titles[name]``. Markers that are unbalanced or repeated are an error.
    """
    for name, block in blocks.items():
        start, end = _markers(name)
        found = [m.start() for m in re.finditer(re.escape(start), text)]
        ends = [m.start() for m in re.finditer(re.escape(end), text)]
        if not found and not ends:
            title = titles.get(name, name)
            text = text.rstrip("\n") + f"\n\n## {title}\n\n{start}\n{block}\n{end}\n"
            continue
        if len(found) != 1 or len(ends) != 1 or ends[0] < found[0]:
            raise ValueError(f"bench {name!r}: expected one {start} followed by one {end}")
        inner_start = found[0] + len(start)
        text = text[:inner_start] + f"\n{block}\n" + text[ends[0] :]
    return text
