"""The benchmark report writer (bench/report.py, bench/run_all.py) on given rows.

No timing here: the rows are made up, the writer is what is tested (ratios,
targets, blocks between markers, a failed bench). The last test runs the
runner on two tiny fake benches (one writes rows, one fails) in a temp folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.registry import BENCHES, Bench, by_name
from bench.report import (
    Machine,
    Outcome,
    Target,
    evaluate,
    failure_block,
    ratio,
    result_block,
    summary_block,
    update_document,
)
from bench.rows import Output, Row, read_json, write_json

X, DASH = "\u00d7", "\u2013"  # the report's multiplication sign and en dash

MACHINE = Machine(
    cpus=2,
    memory="23.4 GiB",
    os="Debian GNU/Linux 12 (Linux 6.1 x86_64)",
    python="3.11.2",
    commit="abc1234",
    date="2025-01-02 03:04 UTC",
)


def mllp_output() -> Output:
    rows = [
        Row("1 connection", "bare python-hl7", throughput=3000.0, unit="msg/s", p50_ms=0.3),
        Row("1 connection", "meridian hub", "bare python-hl7", 240.0, "msg/s", p50_ms=4.4),
        Row("8 connections", "bare python-hl7", throughput=4000.0, unit="msg/s", p50_ms=2.0),
        Row("8 connections", "meridian hub", "bare python-hl7", 3200.0, "msg/s", p50_ms=3.0),
    ]
    return Output("mllp", "throughput", rows)


def mwl_output() -> Output:
    rows = [
        Row("10,000 items, persistent", "wlmscpfs", p50_ms=250.0, p99_ms=280.0),
        Row("10,000 items, persistent", "meridian", "wlmscpfs", p50_ms=8.0, p99_ms=90.0),
        Row("100,000 items, persistent", "wlmscpfs", p50_ms=2000.0, p99_ms=2200.0),
        Row("100,000 items, persistent", "meridian", "wlmscpfs", p50_ms=30.0, basis=40.0),
    ]
    return Output("mwl", "p50_ms", rows)


# -- ratios --------------------------------------------------------------------------------


def test_throughput_ratio_is_row_over_its_anchor_in_the_same_case() -> None:
    output = mllp_output()
    hub_one, hub_eight = output.rows[1], output.rows[3]
    assert ratio(hub_one, output) == pytest.approx(240 / 3000)
    assert ratio(hub_eight, output) == pytest.approx(3200 / 4000)


def test_latency_ratio_is_anchor_over_row_and_uses_the_basis_when_given() -> None:
    output = mwl_output()
    assert ratio(output.rows[1], output) == pytest.approx(250 / 8)
    assert ratio(output.rows[3], output) == pytest.approx(2000 / 40)  # basis, not 30


def test_no_ratio_without_an_anchor_or_a_figure() -> None:
    output = mllp_output()
    assert ratio(output.rows[0], output) is None
    lonely = Output("x", "throughput", [Row("a", "hub", "missing", throughput=1.0)])
    assert ratio(lonely.rows[0], lonely) is None
    no_figure = Output("x", "p99_ms", [Row("a", "anchor", p99_ms=5.0), Row("a", "hub", "anchor")])
    assert ratio(no_figure.rows[1], no_figure) is None


def test_ratio_against_another_server_of_the_same_case() -> None:
    rows = [
        Row("400 images", "bare", throughput=300.0),
        Row("400 images", "bare+fsync", "bare", throughput=200.0),
        Row("400 images", "meridian", "bare+fsync", throughput=180.0),
    ]
    output = Output("store", "throughput", rows)
    assert ratio(rows[2], output) == pytest.approx(0.9)
    assert ratio(rows[2], output, against="bare") == pytest.approx(0.6)


# -- targets -------------------------------------------------------------------------------


def test_a_target_must_hold_in_every_selected_case() -> None:
    target = Target("hub ≥ 0.7", server="meridian hub", field="ratio", op=">=", value=0.7)
    verdict = evaluate(target, mllp_output())
    assert verdict.status == "not met"
    assert [case for case, _ in verdict.measured] == ["1 connection", "8 connections"]
    assert verdict.measured[0][1] == pytest.approx(0.08)
    loose = Target("hub ≥ 0.05", server="meridian hub", field="ratio", op=">=", value=0.05)
    assert evaluate(loose, mllp_output()).status == "met"


def test_a_case_prefix_selects_100k_but_not_10k() -> None:
    target = Target("p50 ≤ 10 ms", "meridian", "p50_ms", "<=", 10.0, case="100,000 items")
    verdict = evaluate(target, mwl_output())
    assert verdict.status == "not met"
    assert verdict.measured == (("100,000 items, persistent", 30.0),)
    small = Target("p50 ≤ 10 ms", "meridian", "p50_ms", "<=", 10.0, case="10,000 items")
    assert evaluate(small, mwl_output()).status == "met"


def test_a_target_without_figures_is_not_evaluated() -> None:
    target = Target("p99 ≤ 1 s", server="nobody", field="p99_ms", op="<=", value=1000.0)
    assert evaluate(target, mllp_output()).status == "not evaluated"
    with pytest.raises(ValueError, match="operator"):
        Target("bad", "x", "ratio", "<", 1.0)


# -- blocks and the document ---------------------------------------------------------------


def test_result_block_shows_each_figure_next_to_its_anchor_and_the_verdicts() -> None:
    target = Target(f"hub ≥ 0.7{X} (issue 2)", "meridian hub", "ratio", ">=", 0.7)
    block = result_block(
        mllp_output(),
        command=".venv/bin/python bench/mllp.py --messages 3000",
        seconds=52.4,
        machine=MACHINE,
        targets=[target],
        images=[("mllp throughput", "bench/results/mllp-throughput.png")],
    )
    assert "Command: `.venv/bin/python bench/mllp.py --messages 3000` (52 s)" in block
    assert "Machine: 2 CPUs, 23.4 GiB RAM, Debian GNU/Linux 12" in block
    assert "| 1 connection | bare python-hl7 | 3,000 | 0.3 |" in block
    assert "| anchor |" in block
    assert f"**0.08{X}** vs bare python-hl7" in block
    assert f"**0.80{X}** vs bare python-hl7" in block
    assert f"1 connection: 0.08{X}; 8 connections: 0.80{X} | **not met** |" in block
    assert "![mllp throughput](bench/results/mllp-throughput.png)" in block


def test_a_bench_without_anchors_has_no_ratio_column() -> None:
    rows = [Row("per study", "dispatch", p50_ms=2300.0, p99_ms=2700.0, count=40)]
    output = Output("ai_latency", "p99_ms", rows, count_label="studies")
    target = Target("dispatch p99 ≤ 3 s", "dispatch", "p99_ms", "<=", 3000.0)
    block = result_block(output, command="c", seconds=1.0, machine=MACHINE, targets=[target])
    assert "| case | server | p50 ms | p99 ms | studies |" in block
    assert "ratio" not in block.lower()
    assert "| dispatch p99 ≤ 3 s | per study: 2,700.0 ms | **met** |" in block


def test_failure_block_says_why_and_judges_nothing() -> None:
    target = Target("p50 ≤ 10 ms", "meridian", "p50_ms", "<=", 10.0)
    block = failure_block(
        command="python bench/mwl.py",
        seconds=3.0,
        machine=MACHINE,
        targets=[target],
        reason="exit status 1",
        output_tail="Traceback ...\nRuntimeError: wlmscpfs did not start listening\n",
    )
    assert "**This benchmark failed in this run: exit status 1.** No figures." in block
    assert "RuntimeError: wlmscpfs did not start listening" in block
    assert "| p50 ≤ 10 ms | the bench failed | not evaluated |" in block
    assert "| meridian |" not in block


DOCUMENT = """# Benchmarks

Hand-written intro.

## MLLP

<!-- bench:mllp:start -->
old figures
<!-- bench:mllp:end -->

Analysis that must survive, with **bold** and a table:

| a | b |
|---|---|
"""


def test_update_replaces_inside_the_markers_and_keeps_every_byte_outside() -> None:
    updated = update_document(DOCUMENT, {"mllp": "new figures"}, {})
    assert "old figures" not in updated
    before, _, after = DOCUMENT.partition("old figures\n")
    assert updated == before + "new figures\n" + after
    assert update_document(updated, {"mllp": "new figures"}, {}) == updated  # idempotent


def test_a_bench_without_markers_gets_a_section_at_the_end() -> None:
    updated = update_document(DOCUMENT, {"cluster": "cluster figures"}, {"cluster": "Cluster"})
    assert updated.startswith(DOCUMENT.rstrip("\n"))
    assert updated.endswith(
        "## Cluster\n\n<!-- bench:cluster:start -->\ncluster figures\n<!-- bench:cluster:end -->\n"
    )


def test_unbalanced_markers_are_an_error() -> None:
    broken = DOCUMENT.replace("<!-- bench:mllp:end -->", "")
    with pytest.raises(ValueError, match="mllp"):
        update_document(broken, {"mllp": "x"}, {})


def test_summary_lists_every_target_and_a_failed_bench() -> None:
    target = Target("hub ≥ 0.7", "meridian hub", "ratio", ">=", 0.7)
    outcomes = [
        Outcome("MLLP", [evaluate(target, mllp_output())]),
        Outcome("MWL", [], failure="exit status 1"),
    ]
    block = summary_block(outcomes, seconds=600.0, machine=MACHINE)
    assert "Every benchmark, one after the other: 10.0 minutes." in block
    assert (
        f"| MLLP | hub ≥ 0.7 | 1 connection: 0.08{X}; 8 connections: 0.80{X} | **not met** |"
        in block
    )
    assert f"| MWL | {DASH} | failed: exit status 1 | {DASH} |" in block


# -- rows, registry, runner ----------------------------------------------------------------


def test_rows_round_trip_through_json(tmp_path: Path) -> None:
    output = mwl_output()
    output.notes.append("200 queries")
    output.versions["dcmtk"] = "wlmscpfs v3.6.7"
    write_json(tmp_path / "mwl.json", output)
    assert read_json(tmp_path / "mwl.json") == output


def test_every_registered_bench_has_a_script_and_a_unique_name() -> None:
    names = [bench.name for bench in BENCHES]
    assert len(names) == len(set(names))
    for bench in BENCHES:
        assert (Path(__file__).resolve().parents[1] / bench.script).is_file()
    assert [bench.name for bench in by_name(["mwl"])] == ["mwl"]
    with pytest.raises(KeyError):
        by_name(["nope"])


GOOD_BENCH = """
import sys
from bench.rows import Output, Row, write_json
print("fake bench: printed table")
rows = [Row("c", "anchor", throughput=100.0, unit="x/s"), Row("c", "hub", "anchor", 50.0, "x/s")]
write_json(sys.argv[sys.argv.index("--json") + 1], Output("good", "throughput", rows))
"""

BAD_BENCH = """
import sys
print("fake bench: about to fail", file=sys.stderr)
sys.exit(3)
"""


def test_runner_reports_a_failed_bench_and_goes_on(tmp_path: Path) -> None:
    from bench.run_all import run

    (tmp_path / "good.py").write_text(GOOD_BENCH)
    (tmp_path / "bad.py").write_text(BAD_BENCH)
    ratio_target = Target("hub ≥ 0.4", "hub", "ratio", ">=", 0.4)
    benches = [
        Bench("bad", "Bad bench", str(tmp_path / "bad.py"), (), (), (ratio_target,)),
        Bench("good", "Good bench", str(tmp_path / "good.py"), (), (), (ratio_target,)),
        Bench("absent", "Needs a tool", str(tmp_path / "good.py"), (), (), (),
              requires=("no-such-tool-anywhere",)),
    ]  # fmt: skip
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n<!-- bench:good:start -->\nstale\n<!-- bench:good:end -->\n")

    assert run(benches, out, tmp_path / "results") == 1

    report = out.read_text()
    assert "stale" not in report
    assert "**This benchmark failed in this run: exit status 3.**" in report
    assert "fake bench: about to fail" in report
    assert f"**0.50{X}** vs anchor" in report
    assert f"| hub ≥ 0.4 | c: 0.50{X} | **met** |" in report
    assert "no-such-tool-anywhere not installed" in report
    assert "![good throughput](results/good-throughput.png)" in report
    assert (tmp_path / "results" / "good-throughput.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "results" / "good.txt").read_text() == "fake bench: printed table\n"


def test_quick_mllp_bench_end_to_end(tmp_path: Path) -> None:
    """The cheapest registered bench, --quick, through the runner (a smoke run, no timings)."""
    from bench.run_all import run

    out = tmp_path / "BENCHMARKS.md"
    assert run(by_name(["mllp"]), out, tmp_path / "results", quick=True) == 0

    output = read_json(tmp_path / "results" / "mllp.json")
    assert [(row.case, row.server, row.anchor) for row in output.rows] == [
        ("1 connection", "bare python-hl7", None),
        ("1 connection", "meridian hub", "bare python-hl7"),
        ("8 connections", "bare python-hl7", None),
        ("8 connections", "meridian hub", "bare python-hl7"),
    ]
    assert all(row.count == 150 and row.throughput for row in output.rows)
    report = out.read_text()
    assert report.startswith("# Benchmarks")
    assert "Quick smoke run" in report
    assert f"{X}** vs bare python-hl7" in report
    assert "## MWL: C-FIND latency (issue 2)" in report  # the rest of the document is kept
