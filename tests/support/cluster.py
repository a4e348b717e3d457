"""Several ``meridian serve`` processes (nodes) on one PostgreSQL store, on loopback ports.

Each node has its own settings file (its node id and lease), its own data
folder and its own copy of the channel files with its own listening port, as
on separate machines behind a TCP load balancer; they share the store URL.
Used by the cluster tests and ``bench/cluster.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from tests.support.hub_process import HubProcess, free_port, spawn_serve

__all__ = ["relay_channel", "start_node"]


def relay_channel(port: int, receivers: dict[str, tuple[int, int]]) -> str:
    """An MLLP-in channel relaying every message to MLLP receivers.

    ``receivers`` maps a destination name to (port, delivery lanes): one lane keeps
    the total arrival order, several keep the order per patient (the default key).
    """
    destinations = [
        {
            "name": name,
            "type": "mllp",
            "host": "127.0.0.1",
            "port": receiver_port,
            "timeout_seconds": 10,
            "retry": {"initial_backoff_seconds": 0.2, "max_backoff_seconds": 1, "jitter": 0},
            "queue": {"workers": lanes},
        }
        for name, (receiver_port, lanes) in receivers.items()
    ]
    channel = {
        "name": "relay",
        "source": {"type": "mllp", "host": "127.0.0.1", "port": port, "stop_timeout_seconds": 1},
        "destinations": destinations,
    }
    return yaml.safe_dump(channel, sort_keys=False)


def start_node(
    workdir: Path,
    node_id: str,
    db_url: str,
    channel: Callable[[int], str],
    *,
    lease_seconds: float = 30,
) -> HubProcess:
    """Start one node: ``channel(port)`` is its channel file for its own MLLP port."""
    workdir.mkdir(parents=True, exist_ok=True)
    mllp_port = free_port()
    channels = workdir / "channels"
    channels.mkdir(exist_ok=True)
    (channels / "relay.yaml").write_text(channel(mllp_port))
    settings = workdir / "meridian.yaml"
    cluster = {"node_id": node_id, "lease_seconds": lease_seconds}
    settings.write_text(yaml.safe_dump({"cluster": cluster}))
    extra = ["--config", str(settings), "--db", db_url]
    return spawn_serve(workdir, channels, mllp_port, extra, timeout=60)
