"""PHI masked in logs: the filter's rules, pynetdicom's dataset dumps, and a real hub at DEBUG."""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.dsutils import pretty_dataset
from sqlalchemy import create_engine

from connectors.dicom_mwl import MODALITY_WORKLIST_FIND, DicomListenerConfig, MWLServer
from engine.log_masking import MASK, PHIMaskingFilter, install, mask_phi
from engine.worklist import WorklistStore, worklist_items
from engine.worklist_item import WorklistItem
from tests.support.dicom_files import make_ct_instance, write_dataset
from tests.support.hub_process import REPO, free_port, prepare_channels, wait_for_port
from tests.support.mllp_client import msa, send
from tests.support.modality import mwl_query
from tests.support.orders import orm

pytestmark = pytest.mark.timeout(90)

NAME, PATIENT_ID, ACCESSION = "ZZSECRET^PHIPATIENT", "PHIID4711", "PHIACC99"


def _dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.AccessionNumber = NAME, PATIENT_ID, ACCESSION
    ds.Modality, ds.StudyInstanceUID = "CT", "1.2.3.4.5"
    item = Dataset()
    item.ScheduledPerformingPhysicianName = "DR^NOBODY"
    item.ScheduledStationAETitle = "CT1"
    ds.ScheduledProcedureStepSequence = [item]
    return ds


def _no_phi(text: str) -> None:
    for secret in ("ZZSECRET", "PHIPATIENT", PATIENT_ID, ACCESSION, "NOBODY"):
        assert secret not in text, f"{secret!r} leaked"


# -- the rules ------------------------------------------------------------------------------


def test_pynetdicom_dump_keeps_structure_masks_values() -> None:
    masked = mask_phi("\n".join(pretty_dataset(_dataset())))
    _no_phi(masked)
    assert f"(0010,0010) PN [{MASK}]" in masked and "# 1 PatientName" in masked
    assert "[CT]" in masked and "[1.2.3.4.5]" in masked and "[CT1]" in masked  # not PHI


def test_pydicom_dump_and_json_are_masked() -> None:
    ds = _dataset()
    masked = mask_phi(str(ds))
    _no_phi(masked)
    assert "Modality" in masked and "'CT'" in masked
    masked_json = mask_phi(repr(ds.to_json_dict()) + " " + ds.to_json())
    _no_phi(masked_json)
    assert "'00100010': {***}" in masked_json and '"00100020": {***}' in masked_json


def test_hl7_segments_are_masked_raw_and_as_repr() -> None:
    message = orm(patient_id=PATIENT_ID, name=NAME, accession=ACCESSION)
    for text in (message, repr(message.encode()), f"got {message!r} from 10.0.0.1"):
        masked = mask_phi(text)
        _no_phi(masked)
        assert f"MSH|{MASK}" in masked
    assert mask_phi(message).count(f"|{MASK}") == len(message.strip("\r").split("\r"))


def test_keyword_values_are_masked_and_other_text_kept() -> None:
    text = (
        f"query PatientName={NAME}, PatientID: {PATIENT_ID}; {{'AccessionNumber': '{ACCESSION}'}}"
        " C-FIND from MODALITY1 at 127.0.0.1:4242: status 0xFF00, 3 match(es)"
    )
    masked = mask_phi(text)
    _no_phi(masked)
    assert "PatientName=***" in masked and "C-FIND from MODALITY1 at 127.0.0.1:4242" in masked
    assert "status 0xFF00, 3 match(es)" in masked
    plain = "association accepted: CT1 from 127.0.0.1; study 1.2.840.113619.2.55 stored"
    assert mask_phi(plain) == plain


def test_filter_masks_arguments_exceptions_and_stacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(PHIMaskingFilter())
    logger = logging.getLogger("tests.log_masking.filter")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("dataset:\n%s", _dataset())
        try:
            raise ValueError(f"cannot parse PID|1||{PATIENT_ID}||{NAME}")
        except ValueError:
            logger.exception("parse failed", stack_info=True)
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    _no_phi(output)
    assert "ValueError: cannot parse PID|***" in output and "Patient's Name" in output


# -- pynetdicom's own identifier dumps, caught by the net ---------------------------------


@pytest.fixture
def root_capture() -> Iterator[io.StringIO]:
    """The root logger at DEBUG into a stream handler with the filter, as ``meridian`` does."""
    stream = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    saved_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    install(root)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)


def test_pynetdicom_identifier_dumps_are_masked(tmp_path: Path, root_capture: io.StringIO) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'mwl.db'}")
    worklist_items.create(engine)
    store = WorklistStore(engine)
    with engine.begin() as conn:
        attributes = {
            "PatientID": PATIENT_ID,
            "PatientName": NAME,
            "AccessionNumber": ACCESSION,
            "ScheduledProcedureStepSequence": [
                {"Modality": "CT", "ScheduledStationAETitle": "CT1"}
            ],
        }
        store.apply(conn, WorklistItem(action="create", key="o1", attributes=attributes))
    server = MWLServer(DicomListenerConfig(host="127.0.0.1", port=0), store)
    server.start()
    # Turned back on after start(): pynetdicom now dumps identifiers (a library default).
    _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = True
    try:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(MODALITY_WORKLIST_FIND)
        assoc = ae.associate("127.0.0.1", server.bound_port, ae_title="MERIDIAN")
        query = Dataset()
        query.PatientName, query.PatientID, query.AccessionNumber = NAME, "", ""
        statuses = [int(s.Status) for s, _ in assoc.send_c_find(query, MODALITY_WORKLIST_FIND)]
        assoc.release()
    finally:
        _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = False
        server.stop()
        engine.dispose()
    assert statuses == [0xFF00, 0x0000]
    output = root_capture.getvalue()
    assert "(0010,0010) PN [***]" in output  # pynetdicom did dump the identifiers...
    _no_phi(output)  # ...and the net caught them


# -- a real hub at DEBUG --------------------------------------------------------------------


def _wait_for(hub_log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in hub_log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged:\n{hub_log.read_text(errors='replace')[-3000:]}")


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed")
def test_hub_at_debug_logs_events_but_no_phi(tmp_path: Path) -> None:
    mllp_port, dicom_port, admin_port = free_port(), free_port(), free_port()
    channels = prepare_channels(tmp_path / "channels", mllp_port)
    hub_log = tmp_path / "hub.log"
    meridian = shutil.which("meridian", path=str(Path(sys.executable).parent)) or "meridian"
    command = [
        meridian, "--log-level", "debug", "serve", "--channels", str(channels),
        "--transforms", str(REPO / "transforms"), "--data", str(tmp_path / "var"),
        "--dicom-port", str(dicom_port), "--admin-port", str(admin_port),
    ]  # fmt: skip
    with hub_log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_for_port(mllp_port, proc=proc)
        wait_for_port(dicom_port, proc=proc)
        ack = send(mllp_port, orm(patient_id=PATIENT_ID, name=NAME, accession=ACCESSION).encode())
        assert msa(ack)[1] == "AA"
        _wait_for_worklist_item(dicom_port)
        ds = make_ct_instance(generate_uid(), generate_uid())
        ds.PatientName, ds.PatientID, ds.AccessionNumber = NAME, PATIENT_ID, ACCESSION
        path = write_dataset(ds, tmp_path / "ct.dcm")
        storescu = ["storescu", "-aet", "CT1", "-aec", "MERIDIAN", "127.0.0.1", str(dicom_port)]
        result = subprocess.run(
            [*storescu, str(path)], capture_output=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        _wait_for(hub_log, "C-STORE from CT1 to MERIDIAN: stored", proc, timeout=20)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log_text = hub_log.read_text(errors="replace")
    # The events are in the log, down to pynetdicom's DEBUG detail...
    assert "C-FIND from MODALITY1: 1 match(es)" in log_text
    assert (
        "Received Store Request" in log_text
        and "Message Type                  : C-STORE RQ" in log_text
    )
    # ...the patient is not.
    _no_phi(log_text)


def _wait_for_worklist_item(dicom_port: int, timeout: float = 20) -> None:
    """The ORM has been processed: its worklist item answers a C-FIND by patient ID."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(mwl_query(dicom_port, PatientID=PATIENT_ID)) == 1:
            return
        time.sleep(0.2)
    raise AssertionError("the order never reached the worklist")
