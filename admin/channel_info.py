"""ChannelInfo: what the channels page shows of each channel (state, config, queues, counts).

A channel is known from three places: a file in the channels folder, the hub's
deployments, and messages in the store (a channel since removed stays browsable).
The running version wins for the configuration; ``enabled`` is the file's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from engine.channel_files import FileSummary, scan
from engine.config import Channel
from engine.states import MessageStatus
from engine.store.tables import messages, queue_entries

__all__ = ["HubView", "channel_infos"]

_QUEUED = MessageStatus.QUEUED.value
_ERROR = MessageStatus.ERROR.value


@dataclass(frozen=True)
class HubView:
    """The hub's side of the picture: deployed channels and their states."""

    deployed: dict[str, Channel]
    states: dict[str, str]

    @classmethod
    def of(cls, hub: Any) -> HubView:
        """Read from a running hub (None: no hub, nothing deployed)."""
        if hub is None:
            return cls({}, {})
        deployed = {channel.name: channel for channel in hub.channels}
        return cls(deployed, {name: str(hub.channel_state(name)) for name in deployed})


@dataclass
class _QueueStats:
    depth: int = 0
    oldest: datetime | None = None
    errored: int = 0


def channel_infos(
    engine: Engine, directory: Path, hub: HubView, only: str | None = None
) -> list[dict[str, Any]]:
    """Every channel (or just ``only``), sorted by name; see the module doc."""
    files: dict[str, FileSummary] = {}
    for summary in scan(directory):
        files.setdefault(summary.name, summary)  # a duplicate name: the first file counts
    counts = _message_counts(engine, only)
    queues = _queue_stats(engine, only)
    names = files.keys() | hub.deployed.keys() | counts.keys()
    if only is not None:
        names &= {only}
    return [
        _info(name, files.get(name), hub, counts.get(name, {}), queues.get(name, {}))
        for name in sorted(names)
    ]


def _info(
    name: str,
    summary: FileSummary | None,
    hub: HubView,
    counts: dict[str, int],
    queues: dict[str, _QueueStats],
) -> dict[str, Any]:
    channel = hub.deployed.get(name)
    data = summary.data if summary is not None else None
    if channel is not None:
        source_type: Any = channel.file.source.get("type")
        description: Any = channel.file.description
        configured = [
            {"name": d.spec.name, "type": d.spec.type, "enabled": d.spec.enabled}
            for d in channel.destinations
        ]
    else:
        source_type, description, configured = _from_file(data)
    if data is not None:
        enabled = bool(data.get("enabled", True))
    else:
        enabled = channel.file.enabled if channel is not None else False
    return {
        "name": name,
        "file": summary.path.name if summary is not None else None,
        "state": hub.states.get(name, "undeployed"),
        "enabled": enabled,
        "source_type": source_type if isinstance(source_type, str) else None,
        "description": description if isinstance(description, str) and description else None,
        "destinations": _with_queues(configured, queues),
        "counts": counts,
    }


def _from_file(data: dict[str, Any] | None) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Source type, description and destinations as written (the file may be invalid)."""
    if data is None:
        return None, None, []
    source = data.get("source")
    raw = data.get("destinations")
    destinations = [
        {
            "name": str(d.get("name")),
            "type": d.get("type") if isinstance(d.get("type"), str) else None,
            "enabled": bool(d.get("enabled", True)),
        }
        for d in (raw if isinstance(raw, list) else [])
        if isinstance(d, dict) and d.get("name") is not None
    ]
    return (
        (source.get("type") if isinstance(source, dict) else None),
        data.get("description"),
        (destinations),
    )


def _with_queues(
    configured: list[dict[str, Any]], queues: dict[str, _QueueStats]
) -> list[dict[str, Any]]:
    """Each destination with its queue; one no longer configured but with entries is kept."""
    names = {d["name"] for d in configured}
    leftover = [
        {"name": name, "type": None, "enabled": False} for name in sorted(queues.keys() - names)
    ]
    result = []
    for destination in [*configured, *leftover]:
        stats = queues.get(destination["name"], _QueueStats())
        result.append(
            {
                **destination,
                "queue_depth": stats.depth,
                "oldest_queued_at": stats.oldest.isoformat() if stats.oldest else None,
                "errored": stats.errored,
            }
        )
    return result


def _message_counts(engine: Engine, only: str | None) -> dict[str, dict[str, int]]:
    query = select(messages.c.channel, messages.c.status, func.count()).group_by(
        messages.c.channel, messages.c.status
    )
    if only is not None:
        query = query.where(messages.c.channel == only)
    counts: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for channel, status, count in conn.execute(query):
            counts.setdefault(channel, {})[status] = int(count)
    return counts


def _queue_stats(engine: Engine, only: str | None) -> dict[str, dict[str, _QueueStats]]:
    q = queue_entries.c
    query = (
        select(q.channel, q.destination, q.status, func.count(), func.min(q.created_at))
        .where(q.status.in_([_QUEUED, _ERROR]))
        .group_by(q.channel, q.destination, q.status)
    )
    if only is not None:
        query = query.where(q.channel == only)
    stats: dict[str, dict[str, _QueueStats]] = {}
    with engine.connect() as conn:
        for channel, destination, status, count, oldest in conn.execute(query):
            entry = stats.setdefault(channel, {}).setdefault(destination, _QueueStats())
            if status == _QUEUED:
                entry.depth, entry.oldest = int(count), _utc(oldest)
            else:
                entry.errored = int(count)
    return stats


def _utc(value: Any) -> datetime | None:
    """SQLite gives naive datetimes back; everything stored is UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
