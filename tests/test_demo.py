"""``meridian demo`` end to end: the real command, as a process, from the repository root.

It starts the hub, the reference AI node and the EHR stand-ins itself (no
Orthanc: ``--no-pacs`` keeps it quick) and must print every step as done.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.hub_process import REPO

MERIDIAN = str(Path(sys.executable).parent / "meridian")


def demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MERIDIAN, "demo", "--no-pacs", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_demo_runs_every_step_and_shows_the_flow(tmp_path: Path) -> None:
    result = demo("--data", str(tmp_path / "work"))
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr[-3000:]}"

    for number in range(1, 8):
        assert f"[{number}/7] " in out
    assert out.count("\n      ok (") == 7, "every step reports ok"
    assert "FAILED" not in out
    assert "ACK AA \u00d73" in out
    assert "3 scheduled item(s)" in out
    assert re.search(r"DM\d{6}H\s+DEMO\^ALICE", out), "the head order is on the worklist"
    assert "13/13 \u00d7 Success" in out
    assert re.search(r"→ ai-ct-head\s+rule: CT head\s+model meridian-hyperdense 1\.0\.0", out)
    assert "Hyperdense region: score" in out and "CRITICAL" in out
    assert re.search(r"DM\d{6}H\s+#2\s+#1\s+ROUTINE\s+CRITICAL", out), "the head jumps the STAT"
    assert "ORU^R01 received by the EHR" in out
    assert re.search(r"OBR\|1\|PLDM\d{6}H\|", out)
    assert "status preliminary" in out, "the FHIR DiagnosticReport of the AI draft"
    assert re.search(r"orders-to-worklist\s+started\s+3\s+SENT 3", out)
    assert re.search(r"user demo\s+password \S{12,}", out)
    assert "All 7 steps succeeded" in out

    # --data keeps the folder: the hub's store is there for `meridian audit`.
    assert (tmp_path / "work" / "var" / "meridian.db").exists()
    assert (tmp_path / "work" / "hub.log").exists()


def test_a_step_that_times_out_fails_clearly_and_stops_everything(tmp_path: Path) -> None:
    result = demo("--data", str(tmp_path / "work"), "--timeout", "0.01", timeout=60)
    assert result.returncode == 1, result.stdout
    assert "FAILED while starting: timed out after 0.01 s" in result.stdout
    assert "work folder is kept" in result.stdout
