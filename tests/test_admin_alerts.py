"""Alerts, the dashboard and /metrics over a real store, with real MLLP and DICOM listeners."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pynetdicom import AE

from admin.security import CSRF_HEADER
from connectors.base import Origin
from connectors.dicom_mwl import VERIFICATION, DicomListenerConfig, MWLServer
from connectors.mllp import MLLPSource, MLLPSourceConfig
from engine.ai_timeouts import overdue, record_timeouts
from engine.audit import AuditEvent, audit_op
from engine.config import AIModelConfig
from tests.support.admin_app import (
    FakeServices,
    Hub,
    Runtime,
    Worker,
    fail_deliveries,
    login,
    make_client,
    open_store,
    store_message,
)

pytestmark = pytest.mark.timeout(60)

MODELS = {"ich": AIModelConfig(model="ich", version="2.1", mode="triage", timeout_seconds=300)}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FakeServices]:
    with open_store(tmp_path) as services:
        yield services


@pytest.fixture
def hub() -> Hub:
    return Hub(runtimes={"orders": Runtime([Worker("ris")])})


@pytest.fixture
def client(store: FakeServices, hub: Hub) -> TestClient:
    return make_client(store, hub)


def audit(store: FakeServices, kind: str, at: datetime, uid: str, model: str = "ich") -> None:
    event = AuditEvent.model_validate(
        {"kind": kind, "at": at, "study_instance_uid": uid, "model": model, "channel": "images"}
    )
    store.committer.run(audit_op(event))


def raise_timeout_alert(store: FakeServices, uid: str = "1.2.3") -> None:
    """An AI request left unanswered past its timeout, found by the engine's own check."""
    now = datetime.now(UTC)
    audit(store, "ai_requested", now - timedelta(minutes=10), uid)
    found = overdue(store.engine, now, MODELS)
    assert len(store.committer.run(lambda conn: record_timeouts(conn, found, now))) == 1


# -- alerts --------------------------------------------------------------------------------


def test_alerts_are_listed_and_acknowledged_by_an_analyst(
    client: TestClient, store: FakeServices
) -> None:
    raise_timeout_alert(store)
    csrf = login(client, "vic")
    (alert,) = client.get("/api/alerts").json()
    assert (alert["kind"], alert["severity"], alert["acknowledged"]) == (
        "ai_timeout",
        "error",
        False,
    )
    assert "AI model ich" in alert["message"]
    assert alert["acknowledged_at"] is alert["acknowledged_by"] is None
    assert alert["created_at"]
    path = f"/api/alerts/{alert['id']}/acknowledge"
    assert client.post(path, headers={CSRF_HEADER: csrf}).status_code == 403
    csrf = login(client, "ann")
    done = client.post(path, headers={CSRF_HEADER: csrf})
    assert done.status_code == 200
    assert done.json()["acknowledged"] is True
    assert done.json()["acknowledged_by"] == "ann"
    # Gone from the open list, kept in the full one with who acknowledged it.
    assert client.get("/api/alerts").json() == []
    (seen,) = client.get("/api/alerts", params={"open_only": False}).json()
    assert (seen["acknowledged_by"], seen["acknowledged_at"]) == (
        "ann",
        done.json()["acknowledged_at"],
    )
    # Acknowledging again keeps the first acknowledgement.
    csrf = login(client, "ada")
    again = client.post(path, headers={CSRF_HEADER: csrf}).json()
    assert again["acknowledged_by"] == "ann"
    assert (
        client.post("/api/alerts/999/acknowledge", headers={CSRF_HEADER: csrf}).status_code == 404
    )


# -- dashboard -----------------------------------------------------------------------------


def test_dashboard_counts_the_last_hour_queues_and_open_alerts(
    client: TestClient, store: FakeServices
) -> None:
    store_message(store, destinations=("ris", "pacs"))
    store_message(store, destinations=("ris",))
    fail_deliveries(store, "orders", "ris")
    store_message(store, destinations=("pacs",))
    raise_timeout_alert(store)
    login(client, "vic")
    body = client.get("/api/dashboard").json()
    assert body["store"] == "ok"
    assert (body["received_last_hour"], body["errored_last_hour"], body["open_alerts"]) == (3, 1, 1)
    queues = {q["destination"]: q for q in body["queues"]}
    assert queues["pacs"]["depth"] == 2
    assert queues["pacs"]["errored"] == 0
    assert 0 <= queues["pacs"]["oldest_age_seconds"] < 60
    assert (queues["ris"]["depth"], queues["ris"]["errored"]) == (0, 2)
    assert queues["ris"]["oldest_age_seconds"] is None
    assert body["generated_at"]


def test_dashboard_needs_a_session(client: TestClient) -> None:
    assert client.get("/api/dashboard").status_code == 401
    assert client.get("/api/cluster").status_code == 401


def test_a_single_sqlite_node_has_no_cluster_to_show(client: TestClient) -> None:
    login(client, "vic")
    assert client.get("/api/cluster").json() == {
        "store": "sqlite",
        "this_node": None,
        "nodes": [],
        "claims": [],
    }


# -- metrics -------------------------------------------------------------------------------

SAMPLE = re.compile(r'^[a-z_]+\{(?:[a-z_]+="[^"]*",?)+\} [0-9.]+$')


def metric_lines(client: TestClient) -> list[str]:
    response = client.get("/metrics")
    assert response.status_code == 200
    lines = response.text.splitlines()
    assert all(line.startswith("# ") or SAMPLE.match(line) for line in lines), lines
    return lines


def test_metrics_show_open_alerts_and_ai_latency_per_model(
    client: TestClient, store: FakeServices
) -> None:
    now = datetime.now(UTC)
    for n, seconds in enumerate((10, 20, 30, 40)):
        requested = now - timedelta(minutes=30)
        audit(store, "ai_requested", requested, f"2.{n}")
        audit(store, "ai_result", requested + timedelta(seconds=seconds), f"2.{n}")
    # A result of more than an hour ago is not counted.
    audit(store, "ai_requested", now - timedelta(hours=3), "3.1")
    audit(store, "ai_result", now - timedelta(hours=2), "3.1")
    audit(store, "ai_requested", now - timedelta(minutes=5), "4.1", model="lung")
    audit(store, "ai_result", now - timedelta(minutes=4), "4.1", model="lung")
    raise_timeout_alert(store)
    lines = metric_lines(client)
    assert 'meridian_alerts_open{severity="error"} 1' in lines
    assert 'meridian_alerts_open{severity="warning"} 0' in lines
    assert 'meridian_ai_latency_seconds{model="ich",quantile="0.5"} 20.000' in lines
    assert 'meridian_ai_latency_seconds{model="ich",quantile="0.9"} 40.000' in lines
    assert 'meridian_ai_results_last_hour{model="ich"} 4' in lines
    assert 'meridian_ai_latency_seconds{model="lung",quantile="0.99"} 60.000' in lines


def _gauge(client: TestClient, prefix: str) -> str | None:
    return next((line for line in metric_lines(client) if line.startswith(prefix)), None)


def _wait_for(client: TestClient, expected: str) -> None:
    deadline = time.monotonic() + 10
    while _gauge(client, expected.rsplit(" ", 1)[0]) != expected:
        assert time.monotonic() < deadline, metric_lines(client)
        time.sleep(0.05)


async def _no_reply(raw: bytes, origin: Origin) -> bytes | None:
    return None


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(5)
    running.close()


def test_metrics_count_open_mllp_connections_and_dicom_associations(
    client: TestClient, store: FakeServices, hub: Hub, loop: asyncio.AbstractEventLoop
) -> None:
    source = MLLPSource(MLLPSourceConfig(type="mllp", host="127.0.0.1", port=0))
    asyncio.run_coroutine_threadsafe(source.start(_no_reply), loop).result(10)
    mwl = MWLServer(DicomListenerConfig(host="127.0.0.1", port=0), store.worklist)
    mwl.start()
    hub.sources["orders"], hub.mwl = source, mwl
    try:
        _wait_for(client, 'meridian_mllp_connections{channel="orders"} 0')
        _wait_for(client, 'meridian_dicom_associations{ae_title="MERIDIAN"} 0')
        with socket.create_connection(("127.0.0.1", source.bound_port)):
            _wait_for(client, 'meridian_mllp_connections{channel="orders"} 1')
        _wait_for(client, 'meridian_mllp_connections{channel="orders"} 0')
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(VERIFICATION)
        assoc = ae.associate("127.0.0.1", mwl.bound_port, ae_title="MERIDIAN")
        assert assoc.is_established
        _wait_for(client, 'meridian_dicom_associations{ae_title="MERIDIAN"} 1')
        assoc.release()
        _wait_for(client, 'meridian_dicom_associations{ae_title="MERIDIAN"} 0')
    finally:
        mwl.stop()
        asyncio.run_coroutine_threadsafe(source.stop(), loop).result(10)


def test_metrics_without_a_hub_leave_connection_gauges_out(store: FakeServices) -> None:
    client = make_client(store)
    lines = metric_lines(client)
    assert not any("connections" in line or "associations" in line for line in lines)
