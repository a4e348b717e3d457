"""Channel lifecycle on a real hub, driven through its admin HTTP port.

The hub runs in-process with an MLLP source and MLLP destinations on free
ports; the EHR is a real MLLP receiver (tests/support/mllp_receivers.py) and
the sender a plain socket client, so pause/stop/start/deploy are observed the
way a sending system and an EHR observe them.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import Engine, select

from admin.security import CSRF_HEADER
from admin.tables import admin_access_log
from admin.users import add_user
from connectors.dicom_store import NOT_AUTHORIZED
from connectors.memory import MEMORY_DESTINATIONS
from engine.config import HubSettings
from engine.hub import Hub
from engine.loader import load_channels
from engine.store.tables import queue_entries
from tests.support.dicom_files import make_ct_instance
from tests.support.hub_process import free_port
from tests.support.mllp_client import msa, send
from tests.support.mllp_receivers import AckReceiver
from tests.support.orders import orm

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"
FAST_RETRY = "    retry:\n      initial_backoff_seconds: 0.05\n      max_backoff_seconds: 0.2\n"


def mllp_channel(name: str, port: int, ehr_port: int) -> str:
    """A channel relaying HL7 from an MLLP port to an MLLP receiver."""
    return (
        f"name: {name}\n"
        f"source:\n  type: mllp\n  host: 127.0.0.1\n  port: {port}\n"
        "  stop_timeout_seconds: 1\n"
        f"destinations:\n  - name: ehr\n    type: mllp\n    host: 127.0.0.1\n"
        f"    port: {ehr_port}\n    timeout_seconds: 2\n" + FAST_RETRY
    )


def forwarding_channel(name: str, port: int, target: str) -> str:
    """A channel handing everything it receives over MLLP to channel ``target``."""
    return (
        f"name: {name}\n"
        f"source:\n  type: mllp\n  host: 127.0.0.1\n  port: {port}\n"
        f"destinations:\n  - name: forward\n    type: channel\n    channel: {target}\n" + FAST_RETRY
    )


def channel_fed_channel(name: str, ehr_port: int) -> str:
    """A channel fed by other channels only, delivering to an MLLP receiver."""
    return (
        f"name: {name}\nsource:\n  type: channel\n"
        f"destinations:\n  - name: ehr\n    type: mllp\n    host: 127.0.0.1\n"
        f"    port: {ehr_port}\n    timeout_seconds: 2\n" + FAST_RETRY
    )


class Admin:
    """An analyst (or any user) talking to the hub's admin port."""

    def __init__(self, client: httpx.AsyncClient, csrf: str) -> None:
        self.client = client
        self.headers = {CSRF_HEADER: csrf}

    async def act(self, channel: str, action: str) -> httpx.Response:
        return await self.client.post(f"/api/channels/{channel}/{action}", headers=self.headers)

    async def info(self, channel: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/channels/{channel}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def put_file(self, channel: str, text: str) -> httpx.Response:
        return await self.client.put(
            f"/api/channels/{channel}/file", json={"text": text}, headers=self.headers
        )


async def login(port: int, username: str) -> Admin:
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
    response = await client.post("/api/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return Admin(client, response.json()["csrf_token"])


async def mllp_send(port: int, message: str) -> str:
    """Send one message from a plain socket client (in a thread: it blocks); the MSA code."""
    ack = await asyncio.to_thread(send, port, message.encode(), 10.0)
    return msa(ack)[1]


async def refused(port: int) -> bool:
    """True if nothing accepts connections on ``port``."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def queue_statuses(engine: Engine, channel: str) -> list[str]:
    with engine.connect() as conn:
        query = select(queue_entries.c.status).where(queue_entries.c.channel == channel)
        return [row[0] for row in conn.execute(query.order_by(queue_entries.c.id))]


def access_log(engine: Engine) -> list[tuple[str, str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(select(admin_access_log).order_by(admin_access_log.c.id)).mappings()
        return [(r["username"], r["action"], r["channel"]) for r in rows]


def commit_all(folder: Path) -> None:
    """Make ``folder`` a Git repository with everything in it committed."""
    git = [
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.org",
        "-c",
        "commit.gpgsign=false",
    ]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "channels"]):
        subprocess.run([*git, *args], cwd=folder, check=True, capture_output=True)


def run_hub(tmp_path: Path, body: Callable[[Hub, Admin], Awaitable[None]]) -> None:
    """Start a hub on the channels of ``tmp_path/channels``, log in as analyst, run ``body``."""
    channels = tmp_path / "channels"
    settings = HubSettings.model_validate(
        {
            "channels_dir": channels,
            "transforms_dir": REPO / "transforms",
            "data_dir": tmp_path / "var",
            "dicom": {"port": 0},
            "admin": {"port": 0},
        }
    )

    async def scenario() -> None:
        hub = Hub(settings, load_channels(channels))
        await hub.start()
        admin: Admin | None = None
        try:
            assert hub.services is not None and hub.admin is not None
            for name, role in (("ann", "analyst"), ("vic", "viewer")):
                await asyncio.to_thread(add_user, hub.services.engine, name, PASSWORD, role)  # type: ignore[arg-type]
            admin = await login(hub.admin.bound_port, "ann")
            await body(hub, admin)
        finally:
            if admin is not None:
                await admin.client.aclose()
            await hub.stop()

    asyncio.run(scenario())


def test_pause_stop_and_start(tmp_path: Path) -> None:
    port, ehr_port = free_port(), free_port()
    (tmp_path / "channels").mkdir()
    (tmp_path / "channels" / "relay.yaml").write_text(mllp_channel("relay", port, ehr_port))

    async def body(hub: Hub, admin: Admin) -> None:
        assert hub.services is not None
        engine = hub.services.engine
        ehr = await AckReceiver(port=ehr_port).start()
        assert await mllp_send(port, orm(placer="P1", accession="A1")) == "AA"
        await until(lambda: len(ehr.received) == 1)
        assert (await admin.info("relay"))["state"] == "started"

        # Paused: the sender cannot connect; what is queued is still delivered.
        await ehr.stop()
        assert await mllp_send(port, orm(placer="P2", accession="A2")) == "AA"
        paused = await admin.act("relay", "pause")
        assert paused.status_code == 200, paused.text
        assert paused.json()["state"] == "paused"
        assert paused.json()["destinations"][0]["queue_depth"] == 1
        assert await refused(port)
        ehr = await AckReceiver(port=ehr_port).start()
        await until(lambda: len(ehr.received) == 1)
        await until(lambda: queue_statuses(engine, "relay") == ["SENT", "SENT"])

        # Stopped: nothing is delivered, the entry stays QUEUED in the store.
        await (await admin.act("relay", "start")).aread()
        await ehr.stop()
        assert await mllp_send(port, orm(placer="P3", accession="A3")) == "AA"
        stopped = await admin.act("relay", "stop")
        assert stopped.json()["state"] == "stopped"
        assert await refused(port)
        ehr = await AckReceiver(port=ehr_port).start()
        await asyncio.sleep(1.0)
        assert ehr.received == []
        assert queue_statuses(engine, "relay") == ["SENT", "SENT", "QUEUED"]
        assert (await admin.info("relay"))["destinations"][0]["queue_depth"] == 1

        # Started again: a new source on the same port, the queue drains.
        assert (await admin.act("relay", "pause")).status_code == 409, "only a started channel"
        started = await admin.act("relay", "start")
        assert started.json()["state"] == "started"
        await until(lambda: len(ehr.received) == 1)
        assert b"P3" in ehr.received[0]
        assert await mllp_send(port, orm(placer="P4", accession="A4")) == "AA"
        await until(lambda: len(ehr.received) == 2)
        assert (await admin.act("relay", "start")).status_code == 409
        await ehr.stop()

        assert access_log(engine) == [
            ("ann", "channel.pause", "relay"),
            ("ann", "channel.start", "relay"),
            ("ann", "channel.stop", "relay"),
            ("ann", "channel.start", "relay"),
        ]
        viewer = await login(admin.client.base_url.port or 0, "vic")
        try:
            assert (await viewer.act("relay", "stop")).status_code == 403
            assert (await viewer.act("relay", "deploy")).status_code == 403
        finally:
            await viewer.client.aclose()
        assert hub.channel_state("relay") == "started"

    run_hub(tmp_path, body)


def test_undeploy_edit_and_deploy(tmp_path: Path) -> None:
    front_port, old_ehr, new_ehr = free_port(), free_port(), free_port()
    channels = tmp_path / "channels"
    channels.mkdir()
    (channels / "front.yaml").write_text(forwarding_channel("front", front_port, "relay"))
    original = channel_fed_channel("relay", old_ehr)
    (channels / "relay.yaml").write_text(original)
    commit_all(channels)

    async def body(hub: Hub, admin: Admin) -> None:
        assert hub.services is not None
        engine = hub.services.engine
        old, new = await AckReceiver(port=old_ehr).start(), await AckReceiver(port=new_ehr).start()

        # Undeployed: a forward to it fails and is retried by the forwarding queue.
        undeployed = await admin.act("relay", "undeploy")
        assert undeployed.json()["state"] == "undeployed"
        assert undeployed.json()["file"] == "relay.yaml"
        assert (await admin.act("relay", "undeploy")).status_code == 409
        assert await mllp_send(front_port, orm(placer="F1", accession="AF1")) == "AA"
        await asyncio.sleep(0.5)
        assert queue_statuses(engine, "front") == ["QUEUED"]
        front = await admin.info("front")
        assert front["destinations"][0]["queue_depth"] == 1

        # Edit: an invalid text is refused with its line, a valid one is saved.
        invalid = original.replace(f"port: {old_ehr}", "port: 99999")
        refused_edit = await admin.put_file("relay", invalid)
        assert refused_edit.status_code == 422
        (error,) = refused_edit.json()["detail"]["errors"]
        assert (error["line"], error["field"]) == (8, "destinations.0.port")
        edited = original.replace(f"port: {old_ehr}", f"port: {new_ehr}")
        assert (await admin.put_file("relay", edited)).status_code == 200
        diff = await admin.client.post("/api/channels/relay/diff", json={}, headers=admin.headers)
        assert diff.json()["tracked_in_git"] is True
        assert f"\n-    port: {old_ehr}\n+    port: {new_ehr}\n" in diff.json()["diff"]

        # A file broken on disk cannot be deployed; the fixed one deploys the edit.
        (channels / "relay.yaml").write_text(edited.replace("type: channel", "type: chanel"))
        broken = await admin.act("relay", "deploy")
        assert broken.status_code == 422
        assert broken.json()["detail"]["errors"][0]["line"] == 3
        assert hub.channel_state("relay") == "undeployed"
        (channels / "relay.yaml").write_text(edited)
        deployed = await admin.act("relay", "deploy")
        assert deployed.status_code == 200, deployed.text
        assert deployed.json()["state"] == "started"
        await until(lambda: len(new.received) == 1)
        assert old.received == []
        await until(lambda: queue_statuses(engine, "front") == ["SENT"])

        # Redeploying a running MLLP channel rebinds its port.
        assert (await admin.act("front", "deploy")).json()["state"] == "started"
        assert await mllp_send(front_port, orm(placer="F2", accession="AF2")) == "AA"
        await until(lambda: len(new.received) == 2)
        await old.stop()
        await new.stop()
        assert [action for _, action, _ in access_log(engine)] == [
            "channel.undeploy",
            "channel.save",
            "channel.deploy",
            "channel.deploy",
        ]

    run_hub(tmp_path, body)


@pytest.mark.parametrize("action", ["pause", "stop"])
def test_forwards_to_a_paused_or_stopped_channel_wait(tmp_path: Path, action: str) -> None:
    front_port, ehr_port = free_port(), free_port()
    channels = tmp_path / "channels"
    channels.mkdir()
    (channels / "front.yaml").write_text(forwarding_channel("front", front_port, "relay"))
    (channels / "relay.yaml").write_text(channel_fed_channel("relay", ehr_port))

    async def body(hub: Hub, admin: Admin) -> None:
        assert hub.services is not None
        engine = hub.services.engine
        ehr = await AckReceiver(port=ehr_port).start()
        assert (await admin.act("relay", action)).status_code == 200
        assert await mllp_send(front_port, orm(placer="W1", accession="AW1")) == "AA"
        await asyncio.sleep(0.5)
        assert ehr.received == []
        assert queue_statuses(engine, "front") == ["QUEUED"], "nothing lost, nothing sent"
        assert (await admin.act("relay", "start")).status_code == 200
        await until(lambda: len(ehr.received) == 1)
        await until(lambda: queue_statuses(engine, "front") == ["SENT"])
        await ehr.stop()

    run_hub(tmp_path, body)


def c_store(port: int, dataset: Any, called: str) -> int:
    """One C-STORE from a pynetdicom SCU (blocking); the status."""
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(dataset).Status)
    finally:
        assoc.release()


def test_a_paused_dicom_channel_refuses_its_called_ae(tmp_path: Path) -> None:
    channels = tmp_path / "channels"
    channels.mkdir()
    (channels / "images.yaml").write_text(
        "name: images\ninbound:\n  data_type: dicom-study\n"
        "source:\n  type: dicom\n  ae_title: CT_IN\n  quiet_period_seconds: 0.3\n"
        "destinations:\n  - name: pacs\n    type: memory\n    instance: lifecycle-pacs\n"
    )

    async def body(hub: Hub, admin: Admin) -> None:
        assert hub.mwl is not None
        port = hub.mwl.bound_port
        assert (await admin.act("images", "pause")).json()["state"] == "paused"
        first = make_ct_instance(str(generate_uid()), str(generate_uid()))
        assert await asyncio.to_thread(c_store, port, first, "CT_IN") == NOT_AUTHORIZED
        assert (await admin.act("images", "start")).json()["state"] == "started"
        second = make_ct_instance(str(generate_uid()), str(generate_uid()))
        assert await asyncio.to_thread(c_store, port, second, "CT_IN") == 0x0000
        pacs = MEMORY_DESTINATIONS["lifecycle-pacs"]
        await until(lambda: len(pacs.received) == 1)
        assert str(second.StudyInstanceUID) in pacs.received[0]

    run_hub(tmp_path, body)


def test_a_new_version_that_cannot_start_leaves_the_running_one(tmp_path: Path) -> None:
    port, busy_port, ehr_port = free_port(), free_port(), free_port()
    channels = tmp_path / "channels"
    channels.mkdir()
    (channels / "relay.yaml").write_text(mllp_channel("relay", port, ehr_port))

    async def body(hub: Hub, admin: Admin) -> None:
        blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", busy_port)
        ehr = await AckReceiver(port=ehr_port).start()
        try:
            (channels / "relay.yaml").write_text(mllp_channel("relay", busy_port, ehr_port))
            failed = await admin.act("relay", "deploy")
            assert failed.status_code == 409
            assert "cannot listen" in failed.json()["detail"]
            assert (await admin.info("relay"))["state"] == "started"
            assert await mllp_send(port, orm(placer="K1", accession="AK1")) == "AA"
            await until(lambda: len(ehr.received) == 1)
        finally:
            blocker.close()
            await ehr.stop()

    run_hub(tmp_path, body)
