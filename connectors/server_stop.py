"""The graceful stop shared by the hub's asyncio listeners (MLLP, HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from typing import Any, Protocol

__all__ = ["CLOSE_TIMEOUT", "TrackedConnection", "stop_gracefully"]

log = logging.getLogger(__name__)

#: A TLS peer that never answers close_notify must not stall a stop.
CLOSE_TIMEOUT = 2.0


class TrackedConnection(Protocol):
    """A connection a listener keeps: its task, and whether a message is in flight."""

    task: asyncio.Task[Any] | None
    busy: bool


async def stop_gracefully(
    server: asyncio.Server,
    connections: Collection[TrackedConnection],
    *,
    timeout: float,
    what: str,
) -> None:
    """Stop accepting; cancel idle connections; let busy ones finish within ``timeout``."""
    server.close()
    for conn in list(connections):
        if not conn.busy and conn.task is not None:
            conn.task.cancel()  # waiting for data: nothing in flight
    tasks = [conn.task for conn in connections if conn.task is not None]
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            log.warning("%s stop: a message still in progress after the timeout", what)
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=CLOSE_TIMEOUT)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await server.wait_closed()
