"""End to end: a real hub process, orders over MLLP, the worklist queried like a modality.

The EHR side is a plain socket MLLP client and the hub's own ``meridian send``;
the modality side is dcmtk ``findscu -W`` and a pynetdicom SCU.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from engine.formats.hl7 import unescape
from tests.support import mllp_client
from tests.support.hub_process import HubProcess, start_hub
from tests.support.modality import findscu, mwl_query
from tests.support.orders import control_id, orm


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    running = start_hub(tmp_path_factory.mktemp("hub"))
    yield running
    code = running.stop()
    assert code == 0, f"hub did not stop cleanly ({code}):\n{running.log()}"


def eventually(
    query: Callable[[], list[Dataset]],
    predicate: Callable[[list[Dataset]], bool],
    timeout: float = 10.0,
) -> list[Dataset]:
    """Poll ``query`` until ``predicate`` holds: delivery to the worklist is asynchronous."""
    deadline = time.monotonic() + timeout
    results = query()
    while not predicate(results) and time.monotonic() < deadline:
        time.sleep(0.05)
        results = query()
    return results


def send_ok(hub: HubProcess, message: str, encoding: str = "utf-8") -> bytes:
    ack = mllp_client.send(hub.mllp_port, message.encode(encoding))
    assert mllp_client.msa(ack)[1] == "AA", ack
    return ack


def by_accession(hub: HubProcess, accession: str, expected: int = 1) -> list[Dataset]:
    return eventually(
        lambda: mwl_query(hub.dicom_port, AccessionNumber=accession),
        lambda found: len(found) == expected,
    )


def sps(item: Dataset) -> Dataset:
    return item.ScheduledProcedureStepSequence[0]


def test_new_order_appears_in_worklist_for_findscu(hub: HubProcess, tmp_path: Path) -> None:
    mcid = control_id()
    ack = send_ok(
        hub,
        orm(
            placer="E2E-NW",
            accession="ACCNW1",
            patient_id="PNW1",
            name="SMITH^JOHN^A",
            modality="MR",
            start="202611241415",
            mcid=mcid,
        ),
    )
    assert mllp_client.msa(ack)[2] == mcid, "MSA-2 must echo the order's MSH-10"
    by_accession(hub, "ACCNW1")
    found = findscu(
        hub.dicom_port,
        tmp_path,
        [
            "AccessionNumber=ACCNW1",
            "PatientName",
            "PatientID",
            "StudyInstanceUID",
            "RequestedProcedureID",
            "ScheduledProcedureStepSequence[0].Modality",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
            "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
        ],
    )
    assert len(found) == 1
    item = found[0]
    assert str(item.PatientName) == "SMITH^JOHN^A"
    assert item.PatientID == "PNW1"
    assert item.RequestedProcedureID == "RPACCNW1"
    assert item.StudyInstanceUID, "a Study Instance UID is generated at order time"
    step = sps(item)
    assert step.Modality == "MR"
    assert step.ScheduledProcedureStepStartDate == "20261124"
    assert step.ScheduledProcedureStepStartTime.startswith("1415")
    assert step.ScheduledProcedureStepID == "SPSACCNW1"


def test_findscu_matches_on_modality_and_date_range(hub: HubProcess, tmp_path: Path) -> None:
    send_ok(
        hub,
        orm(
            placer="E2E-RNG",
            accession="ACCRNG",
            patient_id="PRNG",
            modality="US",
            start="203001150900",
        ),
    )
    by_accession(hub, "ACCRNG")
    found = findscu(
        hub.dicom_port,
        tmp_path,
        [
            "PatientID",
            "AccessionNumber",
            "ScheduledProcedureStepSequence[0].Modality=US",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20300101-20300131",
        ],
    )
    assert [d.AccessionNumber for d in found] == ["ACCRNG"]


def test_change_order_updates_the_item_in_place(hub: HubProcess) -> None:
    send_ok(hub, orm(placer="E2E-XO", accession="ACCXO", start="202611250800"))
    before = by_accession(hub, "ACCXO")[0]
    send_ok(
        hub,
        orm(
            control="XO", placer="E2E-XO", accession="ACCXO", start="202611260930", name="DOE^JANET"
        ),
    )
    after = eventually(
        lambda: mwl_query(hub.dicom_port, AccessionNumber="ACCXO"),
        lambda found: (
            len(found) == 1 and sps(found[0]).ScheduledProcedureStepStartDate == "20261126"
        ),
    )
    assert len(after) == 1, "XO must update the item, not add a second one"
    assert str(after[0].PatientName) == "DOE^JANET"
    assert after[0].StudyInstanceUID == before.StudyInstanceUID, "the study UID is kept"


@pytest.mark.parametrize("control", ["CA", "DC"])
def test_cancel_and_discontinue_remove_the_item(hub: HubProcess, control: str) -> None:
    accession = f"ACC{control}"
    send_ok(hub, orm(placer=f"E2E-{control}", accession=accession))
    by_accession(hub, accession)
    send_ok(hub, orm(control=control, placer=f"E2E-{control}", accession=accession))
    assert by_accession(hub, accession, expected=0) == []


def test_status_change_updates_the_step_status(hub: HubProcess) -> None:
    send_ok(hub, orm(placer="E2E-SC", accession="ACCSC"))
    assert sps(by_accession(hub, "ACCSC")[0]).ScheduledProcedureStepStatus == "SCHEDULED"
    send_ok(hub, orm(control="SC", placer="E2E-SC", accession="ACCSC", status="IP"))
    found = eventually(
        lambda: mwl_query(hub.dicom_port, AccessionNumber="ACCSC"),
        lambda f: bool(f) and sps(f[0]).ScheduledProcedureStepStatus != "SCHEDULED",
    )
    assert sps(found[0]).ScheduledProcedureStepStatus == "STARTED"


def test_one_message_with_three_orders_makes_three_items(hub: HubProcess) -> None:
    send_ok(
        hub,
        orm(
            placer="E2E-M1",
            accession="ACCM1",
            patient_id="PMULTI",
            extra_orders=[
                ("E2E-M2", "ACCM2", "CT", "CTCHEST^CT Chest^LOCAL"),
                ("E2E-M3", "ACCM3", "MR", "MRKNEE^MR Knee^LOCAL"),
            ],
        ),
    )
    found = eventually(lambda: mwl_query(hub.dicom_port, PatientID="PMULTI"), lambda f: len(f) == 3)
    assert sorted(d.AccessionNumber for d in found) == ["ACCM1", "ACCM2", "ACCM3"]
    assert len({d.StudyInstanceUID for d in found}) == 3


@pytest.mark.parametrize(
    ("charset", "encoding", "name"),
    [("UNICODE UTF-8", "utf-8", "ŁUKASZEWICZ^ŻANNA"), ("8859/1", "latin-1", "MÜLLER^RENÉ")],
)
def test_non_ascii_names_survive_to_the_modality(
    hub: HubProcess, tmp_path: Path, charset: str, encoding: str, name: str
) -> None:
    accession = f"ACCCS{encoding[:3].upper()}"
    send_ok(
        hub,
        orm(placer=f"E2E-{accession}", accession=accession, name=name, charset=charset),
        encoding,
    )
    assert str(by_accession(hub, accession)[0].PatientName) == name
    found = findscu(
        hub.dicom_port,
        tmp_path,
        [f"AccessionNumber={accession}", "PatientName", "SpecificCharacterSet"],
    )
    assert str(found[0].PatientName) == name


def test_escaped_delimiters_are_decoded(hub: HubProcess) -> None:
    send_ok(
        hub,
        orm(
            placer="E2E-ESC",
            accession="ACCESC",
            procedure="CTABD^CT Abdomen \\T\\ Pelvis\\F\\contrast^LOCAL",
        ),
    )
    item = by_accession(hub, "ACCESC")[0]
    assert item.RequestedProcedureDescription == "CT Abdomen & Pelvis|contrast"


def test_lf_segment_separators_are_accepted(hub: HubProcess) -> None:
    send_ok(hub, orm(placer="E2E-LF", accession="ACCLF").replace("\r", "\n"))
    assert len(by_accession(hub, "ACCLF")) == 1


def test_resent_message_is_acked_again_but_applied_once(hub: HubProcess) -> None:
    message = orm(placer="E2E-DUP", accession="ACCDUP")
    first = send_ok(hub, message)
    by_accession(hub, "ACCDUP")
    second = send_ok(hub, message)
    assert mllp_client.msa(second)[2] == mllp_client.msa(first)[2]
    with sqlite3.connect(hub.db_path) as db:
        (count,) = db.execute("SELECT count(*) FROM messages WHERE accession='ACCDUP'").fetchone()
    assert count == 1
    assert len(by_accession(hub, "ACCDUP")) == 1


def test_meridian_send_prints_the_ack(hub: HubProcess, tmp_path: Path) -> None:
    path = tmp_path / "order.hl7"
    path.write_text(orm(placer="E2E-CLI", accession="ACCCLI").replace("\r", "\n"))
    meridian = Path(sys.executable).parent / "meridian"
    result = subprocess.run(
        [str(meridian), "send", str(path), "--port", str(hub.mllp_port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "MSA|AA|" in result.stdout
    assert len(by_accession(hub, "ACCCLI")) == 1


def test_unsupported_message_type_gets_ar(hub: HubProcess) -> None:
    adt = orm(placer="E2E-ADT", accession="ACCADT").replace("ORM^O01", "ADT^A01")
    ack = mllp_client.send(hub.mllp_port, adt.encode())
    fields = mllp_client.msa(ack)
    assert fields[1] == "AR"
    assert "ADT^A01" in unescape(fields[3]), "MSA-3 names the refused type"
    assert mllp_client.segment(ack, "ERR") is not None


def test_transform_failure_gets_ae_with_reason_and_is_stored(hub: HubProcess) -> None:
    bad = orm(placer="E2E-BAD", accession="ACCBAD", start="2026XX231030")
    ack = mllp_client.send(hub.mllp_port, bad.encode())
    assert mllp_client.msa(ack)[1] == "AE"
    err = mllp_client.segment(ack, "ERR")
    assert err is not None and any("Date" in f or "DA" in f for f in err), ack
    with sqlite3.connect(hub.db_path) as db:
        row = db.execute("SELECT status, error FROM messages WHERE accession='ACCBAD'").fetchone()
    assert row[0] == "ERROR" and row[1]
    assert mwl_query(hub.dicom_port, AccessionNumber="ACCBAD") == []


def test_non_hl7_payload_gets_ar_and_is_stored_as_error(hub: HubProcess) -> None:
    ack = mllp_client.send(hub.mllp_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert mllp_client.msa(ack)[1] == "AR"
    assert "not an HL7" in ack.decode()
    with sqlite3.connect(hub.db_path) as db:
        (errors,) = db.execute(
            "SELECT count(*) FROM messages WHERE status='ERROR' AND raw LIKE 'GET /%'"
        ).fetchone()
    assert errors == 1


def test_garbage_and_truncated_frames_do_not_stop_the_listener(hub: HubProcess) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", hub.mllp_port)) as garbage:
        garbage.sendall(b"\x00\xff garbage without framing \x1c\x0d")
        garbage.settimeout(5)
        assert garbage.recv(100) == b"", "a framing violation closes that connection"
    with socket.create_connection(("127.0.0.1", hub.mllp_port)) as truncated:
        truncated.sendall(b"\x0bMSH|^~\\&|RIS|HOSP|MERIDIAN|RAD|2026")
    send_ok(hub, orm(placer="E2E-AFTER", accession="ACCAFTER"))
    assert len(by_accession(hub, "ACCAFTER")) == 1


def test_huge_message_gets_ar_and_the_connection_keeps_serving(hub: HubProcess) -> None:
    import socket

    huge = orm(placer="E2E-HUGE", accession="ACCHUGE") + "NTE|1||" + "X" * 2_000_000 + "\r"
    with socket.create_connection(("127.0.0.1", hub.mllp_port)) as sock:
        sock.sendall(mllp_client.frame(huge.encode()))
        ack = mllp_client.read_frame(sock)
        assert mllp_client.msa(ack)[1] == "AR"
        assert "exceeds" in ack.decode()
        sock.sendall(mllp_client.frame(orm(placer="E2E-NEXT", accession="ACCNEXT").encode()))
        assert mllp_client.msa(mllp_client.read_frame(sock))[1] == "AA"
    assert mwl_query(hub.dicom_port, AccessionNumber="ACCHUGE") == []


def test_many_concurrent_connections(hub: HubProcess) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> str:
        return mllp_client.msa(
            mllp_client.send(
                hub.mllp_port,
                orm(placer=f"E2E-C{i}", accession=f"ACCC{i}", patient_id="PCONC").encode(),
            )
        )[1]

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(one, range(40)))
    assert codes == ["AA"] * 40
    found = eventually(lambda: mwl_query(hub.dicom_port, PatientID="PCONC"), lambda f: len(f) == 40)
    assert len(found) == 40


def test_omi_o23_order_becomes_a_worklist_item(hub: HubProcess) -> None:
    message = (Path(__file__).parent / "messages" / "omi_o23_v251.hl7").read_bytes()
    ack = mllp_client.send(hub.mllp_port, message)
    assert mllp_client.msa(ack)[1] == "AA"
    # IPC-1 accession, IPC-3 study UID, IPC-5 modality, IPC-9 station AE (see the file).
    found = by_accession(hub, "ACC3001")
    assert len(found) == 1
    assert found[0].StudyInstanceUID == "1.2.826.0.1.3680043.8.498.3001"
    assert sps(found[0]).Modality == "MR"
    assert sps(found[0]).ScheduledStationAETitle == "MR_3T"
    assert found[0].RequestedProcedurePriority == "HIGH"


def test_an_aa_means_the_message_is_already_in_the_store(hub: HubProcess) -> None:
    mcid = control_id()
    send_ok(hub, orm(placer="E2E-DURABLE", accession="ACCDUR", mcid=mcid))
    # No waiting: the ACK is only sent after the commit.
    with sqlite3.connect(hub.db_path) as db:
        row = db.execute("SELECT status FROM messages WHERE control_id=?", (mcid,)).fetchone()
    assert row is not None and row[0] in ("QUEUED", "SENT")


def test_worklist_and_messages_survive_a_restart(tmp_path: Path) -> None:
    first = start_hub(tmp_path)
    try:
        send_ok(first, orm(placer="E2E-RESTART", accession="ACCRESTART"))
        assert len(by_accession(first, "ACCRESTART")) == 1
    finally:
        assert first.stop() == 0
    second = start_hub(tmp_path)
    try:
        assert len(mwl_query(second.dicom_port, AccessionNumber="ACCRESTART")) == 1
    finally:
        assert second.stop() == 0


def test_admin_api_serves_health_and_metrics_and_guards_the_rest(hub: HubProcess) -> None:
    import httpx

    base = f"http://127.0.0.1:{hub.admin_port}"
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert 'meridian_messages_total{channel="orders-to-worklist"' in metrics
    assert httpx.get(f"{base}/api/messages", timeout=10).status_code == 401, "login required"
