"""End to end: order → worklist → modality → hub → reference AI node → triage → PACS.

Everything is a real process on localhost: the hub (``meridian serve``), the
reference AI node (``meridian ai-node``), Orthanc as the PACS, dcmtk
``storescu`` as the modality. The AI node finds a hyperdense region on a CT
head and returns an SR and a GSPS; the hub puts the study at the top of the
reading worklist, forwards the results to the PACS and audits every step.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import mllp_client
from tests.support.ct_head import BLOB, head_series
from tests.support.dicom_files import write_dataset, write_study
from tests.support.ehr import EHR
from tests.support.hub_process import HubProcess, free_port, start_hub, wait_for_port
from tests.support.orders import orm
from tests.support.orthanc import OrthancProcess, orthanc_available, start_orthanc

pytestmark = pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed")

MERIDIAN = str(Path(sys.executable).parent / "meridian")
AI_BLOCK = {"model": "meridian-hyperdense", "version": "1.0.0", "mode": "assistant",
            "timeout_seconds": 4}  # fmt: skip


@dataclass
class Site:
    hub: HubProcess
    pacs: OrthancProcess
    ai_port: int
    ai_node: subprocess.Popen[bytes] | None
    workdir: Path
    ehr: EHR
    ris_port: int

    def start_ai_node(self, delay_seconds: float = 0) -> None:
        self.ai_node = subprocess.Popen(
            [MERIDIAN, "ai-node", "--port", str(self.ai_port), "--bind", "127.0.0.1",
             "--results-port", str(self.hub.dicom_port), "--results-ae", "MERIDIAN_AI",
             "--quiet-seconds", "1", "--delay-seconds", str(delay_seconds)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.ai_port)

    def stop_ai_node(self) -> None:
        if self.ai_node is not None:
            self.ai_node.send_signal(signal.SIGTERM)
            self.ai_node.wait(timeout=30)
            self.ai_node = None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("ai-site")
    pacs = start_orthanc(workdir / "orthanc")
    ai_port, ris_port = free_port(), free_port()
    ehr = EHR()
    fast = {"initial_backoff_seconds": 0.5, "max_backoff_seconds": 2}
    overrides = {
        "images-to-ai": {
            "source": {"quiet_period_seconds": 1},
            "destinations": {
                "pacs": {"port": pacs.dicom_port, "retry": fast},
                "ai-ct-head": {"port": ai_port, "ai": AI_BLOCK, "retry": fast},
                "ai-external-chest": {"enabled": False},
            },
        },
        "ai-results-to-triage": {
            "source": {"quiet_period_seconds": 1},
            "destinations": {"pacs": {"port": pacs.dicom_port, "retry": fast}},
        },
        "ai-results-json": {"source": {"port": free_port()}},
        "results-to-ehr": {
            "destinations": {
                "ehr-oru": {"port": ehr.oru.port, "retry": fast},
                "ehr-fhir": {"base_url": ehr.fhir.url, "retry": fast},
            }
        },
        "reports-from-ris": {"source": {"port": ris_port}},
    }
    hub = start_hub(workdir / "hub", overrides)
    site = Site(hub, pacs, ai_port, None, workdir, ehr, ris_port)
    site.start_ai_node()
    try:
        yield site
    finally:
        site.stop_ai_node()
        code = hub.stop()
        pacs.stop()
        ehr.stop()
        assert code == 0, hub.log()


def wait_for(check: Callable[[], bool], timeout: float = 40.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def rows(site: Site, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(site.hub.db_path) as db:
        return db.execute(sql, args).fetchall()


def reading_order(site: Site) -> list[tuple[object, ...]]:
    return rows(site, "SELECT study_instance_uid, ai_critical, order_priority FROM reading_items"
                      " WHERE status != 'PENDING' ORDER BY priority_score DESC")  # fmt: skip


def order(site: Site, accession: str, priority: str) -> None:
    message = orm(placer=f"AI-{accession}", accession=accession, patient_id=f"P{accession}",
                  modality="CT").replace("^^R\r", f"^^{priority}\r")  # fmt: skip
    assert mllp_client.msa(mllp_client.send(site.hub.mllp_port, message.encode()))[1] == "AA"


def storescu(site: Site, paths: list[Path]) -> None:
    subprocess.run(
        ["storescu", "-aet", "CT1", "-aec", "MERIDIAN", "127.0.0.1", str(site.hub.dicom_port),
         *map(str, paths)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def head_study(directory: Path, accession: str, blob: bool) -> tuple[str, list[Path]]:
    datasets = head_series(BLOB if blob else None)
    for ds in datasets:
        ds.AccessionNumber = accession
    paths = [write_dataset(ds, directory / f"{ds.InstanceNumber:03}.dcm") for ds in datasets]
    return str(datasets[0].StudyInstanceUID), paths


def test_critical_ai_finding_moves_the_study_to_the_top_and_reaches_the_pacs(
    site: Site, tmp_path: Path
) -> None:
    # A STAT chest CT is read first... until a routine head CT turns out critical.
    order(site, "ACCSTAT1", "S")
    chest = write_study(tmp_path / "chest", series=1, per_series=3, accession="ACCSTAT1",
                        body_part="CHEST")  # fmt: skip
    storescu(site, chest.paths)
    assert wait_for(lambda: [r[0] for r in reading_order(site)][:1] == [chest.study_uid])

    order(site, "ACCHEAD1", "R")
    head_uid, head_paths = head_study(tmp_path / "head", "ACCHEAD1", blob=True)
    storescu(site, head_paths)

    assert wait_for(lambda: reading_order(site)[0][:2] == (head_uid, 1)), (
        f"{reading_order(site)}\n{site.hub.log()[-4000:]}"
    )
    assert any(r[0] == chest.study_uid for r in reading_order(site)[1:])

    def sr_in_pacs() -> bool:
        tags = site.pacs.tags_by_sop_uid().values()
        return any(t.get("Modality") == "SR" and t.get("StudyInstanceUID") == head_uid
                   for t in tags)  # fmt: skip

    assert wait_for(sr_in_pacs), "assistant mode forwards the AI result objects to the PACS"

    kinds = {row[0] for row in rows(
        site, "SELECT kind FROM audit_events WHERE study_instance_uid = ?", head_uid)}
    assert {"routed", "ai_requested", "ai_result", "worklist_reprioritized"} <= kinds
    model = rows(site, "SELECT model, model_version FROM audit_events WHERE kind='ai_result'"
                       " AND study_instance_uid = ?", head_uid)  # fmt: skip
    assert model and model[0] == ("meridian-hyperdense", "1.0.0")
    reports_reach_the_ehr(site, head_uid)


def obr_status(oru: str) -> str:
    """OBR-25 (result status) of an ORU^R01."""
    obr = next(seg for seg in oru.replace("\n", "\r").split("\r") if seg.startswith("OBR|"))
    return obr.split("|")[25]


def reports_reach_the_ehr(site: Site, head_uid: str) -> None:
    """Assistant mode drafts a preliminary report; the signed one from the RIS supersedes it."""

    def orus(status: str) -> list[str]:
        return [m for m in site.ehr.orus() if "ACCHEAD1" in m and obr_status(m) == status]

    def statuses() -> list[object]:
        return [r.get("status") for r in site.ehr.diagnostic_reports("ACCHEAD1")]

    assert wait_for(lambda: bool(orus("P"))), site.hub.log()[-3000:]
    assert f"113014^DICOM Study^DCM||{head_uid}" in orus("P")[0]
    assert wait_for(lambda: statuses() == ["preliminary"]), statuses()

    final = (
        "MSH|^~\\&|RADREPORT|HOSP|MERIDIAN|HOSP|20261123120000||ORU^R01|RR-E2E-1|P|2.5.1\r"
        "PID|1||PACCHEAD1^^^HOSP^MR||DOE^JANE||19800101|F\r"
        "OBR|1|AI-ACCHEAD1|ACCHEAD1|CTHEAD^CT Head^LOCAL|||20261123101500|||||||||||||||"
        "20261123115500||CT|F|||||||4711&HOUSE&GREGORY\r"
        "OBX|1|TX|&GDT^Report text||Acute hemorrhage confirmed.||||||F\r"
        f"ZDS|{head_uid}^MERIDIAN^Application^DICOM\r"
    )
    ack = mllp_client.send(site.ris_port, final.encode())
    assert mllp_client.msa(ack)[1] == "AA", ack
    assert wait_for(lambda: bool(orus("F"))), site.hub.log()[-3000:]
    assert wait_for(lambda: statuses() == ["final"]), f"one report, superseded: {statuses()}"


def test_normal_head_keeps_its_priority(site: Site, tmp_path: Path) -> None:
    order(site, "ACCNORM1", "R")
    uid, paths = head_study(tmp_path / "normal", "ACCNORM1", blob=False)
    storescu(site, paths)
    assert wait_for(lambda: bool(rows(
        site, "SELECT 1 FROM audit_events WHERE kind='ai_result' AND study_instance_uid=?", uid)))
    (critical,) = rows(site, "SELECT ai_critical FROM reading_items WHERE study_instance_uid=?",
                       uid)[0]  # fmt: skip
    assert critical == 0


def test_ai_down_records_a_timeout_and_an_alert_and_the_worklist_does_not_wait(
    site: Site, tmp_path: Path
) -> None:
    site.stop_ai_node()
    order(site, "ACCDOWN1", "R")
    uid, paths = head_study(tmp_path / "down", "ACCDOWN1", blob=True)
    storescu(site, paths)
    assert wait_for(lambda: bool(rows(
        site, "SELECT 1 FROM reading_items WHERE study_instance_uid=? AND status='UNREAD'", uid)))
    assert wait_for(lambda: bool(rows(
        site, "SELECT 1 FROM audit_events WHERE kind='ai_timeout' AND study_instance_uid=?", uid)))
    assert rows(site, "SELECT count(*) FROM alerts WHERE kind='ai_timeout'")[0][0] >= 1
    (critical,) = rows(site, "SELECT ai_critical FROM reading_items WHERE study_instance_uid=?",
                       uid)[0]  # fmt: skip
    assert critical == 0, "no AI answer: normal priority"
    site.start_ai_node()
    assert wait_for(lambda: bool(rows(
        site, "SELECT 1 FROM reading_items WHERE study_instance_uid=? AND ai_critical", uid))), (
        "once the AI is back the queued study is analysed after all"
    )


def test_slow_ai_times_out_then_its_late_result_still_counts(site: Site, tmp_path: Path) -> None:
    site.stop_ai_node()
    site.start_ai_node(delay_seconds=8)  # the model's timeout is 4 s
    try:
        order(site, "ACCSLOW1", "R")
        uid, paths = head_study(tmp_path / "slow", "ACCSLOW1", blob=True)
        storescu(site, paths)
        assert wait_for(lambda: bool(rows(
            site, "SELECT 1 FROM audit_events WHERE kind='ai_timeout' AND study_instance_uid=?",
            uid)))  # fmt: skip
        (critical,) = rows(site, "SELECT ai_critical FROM reading_items"
                                 " WHERE study_instance_uid=?", uid)[0]  # fmt: skip
        assert critical == 0, "the worklist does not wait for a slow AI"
        assert wait_for(lambda: bool(rows(
            site, "SELECT 1 FROM reading_items WHERE study_instance_uid=? AND ai_critical", uid)))
    finally:
        site.stop_ai_node()
        site.start_ai_node()
