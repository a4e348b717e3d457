"""Channel state in the store: every node follows an analyst's action; restarts keep it.

Real hubs in this process on free ports, each with its own copy of the channel
(its own MLLP port), sharing one store: PostgreSQL for two nodes, SQLite for
a restart.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.channel_control import ChannelState
from engine.config import HubSettings
from engine.hub import Hub
from engine.loader import load_channels
from tests.support.cluster import relay_channel
from tests.support.databases import postgres_database
from tests.support.hub_process import free_port

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_database()


def node(tmp_path: Path, name: str, db_url: str | None) -> tuple[Hub, int]:
    """A hub named ``name`` running channel ``relay`` on its own MLLP port."""
    port = free_port()
    channels = tmp_path / name / "channels"
    channels.mkdir(parents=True, exist_ok=True)
    (channels / "relay.yaml").write_text(relay_channel(port, {"ehr": (free_port(), 1)}))
    values = {
        "channels_dir": channels,
        "transforms_dir": REPO / "transforms",
        "data_dir": tmp_path / name / "var",
        "dicom": {"port": 0},
        "admin": {"port": 0},
        "cluster": {"node_id": name},
    }
    if db_url is not None:
        values["db_url"] = db_url
    settings = HubSettings.model_validate(values)
    return Hub(settings, load_channels(channels)), port


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.1)


def test_an_action_on_one_node_is_followed_by_the_other(tmp_path: Path, pg_url: str) -> None:
    first, _ = node(tmp_path, "node-a", pg_url)
    second, port = node(tmp_path, "node-b", pg_url)

    async def body() -> None:
        await first.start()
        await second.start()
        try:
            state = lambda: second.channel_state("relay")  # noqa: E731
            await first.pause_channel("relay")
            await eventually(lambda: state() is ChannelState.PAUSED, "node b paused")
            assert not await asyncio.to_thread(listening, port), "node b's listener closed"
            await first.stop_channel("relay")
            await eventually(lambda: state() is ChannelState.STOPPED, "node b stopped")
            await first.start_channel("relay")
            await eventually(lambda: state() is ChannelState.STARTED, "node b started")
            assert await asyncio.to_thread(listening, port)

            running = second.runtimes["relay"]
            await first.deploy_channel("relay")  # a redeploy: node b re-reads its file
            await eventually(
                lambda: second.runtimes.get("relay") not in (None, running), "redeploy"
            )
            await eventually(lambda: state() is ChannelState.STARTED, "node b started again")

            await first.undeploy_channel("relay")
            await eventually(lambda: state() is ChannelState.UNDEPLOYED, "node b undeployed")
            await first.deploy_channel("relay")
            await eventually(lambda: state() is ChannelState.STARTED, "node b deployed")
        finally:
            await second.stop()
            await first.stop()

    asyncio.run(body())


def test_a_restarted_hub_comes_back_with_its_channels_as_they_were_left(tmp_path: Path) -> None:
    async def pause_then_stop() -> None:
        hub, _ = node(tmp_path, "hub", None)
        await hub.start()
        await hub.pause_channel("relay")
        await hub.stop()

    async def restart() -> ChannelState:
        hub, port = node(tmp_path, "hub", None)
        await hub.start()
        try:
            assert not await asyncio.to_thread(listening, port)
            return hub.channel_state("relay")
        finally:
            await hub.stop()

    asyncio.run(pause_then_stop())
    assert asyncio.run(restart()) is ChannelState.PAUSED
