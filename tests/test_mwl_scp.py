"""The MWL SCP against real peers on localhost: pynetdicom's SCU and dcmtk's findscu/echoscu."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydicom import Dataset, dcmread
from pynetdicom import AE
from sqlalchemy import Engine, create_engine

from connectors.dicom_mwl import (
    MODALITY_WORKLIST_FIND,
    VERIFICATION,
    DicomListenerConfig,
    MWLServer,
)
from engine.worklist import WorklistStore, worklist_items
from engine.worklist_item import WorklistItem

pytestmark = pytest.mark.timeout(60)

ALLOWED = ["MODALITY1", "PYSCU"]
HOST = "127.0.0.1"


# -- fixtures -----------------------------------------------------------------


def _step(modality: str, station: str, date: str, time_: str) -> dict[str, str]:
    return {
        "Modality": modality,
        "ScheduledStationAETitle": station,
        "ScheduledProcedureStepStartDate": date,
        "ScheduledProcedureStepStartTime": time_,
        "ScheduledProcedureStepDescription": f"{modality} exam",
    }


ORDERS = [
    ("o1", "P1", "Doe^John", "ACC1", _step("CT", "CT1", "20240105", "083000")),
    ("o2", "P2", "Doe^Jane", "ACC2", _step("CT", "CT2", "20240105", "101500")),
    ("o3", "P3", "Müller^Jürgen", "ACC3", _step("MR", "MR1", "20240105", "090000")),
    ("o4", "P4", "Σωκράτης^Νίκος", "ACC4", _step("CT", "CT1", "20240106", "070000")),
    ("o5", "P5", "Roe^Richard", "ACC5", _step("US", "US1", "20240105", "110000")),
]


def _engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}")
    worklist_items.create(engine, checkfirst=True)
    return engine


def _populate(store: WorklistStore, engine: Engine, orders: list[Any]) -> None:
    with engine.begin() as conn:
        for key, patient_id, name, accession, step in orders:
            attributes = {
                "PatientID": patient_id,
                "PatientName": name,
                "AccessionNumber": accession,
                "ScheduledProcedureStepSequence": [step],
            }
            store.apply(conn, WorklistItem(action="create", key=key, attributes=attributes))


def _config(**overrides: Any) -> DicomListenerConfig:
    settings: dict[str, Any] = {"host": HOST, "port": 0, "allowed_calling_aets": ALLOWED}
    return DicomListenerConfig.model_validate(settings | overrides)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[WorklistStore]:
    engine = _engine(tmp_path / "mwl.db")
    store = WorklistStore(engine)
    _populate(store, engine, ORDERS)
    yield store
    engine.dispose()


def _serve(store: WorklistStore) -> Iterator[MWLServer]:
    server = MWLServer(_config(), store)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(store: WorklistStore) -> Iterator[MWLServer]:
    yield from _serve(store)


# -- clients ------------------------------------------------------------------


def _associate(port: int, calling: str = "PYSCU") -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    ae.add_requested_context(VERIFICATION)
    return ae.associate(HOST, port, ae_title="MERIDIAN")


def c_find(port: int, identifier: Dataset) -> list[tuple[int, Dataset | None]]:
    """One association, one C-FIND, as a modality does it: (status, identifier) pairs."""
    assoc = _associate(port)
    assert assoc.is_established
    try:
        return [
            (int(status.Status), found)
            for status, found in assoc.send_c_find(identifier, MODALITY_WORKLIST_FIND)
        ]
    finally:
        assoc.release()


def mwl_query(**step: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    item = Dataset()
    item.Modality = ""
    item.ScheduledStationAETitle = ""
    item.ScheduledProcedureStepStartDate = ""
    item.ScheduledProcedureStepStartTime = ""
    for keyword, value in step.items():
        setattr(item, keyword, value)
    ds.ScheduledProcedureStepSequence = [item]
    return ds


def findscu(port: int, out: Path, *keys: str, calling: str = "MODALITY1") -> list[Dataset]:
    """dcmtk's findscu -W with -k keys; returns the responses it extracted (-X)."""
    out.mkdir(exist_ok=True)
    command = ["findscu", "-W", "-aet", calling, "-aec", "MERIDIAN", HOST, str(port)]
    for key in keys:
        command += ["-k", key]
    command += ["-X", "-od", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=30)
    return [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


needs_dcmtk = pytest.mark.skipif(shutil.which("findscu") is None, reason="dcmtk not installed")


# -- pynetdicom SCU -----------------------------------------------------------


def test_modality_and_date_query(server: MWLServer) -> None:
    results = c_find(
        server.bound_port, mwl_query(Modality="CT", ScheduledProcedureStepStartDate="20240105")
    )
    statuses = [status for status, _ in results]
    assert statuses == [0xFF00, 0xFF00, 0x0000]
    found = [ds for _, ds in results if ds is not None]
    assert [str(ds.PatientID) for ds in found] == ["P1", "P2"]  # schedule order
    step = found[0].ScheduledProcedureStepSequence[0]
    assert (step.Modality, step.ScheduledStationAETitle) == ("CT", "CT1")
    assert step.ScheduledProcedureStepStartTime == "083000"
    assert "ScheduledProcedureStepDescription" not in step  # not asked for


def test_c_echo(server: MWLServer) -> None:
    assoc = _associate(server.bound_port)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_disallowed_calling_ae_is_rejected(server: MWLServer) -> None:
    assoc = _associate(server.bound_port, calling="INTRUDER")
    assert assoc.is_rejected
    # ...and the server keeps serving allowed peers.
    assert c_find(server.bound_port, mwl_query(Modality="US"))[-1][0] == 0x0000


class SlowStore(WorklistStore):
    """A real store whose matches trickle out, so a C-CANCEL lands mid-stream."""

    def find(self, identifier: Dataset, *, limit: int | None = None) -> Iterator[Dataset]:
        for found in super().find(identifier, limit=limit):
            time.sleep(0.02)
            yield found


def test_c_cancel_stops_the_stream(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "slow.db")
    store = SlowStore(engine)
    many = [
        (f"o{n}", f"P{n:03}", "Doe^John", f"A{n}", _step("CT", "CT1", "20240105", "080000"))
        for n in range(60)
    ]
    _populate(store, engine, many)
    for server in _serve(store):
        assoc = _associate(server.bound_port)
        assert assoc.is_established
        statuses: list[int] = []
        try:
            for status, _ in assoc.send_c_find(mwl_query(), MODALITY_WORKLIST_FIND, msg_id=7):
                statuses.append(int(status.Status))
                if len(statuses) == 1:
                    assoc.send_c_cancel(7, query_model=MODALITY_WORKLIST_FIND)
        finally:
            assoc.release()
        assert statuses[-1] == 0xFE00
        assert 1 <= statuses.count(0xFF00) < 60
        # The server is fine afterwards.
        assert c_find(server.bound_port, mwl_query(Modality="MR"))[-1][0] == 0x0000
    engine.dispose()


def test_malformed_identifier_gets_failure_status(server: MWLServer) -> None:
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):
        query = mwl_query(ScheduledProcedureStepStartDate="2024-01-05")
    [(status, found)] = c_find(server.bound_port, query)
    assert (status, found) == (0xA900, None)


def test_store_failure_gives_failure_status_and_server_stays_up(tmp_path: Path) -> None:
    # A real database failure: the table does not exist yet.
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    store = WorklistStore(engine)
    for server in _serve(store):
        assoc = _associate(server.bound_port)
        assert assoc.is_established
        try:
            responses = list(assoc.send_c_find(mwl_query(), MODALITY_WORKLIST_FIND))
        finally:
            assoc.release()
        [(status, found)] = responses
        assert (status.Status, found) == (0xA700, None)
        assert status.ErrorComment == "worklist store unavailable"
        # The next association is answered once the store is back.
        worklist_items.create(engine)
        _populate(store, engine, ORDERS[:1])
        assert [s for s, _ in c_find(server.bound_port, mwl_query())] == [0xFF00, 0x0000]
    engine.dispose()


# -- dcmtk findscu ------------------------------------------------------------


@needs_dcmtk
def test_findscu_modality_and_date(server: MWLServer, tmp_path: Path) -> None:
    responses = findscu(
        server.bound_port,
        tmp_path / "out",
        "ScheduledProcedureStepSequence[0].Modality=CT",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20240105",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
        "PatientName",
        "PatientID",
        "AccessionNumber",
    )
    assert [str(ds.AccessionNumber) for ds in responses] == ["ACC1", "ACC2"]
    stations = [
        str(ds.ScheduledProcedureStepSequence[0].ScheduledStationAETitle) for ds in responses
    ]
    assert stations == ["CT1", "CT2"]


@needs_dcmtk
def test_findscu_patient_name_wildcard(server: MWLServer, tmp_path: Path) -> None:
    responses = findscu(server.bound_port, tmp_path / "out", "PatientName=doe*", "PatientID")
    assert sorted(str(ds.PatientID) for ds in responses) == ["P1", "P2"]
    assert {str(ds.PatientName) for ds in responses} == {"Doe^John", "Doe^Jane"}


@needs_dcmtk
@pytest.mark.parametrize(
    ("patient_id", "name", "charset"),
    [("P3", "Müller^Jürgen", "ISO_IR 100"), ("P4", "Σωκράτης^Νίκος", "ISO_IR 192")],
)
def test_findscu_non_ascii_name_has_character_set(
    server: MWLServer, tmp_path: Path, patient_id: str, name: str, charset: str
) -> None:
    [response] = findscu(
        server.bound_port, tmp_path / "out", f"PatientID={patient_id}", "PatientName"
    )
    assert response.SpecificCharacterSet == charset
    assert str(response.PatientName) == name


@needs_dcmtk
def test_echoscu(server: MWLServer) -> None:
    command = ["echoscu", "-aet", "MODALITY1", "-aec", "MERIDIAN", HOST, str(server.bound_port)]
    assert subprocess.run(command, check=False, capture_output=True, timeout=30).returncode == 0


@needs_dcmtk
def test_findscu_from_disallowed_ae_fails(server: MWLServer, tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        findscu(server.bound_port, tmp_path / "out", "PatientID", calling="INTRUDER")


def test_stop_releases_the_port(store: WorklistStore) -> None:
    server = MWLServer(_config(), store)
    server.start()
    port = server.bound_port
    server.stop()
    restarted = MWLServer(_config(port=port), store)
    restarted.start()
    try:
        assert c_find(port, mwl_query(Modality="US"))[-1][0] == 0x0000
    finally:
        restarted.stop()


@pytest.mark.parametrize(
    "settings",
    [
        {"ae_title": "A" * 17},
        {"ae_title": "   "},
        {"ae_title": "BAD\\AE"},
        {"allowed_calling_aets": []},
        {"port": 70000},
        {"unknown": 1},
    ],
)
def test_listener_config_refuses_invalid_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DicomListenerConfig.model_validate(settings)
