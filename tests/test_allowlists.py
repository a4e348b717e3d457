"""IP allowlists (``allowed_networks``) of every listener, from a real peer on 127.0.0.1.

An allowlist that excludes 127.0.0.1 (only 10.0.0.0/8) refuses the test's
connections; one that includes it serves them; none (the default) serves all.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ValidationError
from pynetdicom import AE, evt
from pynetdicom.events import Event

from admin.metrics import _labels
from admin.metrics_extra import connection_lines
from admin.server import AdminServer
from admin.settings import AdminSettings
from connectors.allowlist import AllowedNetworks, is_allowed
from connectors.base import Origin
from connectors.dicom_mwl import VERIFICATION, DicomListenerConfig, MWLServer
from connectors.http_source import HttpSource, HttpSourceConfig
from connectors.mllp import MLLPSource, MLLPSourceConfig
from connectors.mllp_framing import encode_frame
from engine.worklist import WorklistStore
from tests.support.admin_app import FakeServices, open_store
from tests.test_mwl_scp import _engine

pytestmark = pytest.mark.timeout(60)

LOCALHOST = "127.0.0.1"
ELSEWHERE = ["10.0.0.0/8"]
LOOPBACK = ["10.0.0.0/8", "127.0.0.1/32"]
ORM = b"MSH|^~\\&|EHR|HOSP|MERIDIAN|HOSP|20240105083000||ORM^O01|MSG1|P|2.5\rPID|1||P1||DOE^JOHN"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


class Recorder:
    """An inbound handler that records each message and answers ``ACK``."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def __call__(self, raw: bytes, origin: Origin) -> bytes | None:
        self.received.append(raw)
        return b"MSH|ACK"


# -- the model ----------------------------------------------------------------------------


class _Listener(BaseModel):
    allowed_networks: AllowedNetworks = None


def test_networks_are_validated_and_matched() -> None:
    listener = _Listener.model_validate({"allowed_networks": ["10.0.0.0/8", "fd00::/8"]})
    networks = listener.allowed_networks
    assert is_allowed(networks, "10.20.30.40")
    assert is_allowed(networks, "::ffff:10.1.1.1")  # IPv4-mapped, from a dual-stack socket
    assert is_allowed(networks, "fd12::1")
    assert not is_allowed(networks, "127.0.0.1")
    assert not is_allowed(networks, "not-an-ip")
    assert is_allowed(None, "192.0.2.1")  # no allowlist: everyone
    for bad in (["10.0.0.1/8"], ["nonsense"], []):  # host bits set, not a network, empty
        with pytest.raises(ValidationError):
            _Listener.model_validate({"allowed_networks": bad})


# -- MLLP ---------------------------------------------------------------------------------


async def _mllp_exchange(networks: list[str] | None) -> tuple[bytes, Recorder, MLLPSource]:
    recorder = Recorder()
    config = MLLPSourceConfig(
        type="mllp",
        host=LOCALHOST,
        port=0,
        allowed_networks=networks,  # type: ignore[arg-type]
    )
    source = MLLPSource(config)
    await source.start(recorder)
    try:
        reader, writer = await asyncio.open_connection(LOCALHOST, source.bound_port)
        try:
            writer.write(encode_frame(ORM))
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(1024), timeout=5)
        except ConnectionError:
            answer = b""
        finally:
            writer.close()
        return answer, recorder, source
    finally:
        await source.stop()


def test_mllp_connection_from_outside_the_allowlist_is_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="connectors.mllp")
    answer, recorder, source = run(_mllp_exchange(ELSEWHERE))
    assert answer == b""  # closed at once, no ACK
    assert recorder.received == []
    assert source.refused_by_allowlist == 1
    [record] = [r for r in caplog.records if "allowed_networks" in r.getMessage()]
    assert LOCALHOST in record.getMessage() and "DOE" not in record.getMessage()
    # Operators see refusals in /metrics (the hub's sources, as render_metrics reads them).
    lines = connection_lines(SimpleNamespace(sources={"orders": source}), _labels)
    assert 'meridian_allowlist_refused_total{listener="channel:orders"} 1' in lines


@pytest.mark.parametrize("networks", [LOOPBACK, None])
def test_mllp_connection_from_inside_the_allowlist_is_served(networks: list[str] | None) -> None:
    answer, recorder, source = run(_mllp_exchange(networks))
    assert answer == encode_frame(b"MSH|ACK")
    assert recorder.received == [ORM]
    assert source.refused_by_allowlist == 0


# -- HTTP source --------------------------------------------------------------------------


async def _http_post(networks: list[str] | None) -> tuple[httpx.Response, Recorder, HttpSource]:
    recorder = Recorder()
    config = HttpSourceConfig(
        type="http",
        host=LOCALHOST,
        port=0,
        allowed_networks=networks,  # type: ignore[arg-type]
    )
    source = HttpSource(config)
    await source.start(recorder)
    try:
        async with httpx.AsyncClient() as client:
            url = f"http://{LOCALHOST}:{source.bound_port}/results"
            response = await client.post(url, content=b'{"findings": []}')
        return response, recorder, source
    finally:
        await source.stop()


def test_http_source_answers_403_outside_the_allowlist() -> None:
    response, recorder, source = run(_http_post(ELSEWHERE))
    assert response.status_code == 403
    assert response.json() == {"status": "forbidden"}
    assert recorder.received == []
    assert source.refused_by_allowlist == 1


def test_http_source_serves_inside_the_allowlist() -> None:
    response, recorder, _ = run(_http_post(LOOPBACK))
    assert response.status_code != 403
    assert recorder.received == [b'{"findings": []}']


# -- DICOM listener -----------------------------------------------------------------------


@pytest.fixture
def worklist(tmp_path: Path) -> Iterator[WorklistStore]:
    engine = _engine(tmp_path / "mwl.db")
    yield WorklistStore(engine)
    engine.dispose()


def _dicom_server(store: WorklistStore, networks: list[str] | None) -> MWLServer:
    config = DicomListenerConfig.model_validate(
        {"host": LOCALHOST, "port": 0, "allowed_networks": networks}
    )
    server = MWLServer(config, store)
    server.start()
    return server


def _echo(port: int) -> tuple[Any, list[tuple[int, int, int]]]:
    """Associate and C-ECHO; returns the association and any A-ASSOCIATE-RJ (result, source,
    diagnostic) received."""
    rejections: list[tuple[int, int, int]] = []

    def on_acse(event: Event) -> None:
        primitive = event.primitive  # type: ignore[attr-defined]
        if getattr(primitive, "result", None) in (1, 2):
            rejections.append((primitive.result, primitive.result_source, primitive.diagnostic))

    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(
        LOCALHOST, port, ae_title="MERIDIAN", evt_handlers=[(evt.EVT_ACSE_RECV, on_acse)]
    )
    if assoc.is_established:
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    return assoc, rejections


def test_dicom_association_from_outside_the_allowlist_is_rejected(
    worklist: WorklistStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="connectors.dicom_mwl")
    server = _dicom_server(worklist, ELSEWHERE)
    try:
        assoc, rejections = _echo(server.bound_port)
        assert assoc.is_rejected and not assoc.is_established
        assert rejections == [(0x01, 0x01, 0x01)]  # permanent, service user, no reason given
        assert server.listener.refused_by_allowlist == 1
        # The listener stays up and keeps refusing.
        assoc, _ = _echo(server.bound_port)
        assert assoc.is_rejected
    finally:
        server.stop()
    assert any(LOCALHOST in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(shutil.which("echoscu") is None, reason="dcmtk not installed")
def test_dcmtk_echoscu_is_rejected_outside_the_allowlist(worklist: WorklistStore) -> None:
    server = _dicom_server(worklist, ELSEWHERE)
    try:
        command = ["echoscu", "-aec", "MERIDIAN", LOCALHOST, str(server.bound_port)]
        result = subprocess.run(command, capture_output=True, timeout=30, check=False)
    finally:
        server.stop()
    assert result.returncode != 0
    assert b"Rejected" in result.stderr + result.stdout


@pytest.mark.parametrize("networks", [LOOPBACK, ["127.0.0.0/8"], None])
def test_dicom_association_from_inside_the_allowlist_is_accepted(
    worklist: WorklistStore, networks: list[str] | None
) -> None:
    server = _dicom_server(worklist, networks)
    try:
        assoc, rejections = _echo(server.bound_port)
        assert assoc.is_released and rejections == []
        assert server.listener.refused_by_allowlist == 0
    finally:
        server.stop()


# -- admin API ----------------------------------------------------------------------------


async def _admin_get(store: FakeServices, networks: list[str] | None) -> dict[str, int]:
    settings = AdminSettings.model_validate(
        {"host": LOCALHOST, "port": 0, "allowed_networks": networks}
    )
    server = AdminServer(store, None, settings)  # type: ignore[arg-type]
    await server.start()
    try:
        base = f"http://{LOCALHOST}:{server.bound_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            login = await client.post("/api/login", json={"username": "x", "password": "y"})
            return {
                "/healthz": (await client.get("/healthz")).status_code,
                "/metrics": (await client.get("/metrics")).status_code,
                "/api/session": (await client.get("/api/session")).status_code,
                "/api/login": login.status_code,
            }
    finally:
        await server.stop()


def test_admin_api_refuses_every_route_outside_the_allowlist(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        statuses = run(_admin_get(store, ELSEWHERE))
    assert statuses == {"/healthz": 403, "/metrics": 403, "/api/session": 403, "/api/login": 403}


@pytest.mark.parametrize("networks", [LOOPBACK, None])
def test_admin_api_serves_inside_the_allowlist(tmp_path: Path, networks: list[str] | None) -> None:
    with open_store(tmp_path) as store:
        statuses = run(_admin_get(store, networks))
    # The usual answers: healthy, metrics, no session yet, wrong credentials.
    assert statuses == {"/healthz": 200, "/metrics": 200, "/api/session": 401, "/api/login": 401}
