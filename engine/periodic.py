"""A small asyncio task that runs one step every few seconds until stopped.

Used by the jobs that watch the store (AI timeouts, reading worklist
reprioritization). A failing step is logged and tried again at the next tick:
a database that is briefly away must not end the job. With ``leadership`` set,
a tick on a node that is not the leader is skipped (several nodes, one store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from engine.errors import EngineError
from engine.leadership import JobLeadership

__all__ = ["PeriodicTask"]

log = logging.getLogger(__name__)


class PeriodicTask:
    """Runs ``step`` now and then every ``interval_seconds`` (from the end of the previous run)."""

    def __init__(
        self, name: str, interval_seconds: float, step: Callable[[], Awaitable[object]]
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        self.name = name
        self._interval = interval_seconds
        self._step = step
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Set by the hub before start(): ticks run only while this node leads.
        self.leadership: JobLeadership | None = None

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._task is not None

    def start(self) -> None:
        """Start the loop (call from the event loop); starting twice does nothing."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Stop after the step in progress (if any) has finished."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        await task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self.leadership is None or await self.leadership.is_leader():
                    await self._step()
                else:
                    log.debug("%s: skipped, another node leads", self.name)
            except Exception as exc:
                # Our own errors carry no PHI; a library's text may quote values, so only its type.
                text = str(exc) if isinstance(exc, EngineError) else "details not logged"
                log.error("%s: step failed: %s (%s)", self.name, type(exc).__name__, text)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
