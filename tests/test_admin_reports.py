"""Submitting a report through the admin API, end to end in an in-process hub.

The hub runs the shipped orders-to-worklist and results-to-ehr channels; the EHR is a
real MLLP receiver that ACKs and a FHIR server. A report posted to /api/reports must
arrive at the EHR as an ORU^R01 like one forwarded from the reporting system.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from admin.api import create_app
from admin.security import CSRF_HEADER
from admin.settings import AdminSettings
from admin.tables import admin_access_log
from admin.users import add_user
from engine.config import HubSettings
from engine.hub import Hub
from engine.loader import load_channels
from engine.services import Services
from engine.store.tables import messages
from tests.support import mllp_client
from tests.support.ehr import EHR
from tests.support.hub_process import free_port, prepare_channels
from tests.support.orders import orm

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"
CHANNELS = ("orders-to-worklist", "results-to-ehr")
FAST = {"initial_backoff_seconds": 0.2, "max_backoff_seconds": 1}


@dataclass
class Site:
    """A running hub (on its own loop thread), its EHR and a logged-in API client."""

    hub: Hub
    loop: asyncio.AbstractEventLoop
    ehr: EHR
    mllp_port: int
    api: httpx.Client
    csrf: dict[str, str]

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.api.post(path, json=body, headers=self.csrf)

    def services(self) -> Services:
        assert self.hub.services is not None
        return self.hub.services


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("reports")
    ehr = EHR()
    mllp_port = free_port()
    channels = prepare_channels(
        workdir / "channels",
        mllp_port,
        {
            "results-to-ehr": {
                "destinations": {
                    "ehr-oru": {"port": ehr.oru.port, "retry": FAST},
                    "ehr-fhir": {"base_url": ehr.fhir.url, "retry": FAST},
                }
            }
        },
    )
    for path in channels.glob("*.yaml"):
        if path.stem not in CHANNELS:
            path.unlink()
    settings = HubSettings.model_validate(
        {
            "channels_dir": channels,
            "transforms_dir": REPO / "transforms",
            "data_dir": workdir / "var",
            "dicom": {"port": 0},
            "admin": {"port": 0},
        }
    )
    hub = Hub(settings, load_channels(channels))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(hub.start(), loop).result(30)
    assert hub.services is not None and hub.admin is not None
    add_user(hub.services.engine, "rad", PASSWORD, "analyst")
    add_user(hub.services.engine, "vic", PASSWORD, "viewer")
    api = httpx.Client(base_url=f"http://127.0.0.1:{hub.admin.bound_port}", timeout=30)
    login = api.post("/api/login", json={"username": "rad", "password": PASSWORD})
    assert login.status_code == 200, login.text
    try:
        yield Site(hub, loop, ehr, mllp_port, api, {CSRF_HEADER: login.json()["csrf_token"]})
    finally:
        api.close()
        asyncio.run_coroutine_threadsafe(hub.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        ehr.stop()


def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
    return found


def order(site: Site, accession: str, patient_id: str) -> str:
    """Place an order over MLLP; returns the Study Instance UID the worklist gave it."""
    ack = mllp_client.send(
        site.mllp_port,
        orm(placer=f"PL-{accession}", accession=accession, patient_id=patient_id).encode(),
    )
    assert mllp_client.msa(ack)[1] == "AA", ack
    item = wait_for(lambda: site.services().worklist.find_item(accession_number=accession))
    return str(item.StudyInstanceUID)


def oru_for(site: Site, accession: str) -> list[list[str]]:
    """The segments (split in fields) of the ORU the EHR received for ``accession``."""

    def find() -> list[list[str]] | None:
        for text in site.ehr.orus():
            segments = [s.split("|") for s in text.strip("\r\n").split("\r")]
            obr = next(s for s in segments if s[0] == "OBR")
            if obr[18] == accession:
                return segments
        return None

    found: list[list[str]] = wait_for(find)
    return found


def segment(segments: list[list[str]], name: str) -> list[str]:
    return next(s for s in segments if s[0] == name)


def test_a_final_report_for_an_ordered_study_reaches_the_ehr_as_an_oru(site: Site) -> None:
    study_uid = order(site, "ACCREP1", "PATREP1")
    response = site.post(
        "/api/reports",
        {
            "accession_number": "ACCREP1",
            "status": "F",
            "findings": "No acute intracranial abnormality.",
            "impression": "Normal CT head.",
            "author": "HOUSE^GREGORY",
            "reported_at": "2026-11-23T10:15:00+01:00",
        },
    )
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["status"] == "QUEUED" and answer["duplicate"] is False
    message_id = answer["message_id"]

    segments = oru_for(site, "ACCREP1")
    obr = segment(segments, "OBR")
    assert obr[25] == "F", "OBR-25: final"
    assert obr[32] == "&HOUSE&GREGORY", "OBR-32: the signing radiologist"
    assert obr[4].startswith("CTHEAD^"), "the procedure comes from the order"
    assert segment(segments, "PID")[3].startswith("PATREP1^"), "the patient comes from the order"
    texts = [s[5] for s in segments if s[0] == "OBX" and s[2] == "TX"]
    assert texts == [
        "FINDINGS: No acute intracranial abnormality.",
        "",
        "IMPRESSION: Normal CT head.",
    ]
    study = [s for s in segments if s[0] == "OBX" and s[3].startswith("113014^")]
    assert study[0][5] == study_uid, "the report is linked to the ordered study's images"
    assert all(s[11] == "F" for s in segments if s[0] == "OBX")

    services = site.services()
    with services.engine.connect() as conn:
        row = conn.execute(
            select(messages.c.channel, messages.c.message_type, messages.c.accession).where(
                messages.c.id == message_id
            )
        ).one()
        logged = conn.execute(
            select(admin_access_log.c.username, admin_access_log.c.action).where(
                admin_access_log.c.message_id == message_id
            )
        ).all()
    assert tuple(row) == ("results-to-ehr", "REPORT^F", "ACCREP1")
    assert [tuple(r) for r in logged] == [("rad", "report")]


def test_the_same_report_sent_twice_is_one_message(site: Site) -> None:
    order(site, "ACCREP2", "PATREP2")
    body = {
        "accession_number": "ACCREP2",
        "status": "P",
        "text": "Preliminary: no bleed.",
        "reported_at": "2026-11-23T11:00:00+01:00",
    }
    first = site.post("/api/reports", body)
    again = site.post("/api/reports", body)
    assert first.status_code == 201, first.text
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True
    assert again.json()["message_id"] == first.json()["message_id"]
    assert segment(oru_for(site, "ACCREP2"), "OBR")[25] == "P"


def test_a_report_without_an_order_needs_the_patient_and_the_study(site: Site) -> None:
    body: dict[str, Any] = {
        "accession_number": "ACC-NO-ORDER",
        "status": "F",
        "text": "IMPRESSION: normal.",
        "author": "HOUSE^GREGORY",
    }
    response = site.post("/api/reports", body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "study_instance_uid" in detail and "patient.id" in detail and "procedure" in detail

    complete = {
        **body,
        "study_instance_uid": "1.2.826.0.1.3680043.8.498.777",
        "patient": {"id": "PATX", "name": "ROE^RICHARD"},
        "procedure": {"code": "XRCHEST", "description": "Chest X-ray", "modality": "DX"},
    }
    assert site.post("/api/reports", complete).status_code == 201
    segments = oru_for(site, "ACC-NO-ORDER")
    assert segment(segments, "OBR")[25] == "F"
    assert segment(segments, "PID")[3].startswith("PATX^")


def test_a_report_contradicting_the_order_is_refused(site: Site) -> None:
    order(site, "ACCREP3", "PATREP3")
    response = site.post(
        "/api/reports",
        {
            "accession_number": "ACCREP3",
            "patient": {"id": "SOMEONE-ELSE"},
            "text": "x",
            "author": "HOUSE^GREGORY",
        },
    )
    assert response.status_code == 422
    assert (
        response.json()["detail"] == "patient.id does not match the study's order in the worklist"
    )


def test_invalid_bodies_and_roles_are_refused(site: Site) -> None:
    unsigned = {"accession_number": "ACCREP1", "status": "F", "text": "x"}
    response = site.post("/api/reports", unsigned)
    assert response.status_code == 422
    assert "author" in response.text
    no_text = {"accession_number": "ACCREP1", "status": "P"}
    assert site.post("/api/reports", no_text).status_code == 422
    bad_status = {"accession_number": "ACCREP1", "status": "X", "text": "x"}
    assert site.post("/api/reports", bad_status).status_code == 422
    # A viewer may not submit reports.
    viewer = httpx.Client(base_url=str(site.api.base_url), timeout=30)
    with viewer:
        info = viewer.post("/api/login", json={"username": "vic", "password": PASSWORD}).json()
        headers = {CSRF_HEADER: info["csrf_token"]}
        body = {"accession_number": "ACCREP1", "status": "P", "text": "x"}
        assert viewer.post("/api/reports", json=body, headers=headers).status_code == 403


def test_no_report_channel_running_is_503(site: Site) -> None:
    services = site.services()
    body = {"accession_number": "ACCREP1", "status": "P", "text": "x"}
    for hub, settings in (
        (None, AdminSettings()),
        (site.hub, AdminSettings(report_channel="not-deployed")),
        (site.hub, AdminSettings(report_channel="orders-to-worklist")),  # not a report channel
    ):
        client = TestClient(create_app(services, cast(Any, hub), settings))
        info = client.post("/api/login", json={"username": "rad", "password": PASSWORD}).json()
        response = client.post("/api/reports", json=body, headers={CSRF_HEADER: info["csrf_token"]})
        assert response.status_code == 503, response.text
