"""The message browser, dashboard and /metrics on a real running hub, through its admin port.

An in-process hub with an MLLP relay channel on free ports; the sender is a
plain socket client and the EHR a real MLLP receiver, so the live gauges and
the stored message are what a hub in service would show.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from admin.security import CSRF_HEADER
from admin.users import add_user
from engine.config import HubSettings
from engine.hub import Hub
from engine.loader import load_channels
from tests.support.hub_process import free_port
from tests.support.mllp_client import msa, send
from tests.support.mllp_receivers import AckReceiver
from tests.support.orders import orm

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"


def relay(port: int, ehr_port: int) -> str:
    return (
        f"name: relay\nsource:\n  type: mllp\n  host: 127.0.0.1\n  port: {port}\n"
        "  stop_timeout_seconds: 1\n"
        f"destinations:\n  - name: ehr\n    type: mllp\n    host: 127.0.0.1\n"
        f"    port: {ehr_port}\n    timeout_seconds: 2\n"
    )


@contextlib.asynccontextmanager
async def analyst_on_hub(
    tmp_path: Path, channel_text: str, ehr_port: int
) -> AsyncIterator[tuple[Hub, httpx.AsyncClient, str, AckReceiver]]:
    """A hub running ``channel_text`` (as channels/relay.yaml), the EHR receiver, and an
    analyst logged in to the hub's admin port: (hub, client, CSRF token, EHR)."""
    channels = tmp_path / "channels"
    channels.mkdir(exist_ok=True)
    (channels / "relay.yaml").write_text(channel_text)
    settings = HubSettings.model_validate(
        {
            "channels_dir": channels,
            "transforms_dir": REPO / "transforms",
            "data_dir": tmp_path / "var",
            "dicom": {"port": 0},
            "admin": {"port": 0},
        }
    )
    hub = Hub(settings, load_channels(channels))
    await hub.start()
    ehr = await AckReceiver(port=ehr_port).start()
    try:
        assert hub.services is not None and hub.admin is not None
        await asyncio.to_thread(add_user, hub.services.engine, "ann", PASSWORD, "analyst")
        base = f"http://127.0.0.1:{hub.admin.bound_port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            login = {"username": "ann", "password": PASSWORD}
            csrf = (await client.post("/api/login", json=login)).json()["csrf_token"]
            yield hub, client, csrf, ehr
    finally:
        await ehr.stop()
        await hub.stop()


async def gauge(client: httpx.AsyncClient, sample: str, timeout: float = 10.0) -> None:
    """Wait until /metrics has the line ``sample``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        lines = (await client.get("/metrics")).text.splitlines()
        if sample in lines:
            return
        assert asyncio.get_running_loop().time() < deadline, lines
        await asyncio.sleep(0.05)


def test_browser_dashboard_and_live_gauges_on_a_running_hub(tmp_path: Path) -> None:
    port, ehr_port = free_port(), free_port()

    async def scenario() -> None:
        async with analyst_on_hub(tmp_path, relay(port, ehr_port), ehr_port) as running:
            _, client, csrf, _ = running
            await exercise(client, csrf, port)

    asyncio.run(scenario())


async def exercise(client: httpx.AsyncClient, csrf: str, port: int) -> None:
    ack = await asyncio.to_thread(send, port, orm(placer="P1", accession="A1").encode(), 10.0)
    assert msa(ack)[1] == "AA"
    await gauge(client, 'meridian_mllp_connections{channel="relay"} 0')
    await gauge(client, 'meridian_dicom_associations{ae_title="MERIDIAN"} 0')
    with socket.create_connection(("127.0.0.1", port)):
        await gauge(client, 'meridian_mllp_connections{channel="relay"} 1')

    dashboard = (await client.get("/api/dashboard")).json()
    assert (dashboard["store"], dashboard["received_last_hour"]) == ("ok", 1)

    found = (await client.get("/api/messages", params={"count": True})).json()
    assert found["total"] == 1
    message_id = found["items"][0]["id"]
    view = (await client.get(f"/api/messages/{message_id}/segments")).json()
    assert view["format"] == "hl7"
    assert [s["name"] for s in view["segments"]][:2] == ["MSH", "PID"]
    pid = {f["position"]: f for f in view["segments"][1]["fields"]}
    assert pid["PID-5"]["value"].startswith("DOE^JANE")

    exported = await client.get("/api/messages/export", params={"format": "hl7"})
    assert exported.text.startswith("MSH|") and exported.text.endswith("\r\n")
    again = await client.post(
        "/api/messages/reprocess", json={"ids": [message_id]}, headers={CSRF_HEADER: csrf}
    )
    assert again.json()["results"][0]["error"] is None


def test_reprocess_runs_a_message_that_failed_in_the_channel_again(tmp_path: Path) -> None:
    """A filter error stores the message as ERROR with nothing queued; once the channel is
    fixed and redeployed, reprocess runs the stored message through it as a new message."""
    port, ehr_port = free_port(), free_port()
    broken = relay(port, ehr_port).replace(
        "destinations:", "filters:\n  - name: broken\n    when: 1 / 0\ndestinations:"
    )

    async def scenario() -> None:
        async with analyst_on_hub(tmp_path, broken, ehr_port) as (hub, client, csrf, ehr):
            message = orm(placer="P9", accession="A9").encode()
            ack = await asyncio.to_thread(send, port, message, 10.0)
            assert msa(ack)[1] == "AE"
            [failed] = (await client.get("/api/messages")).json()["items"]
            assert failed["status"] == "ERROR"
            (tmp_path / "channels" / "relay.yaml").write_text(relay(port, ehr_port))
            await hub.deploy_channel("relay")
            path = f"/api/messages/{failed['id']}/reprocess"
            answer = (await client.post(path, headers={CSRF_HEADER: csrf})).json()
            assert answer["requeued"] == 0
            assert answer["resubmitted_as"] not in (None, failed["id"])
            assert answer["status"] == "QUEUED"
            for _ in range(200):
                if ehr.received:
                    break
                await asyncio.sleep(0.05)
            assert [m.rstrip(b"\r") for m in ehr.received] == [message.rstrip(b"\r")]
            again = (await client.get(f"/api/messages/{answer['resubmitted_as']}")).json()
            assert again["origin"].startswith("reprocess")
            kept = (await client.get(f"/api/messages/{failed['id']}")).json()
            assert kept["status"] == "ERROR", "the failed original stays for the record"
            # Reprocessing it again (here in bulk) never sends it twice: the run-again
            # message was accepted, so duplicate control answers with it.
            bulk = {"ids": [failed["id"]]}
            headers = {CSRF_HEADER: csrf}
            response = await client.post("/api/messages/reprocess", json=bulk, headers=headers)
            [result] = response.json()["results"]
            assert result["resubmitted_as"] == answer["resubmitted_as"]
            await asyncio.sleep(0.5)
            assert len(ehr.received) == 1

    asyncio.run(scenario())
