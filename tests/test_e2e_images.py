"""End to end: orders and images through a real hub, Orthanc as the PACS, dcmtk as AI nodes.

ORM over MLLP makes the worklist item; ``storescu`` sends the study as a
modality does; the hub archives it, normalizes it (tag morphing, order data
from the worklist), forwards it to Orthanc and routes it by rules: CT head to
the AI node, chest studies de-identified to an external AI node.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support import mllp_client
from tests.support.dicom_files import Patient, write_study
from tests.support.hub_process import HubProcess, start_hub
from tests.support.modality import mwl_query
from tests.support.orders import orm
from tests.support.orthanc import OrthancProcess, orthanc_available, start_orthanc
from tests.support.storescp import StoreSCP

pytestmark = pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed")


@dataclass
class Site:
    hub: HubProcess
    pacs: OrthancProcess
    ai_node: StoreSCP
    external_ai: StoreSCP
    workdir: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("site")
    pacs = start_orthanc(workdir / "orthanc")
    ai_node = StoreSCP(workdir / "ai-node", aet="AI_NODE").start()
    external_ai = StoreSCP(workdir / "external-ai", aet="EXT_AI").start()
    fast_retry = {"initial_backoff_seconds": 0.5, "max_backoff_seconds": 2}
    overrides = {
        "images-to-ai": {
            "source": {"quiet_period_seconds": 1},
            "destinations": {
                "pacs": {"port": pacs.dicom_port, "retry": fast_retry},
                "ai-ct-head": {"port": ai_node.port, "retry": fast_retry},
                "ai-external-chest": {
                    "type": "dicom", "host": "127.0.0.1", "port": external_ai.port,
                    "ae_title": "EXT_AI", "retry": fast_retry,
                    "filters": [{"name": "chest", "when": 'study.BodyPartExamined == "CHEST"'}],
                },
            },
        }
    }  # fmt: skip
    hub = start_hub(workdir / "hub", overrides)
    try:
        yield Site(hub, pacs, ai_node, external_ai, workdir)
    finally:
        code = hub.stop()
        pacs.stop()
        ai_node.stop()
        external_ai.stop()
        assert code == 0, hub.log()


def storescu(site: Site, paths: list[Path], called: str = "MERIDIAN") -> int:
    completed = subprocess.run(
        ["storescu", "-aet", "MODALITY1", "-aec", called, "127.0.0.1", str(site.hub.dicom_port),
         *map(str, paths)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return completed.returncode


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def order(site: Site, accession: str, patient_id: str, name: str) -> None:
    ack = mllp_client.send(
        site.hub.mllp_port,
        orm(placer=f"IMG-{accession}", accession=accession, patient_id=patient_id,
            name=name).encode(),
    )  # fmt: skip
    assert mllp_client.msa(ack)[1] == "AA"
    assert wait_for(lambda: len(mwl_query(site.hub.dicom_port, AccessionNumber=accession)) == 1)


def test_study_is_normalized_forwarded_to_pacs_and_routed_to_ai(site: Site, tmp_path: Path) -> None:
    order(site, "ACCHEAD1", "PHEAD1", "ORDERED^OLIVIA")
    # The modality left the patient name empty and the institution out; the body
    # part is the vendor's "Head", which the site's table maps to HEAD.
    study = write_study(
        tmp_path / "head", series=2, per_series=3, accession="ACCHEAD1", body_part="Head",
        patient=Patient(patient_id="PHEAD1", name=""), institution="",
    )  # fmt: skip
    assert storescu(site, study.paths) == 0
    wanted = set(study.sop_uids)
    assert wait_for(lambda: wanted <= site.pacs.sop_instance_uids()), site.hub.log()[-3000:]
    tags = site.pacs.tags_by_sop_uid()[study.sop_uids[0]]
    assert tags["PatientName"] == "ORDERED^OLIVIA", "copied from the order"
    assert tags["BodyPartExamined"] == "HEAD", "mapped through the body_part table"
    assert tags["InstitutionName"] == "Meridian General Hospital"
    assert "OriginalAttributesSequence" in tags, "the original values are kept"
    assert wait_for(lambda: wanted <= site.ai_node.received_sop_uids()), "CT head goes to AI"
    assert not wanted & site.external_ai.received_sop_uids(), "head studies stay inside"


def test_archive_keeps_the_instances_as_received(site: Site, tmp_path: Path) -> None:
    study = write_study(tmp_path / "arch", series=1, per_series=2, accession="ACCARCH",
                        body_part="Head", institution="")  # fmt: skip
    assert storescu(site, study.paths) == 0
    archived = site.hub.data_dir / "archive" / "images-to-ai" / study.study_uid
    assert wait_for(lambda: len(list(archived.rglob("*.dcm"))) == 2)
    for path in archived.rglob("*.dcm"):
        ds = dcmread(path)
        assert ds.BodyPartExamined == "Head" and "InstitutionName" in ds
        assert not ds.InstitutionName


def test_external_destination_gets_a_deidentified_study(site: Site, tmp_path: Path) -> None:
    patient = Patient(patient_id="PCHEST9", name="PRIVATE^PAULA", birth_date="19601231")
    study = write_study(tmp_path / "chest", series=1, per_series=2, accession="ACCCHEST9",
                        body_part="CHEST", patient=patient)  # fmt: skip
    assert storescu(site, study.paths) == 0
    assert wait_for(lambda: len(site.external_ai.received()) >= 2)
    sent = [dcmread(path) for path in site.external_ai.received()]
    sent = [ds for ds in sent if ds.get("PatientIdentityRemoved") == "YES"]
    assert len(sent) == 2
    for ds in sent:
        assert str(ds.PatientName) != "PRIVATE^PAULA" and ds.PatientID != "PCHEST9"
        assert ds.StudyInstanceUID != study.study_uid
        assert ds.SOPInstanceUID not in study.sop_uids
        assert ds.get("AccessionNumber", "") != "ACCCHEST9"
    assert len({ds.StudyInstanceUID for ds in sent}) == 1, "UIDs remapped consistently"
    assert wait_for(lambda: set(study.sop_uids) <= site.pacs.sop_instance_uids()), (
        "the PACS gets the study with its identity"
    )


def test_ai_node_down_then_up_gets_everything(site: Site, tmp_path: Path) -> None:
    site.ai_node.stop()
    study = write_study(tmp_path / "later", series=1, per_series=3, accession="ACCDOWN",
                        body_part="Head")  # fmt: skip
    assert storescu(site, study.paths) == 0
    assert wait_for(lambda: set(study.sop_uids) <= site.pacs.sop_instance_uids()), (
        "one destination down never blocks another"
    )
    time.sleep(2)
    site.ai_node.start()
    assert wait_for(lambda: set(study.sop_uids) <= site.ai_node.received_sop_uids())


def test_unknown_called_ae_is_refused_and_the_listener_keeps_serving(
    site: Site, tmp_path: Path
) -> None:
    study = write_study(tmp_path / "wrong", series=1, per_series=1, accession="ACCWRONG")
    assert storescu(site, study.paths, called="NOBODY") != 0
    assert storescu(site, study.paths) == 0


def test_new_order_prefetches_the_patients_priors(tmp_path: Path) -> None:
    workstation = StoreSCP(tmp_path / "workstation", aet="READING_WS").start()
    pacs = start_orthanc(
        tmp_path / "orthanc", modalities={"ws": ("READING_WS", "127.0.0.1", workstation.port)}
    )
    try:
        older = write_study(
            tmp_path / "p1",
            series=1,
            per_series=2,
            patient=Patient(patient_id="PPRIOR"),
            accession="OLD1",
        )
        other = write_study(
            tmp_path / "p2",
            series=1,
            per_series=1,
            patient=Patient(patient_id="SOMEONE"),
            accession="OLD2",
        )
        for path in [*older.paths, *other.paths]:
            pacs.upload(path)
        overrides = {
            "orders-to-worklist": {
                "destinations": {
                    "prefetch-priors": {
                        "enabled": True,
                        "port": pacs.dicom_port,
                        "modalities": ["CT"],
                    }
                }
            }
        }
        hub = start_hub(tmp_path / "hub", overrides)
        try:
            ack = mllp_client.send(
                hub.mllp_port, orm(placer="PRIOR-1", accession="NEW1", patient_id="PPRIOR").encode()
            )
            assert mllp_client.msa(ack)[1] == "AA"
            assert wait_for(lambda: workstation.received_sop_uids() == set(older.sop_uids))
            assert not workstation.received_sop_uids() & set(other.sop_uids)
        finally:
            assert hub.stop() == 0
    finally:
        pacs.stop()
        workstation.stop()
