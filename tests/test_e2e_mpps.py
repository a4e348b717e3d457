"""End to end: an order, then the modality's MPPS, through a real hub to a (test) EHR.

dcmtk has no MPPS SCU, so the modality here is pynetdicom. The EHR receives
ORM^O01 order status updates (ORC-1 SC, ORC-5 IP then CM) over MLLP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from connectors.dicom_mpps import MODALITY_PERFORMED_PROCEDURE_STEP
from tests.support import mllp_client
from tests.support.ehr import EHR
from tests.support.hub_process import HubProcess, start_hub
from tests.support.modality import mwl_query
from tests.support.orders import orm


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubProcess, EHR]]:
    ehr = EHR()
    overrides = {
        "mpps-to-ehr": {"destinations": {"ehr-order-status": {"port": ehr.oru.port}}},
    }
    hub = start_hub(tmp_path_factory.mktemp("mpps"), overrides)
    try:
        yield hub, ehr
    finally:
        code = hub.stop()
        ehr.stop()
        assert code == 0, hub.log()


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def mpps(port: int, action: str, uid: str, ds: Dataset) -> int:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(MODALITY_PERFORMED_PROCEDURE_STEP)
    assoc = ae.associate("127.0.0.1", port, ae_title="MERIDIAN")
    assert assoc.is_established
    try:
        if action == "create":
            status, _ = assoc.send_n_create(ds, MODALITY_PERFORMED_PROCEDURE_STEP, uid)
        else:
            status, _ = assoc.send_n_set(ds, MODALITY_PERFORMED_PROCEDURE_STEP, uid)
        return int(status.Status)
    finally:
        assoc.release()


def started(item: Dataset) -> Dataset:
    ds = Dataset()
    ds.PatientName = str(item.PatientName)
    ds.PatientID = item.PatientID
    ref = Dataset()
    ref.StudyInstanceUID = item.StudyInstanceUID
    ref.AccessionNumber = item.AccessionNumber
    ref.ScheduledProcedureStepID = item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID
    ref.RequestedProcedureID = item.RequestedProcedureID
    ref.ReferencedStudySequence = []
    ds.ScheduledStepAttributesSequence = [ref]
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT1"
    ds.PerformedProcedureStepStartDate = "20261123"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    return ds


def completed() -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate = "20261123"
    ds.PerformedProcedureStepEndTime = "103000"
    series = Dataset()
    series.SeriesInstanceUID = generate_uid()
    series.ReferencedImageSequence = []
    ds.PerformedSeriesSequence = [series]
    return ds


def order_statuses(ehr: EHR, accession: str) -> list[str]:
    """ORC-5 of every ORM^O01 SC the EHR received for ``accession``, in order."""
    found = []
    for message in ehr.orus():
        if "ORM^O01" not in message or accession not in message:
            continue
        orc = next(s for s in message.split("\r") if s.startswith("ORC|"))
        fields = orc.split("|")
        assert fields[1] == "SC"
        found.append(fields[5])
    return found


def test_mpps_moves_the_worklist_and_tells_the_ehr(site: tuple[HubProcess, EHR]) -> None:
    hub, ehr = site
    ack = mllp_client.send(hub.mllp_port, orm(placer="MPPS-1", accession="ACCMPPS1").encode())
    assert mllp_client.msa(ack)[1] == "AA"
    assert wait_for(lambda: len(mwl_query(hub.dicom_port, AccessionNumber="ACCMPPS1")) == 1)
    item = mwl_query(hub.dicom_port, AccessionNumber="ACCMPPS1")[0]
    uid = str(generate_uid())

    assert mpps(hub.dicom_port, "create", uid, started(item)) == 0x0000
    step = mwl_query(hub.dicom_port, AccessionNumber="ACCMPPS1")[0].ScheduledProcedureStepSequence
    assert step[0].ScheduledProcedureStepStatus == "STARTED"
    assert wait_for(lambda: order_statuses(ehr, "ACCMPPS1") == ["IP"]), hub.log()[-3000:]

    assert mpps(hub.dicom_port, "set", uid, completed()) == 0x0000
    assert mwl_query(hub.dicom_port, AccessionNumber="ACCMPPS1") == [], "done: off the worklist"
    assert wait_for(lambda: order_statuses(ehr, "ACCMPPS1") == ["IP", "CM"])
    assert mpps(hub.dicom_port, "set", uid, completed()) != 0x0000, "a final step is final"


def test_unknown_step_is_refused(site: tuple[HubProcess, EHR], tmp_path: Path) -> None:
    hub, _ = site
    assert mpps(hub.dicom_port, "set", str(generate_uid()), completed()) == 0x0112
