"""MPPS: the step store on SQLite and PostgreSQL, the SCP against pynetdicom's SCU, the template.

dcmtk has no MPPS SCU, so the modality here is pynetdicom. The SCP tests run the
hub's real pieces: a DicomListener on a free port with the MWL and MPPS services,
the group committer, and an ``mpps`` source whose handler runs on an asyncio
loop in its own thread, as in the hub.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hl7
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.events import Event, EventHandlerType
from sqlalchemy import Engine, func, select

import engine.mpps  # noqa: F401 - registers the MPPS tables before open_engine creates them
from connectors.base import Origin
from connectors.dicom_mpps import (
    MAY_NO_LONGER_BE_UPDATED,
    MODALITY_PERFORMED_PROCEDURE_STEP,
    MPPSService,
    MPPSSource,
    MPPSSourceConfig,
)
from connectors.dicom_mwl import (
    MODALITY_WORKLIST_FIND,
    DicomListener,
    DicomListenerConfig,
    MWLService,
)
from engine.mpps import MPPSStore, mpps_steps
from engine.mpps_step import (
    DuplicateStepError,
    FinalStepError,
    InvalidStepError,
    ProcedureStepEvent,
    UnknownStepError,
    step_json,
)
from engine.store.db import open_engine
from engine.store.group_commit import GroupCommitter
from engine.templating import TemplateEnvironment
from engine.transform import TransformConfig, Transformer
from engine.worklist import WorklistStore
from engine.worklist_item import WorklistItem
from tests.support.databases import store_url
from tests.support.modality import mwl_query

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


# -- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Order:
    """One ordered exam: its worklist key and the values a modality echoes back."""

    key: str
    accession: str
    study_uid: str
    placer: str

    @classmethod
    def new(cls) -> Order:
        tag = uuid.uuid4().hex[:10].upper()
        return cls(f"EHR|{tag}", f"A{tag}", str(generate_uid()), f"P{tag}")

    def item(self) -> WorklistItem:
        return WorklistItem(
            action="create",
            key=self.key,
            attributes={
                "PatientID": "PID1",
                "PatientName": "Doe^John",
                "AccessionNumber": self.accession,
                "StudyInstanceUID": self.study_uid,
                "PlacerOrderNumberImagingServiceRequest": self.placer,
                "FillerOrderNumberImagingServiceRequest": f"F{self.placer}",
                "RequestedProcedureID": "RP1",
                "RequestedProcedureCodeSequence": [
                    {"CodeValue": "CTHEAD", "CodingSchemeDesignator": "L", "CodeMeaning": "CT head"}
                ],
                "ScheduledProcedureStepSequence": [
                    {
                        "Modality": "CT",
                        "ScheduledStationAETitle": "CT1",
                        "ScheduledProcedureStepStartDate": "20240105",
                        "ScheduledProcedureStepStartTime": "080000",
                        "ScheduledProcedureStepID": "SPS1",
                    }
                ],
            },
        )


def in_progress(order: Order | None, **changes: Any) -> Dataset:
    """An N-CREATE attribute list as a modality sends it (Type 2 attributes empty)."""
    ds = Dataset()
    ds.PatientName = "Doe^John"
    ds.PatientID = "PID1"
    ref = Dataset()
    ref.StudyInstanceUID = order.study_uid if order else generate_uid()
    ref.AccessionNumber = order.accession if order else ""
    ref.ScheduledProcedureStepID = "SPS1" if order else ""
    ref.RequestedProcedureID = "RP1" if order else ""
    ref.ReferencedStudySequence = []
    ds.ScheduledStepAttributesSequence = [ref]
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT1"
    ds.PerformedProcedureStepStartDate = "20240105"
    ds.PerformedProcedureStepStartTime = "083000"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def ended(status: str, **changes: Any) -> Dataset:
    """An N-SET ending the step, with the final state's Type 1 attributes."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20240105"
    ds.PerformedProcedureStepEndTime = "084500"
    series = Dataset()
    series.SeriesInstanceUID = generate_uid()
    series.ReferencedImageSequence = []
    ds.PerformedSeriesSequence = [series]
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


# -- the store, on both backends ----------------------------------------------------------------


@dataclass
class Stores:
    engine: Engine
    worklist: WorklistStore
    mpps: MPPSStore

    def add(self, order: Order) -> None:
        with self.engine.begin() as conn:
            self.worklist.apply(conn, order.item())

    def create(self, uid: str, ds: Dataset) -> list[ProcedureStepEvent]:
        with self.engine.begin() as conn:
            return self.mpps.create(conn, uid, step_json(ds), calling="MOD", called="MERIDIAN")

    def update(self, uid: str, ds: Dataset) -> list[ProcedureStepEvent]:
        with self.engine.begin() as conn:
            return self.mpps.update(conn, uid, step_json(ds), calling="MOD", called="MERIDIAN")

    def status(self, order: Order) -> tuple[str, bool]:
        row = self.worklist.get(order.key)
        assert row is not None
        return row["status"], row["active"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stores(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stores]:
    urls = store_url(request.param, tmp_path_factory.mktemp("mpps"))
    engine = open_engine(next(urls))
    worklist = WorklistStore(engine)
    yield Stores(engine, worklist, MPPSStore(engine, worklist))
    engine.dispose()
    next(urls, None)  # drops the PostgreSQL database


def test_step_moves_its_order_through_the_worklist(stores: Stores) -> None:
    order, uid = Order.new(), str(generate_uid())
    stores.add(order)
    (started,) = stores.create(uid, in_progress(order))
    assert stores.status(order) == ("STARTED", True)  # still on the worklist
    assert (started.status, started.worklist_key) == ("IN PROGRESS", order.key)
    assert (started.placer_order_number, started.filler_order_number) == (
        order.placer,
        "F" + order.placer,
    )
    assert (started.procedure_code, started.procedure_description) == ("CTHEAD", "CT head")
    assert (started.modality, started.station_ae_title, started.patient_id) == ("CT", "CT1", "PID1")
    assert stores.update(uid, Dataset()) == []  # no status change: nothing to tell
    (done,) = stores.update(uid, ended("COMPLETED"))
    assert (done.status, done.performed_end_time) == ("COMPLETED", "084500")
    assert stores.status(order) == ("COMPLETED", False)
    assert [
        e.accession_number
        for e in map(_event, stores.mpps.undelivered("MERIDIAN", sop_instance_uid=uid))
    ] == [order.accession] * 2
    step = stores.mpps.get(uid)
    assert step is not None and step["status"] == "COMPLETED"


def _event(pending: Any) -> ProcedureStepEvent:
    return ProcedureStepEvent.model_validate_json(pending.payload)


def test_discontinued_step_takes_order_off_the_worklist(stores: Stores) -> None:
    order, uid = Order.new(), str(generate_uid())
    stores.add(order)
    stores.create(uid, in_progress(order))
    reason = Dataset()
    reason.CodeMeaning = "Patient refused"
    changes = ended("DISCONTINUED", PerformedSeriesSequence=None)
    changes.PerformedProcedureStepDiscontinuationReasonCodeSequence = [reason]
    (event,) = stores.update(uid, changes)
    assert (event.status, event.discontinuation_reason) == ("DISCONTINUED", "Patient refused")
    assert stores.status(order) == ("DISCONTINUED", False)


def test_step_refusals(stores: Stores) -> None:
    order, uid = Order.new(), str(generate_uid())
    stores.add(order)
    stores.create(uid, in_progress(order))
    with pytest.raises(DuplicateStepError):
        stores.create(uid, in_progress(order))
    with pytest.raises(UnknownStepError):
        stores.update(str(generate_uid()), ended("COMPLETED"))
    with pytest.raises(InvalidStepError) as missing:
        stores.update(uid, ended("COMPLETED", PerformedSeriesSequence=None))
    # Created empty (Type 2), it must have a series by the end (Type 1 in the final state).
    assert (missing.value.keyword, missing.value.problem) == ("PerformedSeriesSequence", "empty")
    with pytest.raises(InvalidStepError) as bad:
        stores.update(uid, ended("DONE"))
    assert bad.value.keyword == "PerformedProcedureStepStatus"
    stores.update(uid, ended("COMPLETED"))
    with pytest.raises(FinalStepError):
        stores.update(uid, ended("DISCONTINUED"))
    step = stores.mpps.get(uid)
    assert step is not None and step["status"] == "COMPLETED"


def test_step_never_revives_a_canceled_order(stores: Stores) -> None:
    order, uid = Order.new(), str(generate_uid())
    stores.add(order)
    with stores.engine.begin() as conn:
        stores.worklist.apply(conn, WorklistItem(action="cancel", key=order.key))
    (event,) = stores.create(uid, in_progress(order))
    assert event.placer_order_number == order.placer  # the EHR still hears of it
    assert stores.status(order) == ("CANCELED", False)


def test_accession_finds_order_when_modality_made_up_its_study_uid(stores: Stores) -> None:
    order, uid = Order.new(), str(generate_uid())
    stores.add(order)
    ds = in_progress(order)
    ds.ScheduledStepAttributesSequence[0].StudyInstanceUID = generate_uid()
    (event,) = stores.create(uid, ds)
    assert event.worklist_key == order.key
    assert stores.status(order) == ("STARTED", True)


def test_unscheduled_step_is_an_event_without_order(stores: Stores) -> None:
    uid = str(generate_uid())
    (event,) = stores.create(uid, in_progress(None))
    assert (event.worklist_key, event.placer_order_number, event.accession_number) == (None, "", "")


def test_n_set_cannot_change_who_or_what(stores: Stores) -> None:
    order, uid = Order.new(), str(generate_uid())
    stores.add(order)
    stores.create(uid, in_progress(order))
    (event,) = stores.update(uid, ended("COMPLETED", PatientID="OTHER", Modality="MR"))
    assert (event.patient_id, event.modality) == ("PID1", "CT")


@pytest.mark.parametrize(
    ("changes", "keyword", "problem"),
    [
        ({"PerformedStationAETitle": None}, "PerformedStationAETitle", "missing"),
        ({"PerformedProcedureStepID": ""}, "PerformedProcedureStepID", "empty"),
        ({"ScheduledStepAttributesSequence": []}, "ScheduledStepAttributesSequence", "empty"),
        ({"PerformedProcedureStepStatus": "COMPLETED"}, "PerformedProcedureStepStatus", "invalid"),
        (
            {"PerformedProcedureStepStartDate": "2024-01-05"},
            "PerformedProcedureStepStartDate",
            "invalid",
        ),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")  # pydicom warns as the test sets it
def test_n_create_attribute_rules(
    stores: Stores, changes: dict[str, Any], keyword: str, problem: str
) -> None:
    with pytest.raises(InvalidStepError) as refused:
        stores.create(str(generate_uid()), in_progress(Order.new(), **changes))
    assert (refused.value.keyword, refused.value.problem) == (keyword, problem)


# -- the SCP and the source ----------------------------------------------------------------------


@dataclass
class Collector:
    """The channel's handler: fails its first ``failures`` calls, then keeps each event."""

    failures: int = 0
    events: list[ProcedureStepEvent] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)
    calls: int = 0

    async def __call__(self, raw: bytes, origin: Origin) -> bytes | None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("channel unavailable")
        self.events.append(ProcedureStepEvent.model_validate_json(raw))
        self.origins.append(origin)
        return None

    def statuses(self) -> list[str]:
        return [e.status for e in self.events]


@dataclass
class Hub:
    """The hub's DICOM side without a pipeline: listener, stores, writer, loop thread."""

    listener: DicomListener
    stores: Stores
    service: MPPSService
    loop: asyncio.AbstractEventLoop
    sources: list[MPPSSource] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.listener.bound_port

    def on_loop(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def source(self, handler: Collector, **config: Any) -> MPPSSource:
        settings = {"type": "mpps", "retry_seconds": 0.1} | config
        source = MPPSSource(MPPSSourceConfig.model_validate(settings), service=self.service)
        self.on_loop(source.start(handler))
        self.sources.append(source)
        return source

    def stop(self, source: MPPSSource) -> None:
        self.on_loop(source.stop())
        self.sources.remove(source)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    engine = open_engine(f"sqlite:///{tmp_path / 'var' / 'meridian.db'}")
    committer = GroupCommitter(engine)
    committer.start()
    worklist = WorklistStore(engine)
    stores = Stores(engine, worklist, MPPSStore(engine, worklist))
    service = MPPSService(stores.mpps, committer, uid_root="1.2.826.0.1.3680043.8.498.")
    listener = DicomListener(DicomListenerConfig(host=HOST, port=0))
    listener.add_service(MWLService(worklist))
    listener.add_service(service)
    listener.start()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="hub-loop", daemon=True)
    thread.start()
    running = Hub(listener, stores, service, loop)
    yield running
    for source in list(running.sources):
        running.stop(source)
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
    listener.stop()
    committer.stop()
    engine.dispose()


def _associate(port: int, called: str, received: list[Dataset] | None = None) -> Any:
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(MODALITY_PERFORMED_PROCEDURE_STEP)
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    handlers: list[EventHandlerType] = []
    if received is not None:

        def keep(event: Event) -> None:
            received.append(event.message.command_set)

        handlers.append((evt.EVT_DIMSE_RECV, keep))
    assoc = ae.associate(HOST, port, ae_title=called, evt_handlers=handlers)
    assert assoc.is_established
    return assoc


def n_create(
    port: int, ds: Dataset, uid: str | None, *, called: str = "MERIDIAN",
    received: list[Dataset] | None = None,
) -> Dataset:  # fmt: skip
    """One association, one N-CREATE, as a modality starting an exam: the status."""
    assoc = _associate(port, called, received)
    try:
        status, _ = assoc.send_n_create(ds, MODALITY_PERFORMED_PROCEDURE_STEP, uid)
        return status  # type: ignore[no-any-return]
    finally:
        assoc.release()


def n_set(port: int, uid: str, ds: Dataset) -> Dataset:
    """One association, one N-SET: the status."""
    assoc = _associate(port, "MERIDIAN")
    try:
        status, _ = assoc.send_n_set(ds, MODALITY_PERFORMED_PROCEDURE_STEP, uid)
        return status  # type: ignore[no-any-return]
    finally:
        assoc.release()


def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def sps_status(port: int, order: Order) -> list[str]:
    found = mwl_query(port, AccessionNumber=order.accession)
    return [
        str(item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus) for item in found
    ]


@pytest.mark.parametrize("final", ["COMPLETED", "DISCONTINUED"])
def test_modality_reports_exam_to_worklist_and_channel(hub: Hub, final: str) -> None:
    collector = Collector()
    hub.source(collector)
    order, uid = Order.new(), str(generate_uid())
    hub.stores.add(order)
    assert sps_status(hub.port, order) == ["SCHEDULED"]

    assert n_create(hub.port, in_progress(order), uid).Status == 0x0000
    # Delivered before the response: the association waited for the channel.
    assert collector.statuses() == ["IN PROGRESS"]
    assert sps_status(hub.port, order) == ["STARTED"]

    assert n_set(hub.port, uid, ended(final)).Status == 0x0000
    assert collector.statuses() == ["IN PROGRESS", final]
    assert sps_status(hub.port, order) == []
    assert collector.origins[-1] == Origin("dicom", "MODALITY1", "MERIDIAN")
    assert {e.placer_order_number for e in collector.events} == {order.placer}

    refused = n_set(hub.port, uid, ended("COMPLETED"))
    assert (refused.Status, refused.ErrorID) == (0x0110, MAY_NO_LONGER_BE_UPDATED)
    assert all(e["delivered"] for e in hub.stores.mpps.events(uid))


def test_duplicate_unknown_and_invalid_requests_are_refused(hub: Hub) -> None:
    hub.source(Collector())
    order, uid = Order.new(), str(generate_uid())
    hub.stores.add(order)
    assert n_create(hub.port, in_progress(order), uid).Status == 0x0000
    assert n_create(hub.port, in_progress(order), uid).Status == 0x0111
    assert n_set(hub.port, str(generate_uid()), ended("COMPLETED")).Status == 0x0112
    missing = n_create(hub.port, in_progress(order, Modality=None), str(generate_uid()))
    assert (missing.Status, missing.ErrorComment) == (0x0120, "Modality: missing")
    not_started = in_progress(order, PerformedProcedureStepStatus="COMPLETED")
    assert n_create(hub.port, not_started, str(generate_uid())).Status == 0x0106
    no_series = ended("COMPLETED", PerformedSeriesSequence=None)
    assert n_set(hub.port, uid, no_series).Status == 0x0121  # created empty, still empty
    assert (
        n_create(hub.port, in_progress(order), str(generate_uid()), called="NOBODY").Status
        == 0x0124
    )
    assert sps_status(hub.port, order) == ["STARTED"]  # the refusals changed nothing


def test_scp_names_the_instance_when_the_modality_does_not(hub: Hub) -> None:
    collector = Collector()
    hub.source(collector)
    received: list[Dataset] = []
    assert n_create(hub.port, in_progress(Order.new()), None, received=received).Status == 0
    uid = str(received[-1].AffectedSOPInstanceUID)
    assert uid.startswith("1.2.826.0.1.3680043.8.498.")
    assert collector.events[0].sop_instance_uid == uid
    assert n_set(hub.port, uid, ended("COMPLETED")).Status == 0x0000


def test_failed_delivery_is_retried_in_order(hub: Hub) -> None:
    collector = Collector(failures=1)
    hub.source(collector)
    order, uid = Order.new(), str(generate_uid())
    hub.stores.add(order)
    # The modality's status does not depend on the channel: the step is stored.
    assert n_create(hub.port, in_progress(order), uid).Status == 0x0000
    assert n_set(hub.port, uid, ended("COMPLETED")).Status == 0x0000
    until(lambda: len(collector.events) == 2)
    assert collector.statuses() == ["IN PROGRESS", "COMPLETED"]  # never CM before IP
    events = hub.stores.mpps.events(uid)
    assert [(e["delivered"], e["attempts"]) for e in events] == [(True, 1), (True, 0)]


def test_events_left_undelivered_go_at_next_start(hub: Hub) -> None:
    down = Collector(failures=1_000)
    source = hub.source(down, retry_seconds=60)
    order, uid = Order.new(), str(generate_uid())
    hub.stores.add(order)
    assert n_create(hub.port, in_progress(order), uid).Status == 0x0000
    hub.stop(source)
    assert n_set(hub.port, uid, ended("COMPLETED")).Status == 0x0124  # nobody serves the AE now
    collector = Collector()
    hub.source(collector, retry_seconds=60)
    until(lambda: collector.statuses() == ["IN PROGRESS"])
    with hub.stores.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(mpps_steps)).scalar_one() == 1


# -- the template --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orm_sc() -> Transformer:
    env = TemplateEnvironment(ROOT / "transforms")
    transformer = Transformer(TransformConfig(template="mpps_to_orm_sc.j2", output="hl7"), env)
    transformer.check()
    return transformer


def _step_event(status: str, **values: str) -> ProcedureStepEvent:
    fields: dict[str, Any] = {
        "event_id": f"1.2.3|{status}|0",
        "control_id": "MPPS0123456789ABCDEF",
        "sop_instance_uid": "1.2.3",
        "status": status,
        "accession_number": "ACC1",
        "requested_procedure_id": "RP1",
        "scheduled_procedure_step_id": "SPS1",
        "placer_order_number": "ORD1",
        "filler_order_number": "FIL1",
        "procedure_code": "CTHEAD",
        "procedure_coding_scheme": "L",
        "procedure_description": "CT head",
        "modality": "CT",
        "performed_start_date": "20240105",
        "performed_start_time": "083000.123456",
        "performed_end_date": "20240105" if status != "IN PROGRESS" else "",
        "performed_end_time": "08:45:00" if status != "IN PROGRESS" else "",
        "patient_id": "PID1",
        "issuer_of_patient_id": "HOSP",
        "patient_name": "Doe^John^A^Dr^Jr",
    }
    return ProcedureStepEvent.model_validate(fields | values)


@pytest.mark.parametrize(
    ("status", "orc5", "when"),
    [
        ("IN PROGRESS", "IP", "20240105083000"),
        ("COMPLETED", "CM", "20240105084500"),
        ("DISCONTINUED", "DC", "20240105084500"),
    ],
)
def test_template_renders_orm_status_change(
    orm_sc: Transformer, status: str, orc5: str, when: str
) -> None:
    (text,) = orm_sc.run({"event": _step_event(status).model_dump()})
    message = hl7.parse(text)
    msh, pid, orc, obr = (message.segment(s) for s in ("MSH", "PID", "ORC", "OBR"))
    assert (str(msh[9]), str(msh[10]), str(msh[12])) == (
        "ORM^O01^ORM_O01",
        "MPPS0123456789ABCDEF",
        "2.5.1",
    )
    assert (str(pid[3]), str(pid[5])) == ("PID1^^^HOSP", "Doe^John^A^Jr^Dr")
    assert (str(orc[1]), str(orc[2]), str(orc[3]), str(orc[5]), str(orc[9])) == (
        "SC",
        "ORD1",
        "FIL1",
        orc5,
        when,
    )
    assert (str(obr[4]), str(obr[7])) == ("CTHEAD^CT head^L", "20240105083000")
    assert (str(obr[18]), str(obr[19]), str(obr[20]), str(obr[24])) == ("ACC1", "RP1", "SPS1", "CT")


def test_template_escapes_values_and_skips_unscheduled_steps(orm_sc: Transformer) -> None:
    event = _step_event(
        "DISCONTINUED", accession_number="A|1^2", discontinuation_reason="Patient refused"
    )
    (text,) = orm_sc.run({"event": event.model_dump()})
    message = hl7.parse(text)
    assert str(message.segment("OBR")[18]) == r"A\F\1\S\2"  # still one field
    assert str(message.segment("NTE")[3]) == "Patient refused"
    unscheduled = _step_event("COMPLETED", placer_order_number="", filler_order_number="")
    assert orm_sc.run({"event": unscheduled.model_dump()}) == []
