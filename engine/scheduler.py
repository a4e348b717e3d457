"""The hub's scheduled maintenance jobs (APScheduler 3): retention pruning and alert checks.

The jobs run as coroutines in the hub's event loop; their store reads go to a
thread and their writes to the store writer, so the loop is never blocked.
A job that fails is logged and runs again at its next time; one run at a time
per job (a slow prune is never doubled), and missed runs are coalesced.
With a ``leadership``, a run on a node that is not the leader is skipped, so
the jobs run on one node when several share a store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from engine.alert_tables import create_tables
from engine.alerting import AlertJob
from engine.config import ChannelFile, HubSettings
from engine.errors import EngineError
from engine.leadership import JobLeadership
from engine.retention import RetentionJob
from engine.store.group_commit import GroupCommitter

__all__ = ["HubScheduler"]

log = logging.getLogger(__name__)


class HubScheduler:
    """Owns an AsyncIOScheduler running :class:`RetentionJob` and :class:`AlertJob`."""

    def __init__(
        self,
        engine: Engine,
        committer: GroupCommitter,
        settings: HubSettings,
        channels: Callable[[], Iterable[ChannelFile]],
        leadership: JobLeadership | None = None,
    ) -> None:
        self._engine = engine
        self._leadership = leadership
        self.retention = RetentionJob(committer, settings.retention, channels)
        self.alerts = AlertJob(engine, committer, settings.alerts)
        self._intervals = {
            "retention": settings.retention.prune_every_minutes,
            "alerts": settings.alerts.check_every_minutes,
        }
        self._scheduler: AsyncIOScheduler | None = None
        self._running: set[asyncio.Task[object]] = set()
        #: Completed runs per job (failed ones included): what tests and status pages watch.
        self.runs: dict[str, int] = {"retention": 0, "alerts": 0}
        #: Runs skipped because another node leads (see engine/leadership.py).
        self.skipped: dict[str, int] = {"retention": 0, "alerts": 0}

    async def start(self) -> None:
        """Create missing tables and start the jobs (first runs one interval from now)."""
        await asyncio.to_thread(create_tables, self._engine)
        # APScheduler logs two INFO lines per run; the jobs log what they did themselves.
        logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
        scheduler = AsyncIOScheduler(timezone=UTC)
        jobs: dict[str, Callable[[], Awaitable[object]]] = {
            "retention": self.retention.run_once,
            "alerts": self.alerts.run_once,
        }
        start = datetime.now(UTC)
        for name, step in jobs.items():
            minutes = self._intervals[name]
            scheduler.add_job(
                self._guarded,
                IntervalTrigger(minutes=minutes, start_date=start),
                args=[name, step],
                id=name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                next_run_time=start + timedelta(minutes=minutes),
            )
        scheduler.start()
        self._scheduler = scheduler
        log.info(
            "scheduler started: retention every %g min, alert checks every %g min",
            self._intervals["retention"],
            self._intervals["alerts"],
        )

    async def stop(self) -> None:
        """Stop scheduling; let a run in progress finish its current batch."""
        self.retention.stop()
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _guarded(self, name: str, step: Callable[[], Awaitable[object]]) -> None:
        if self._leadership is not None and not await self._leadership.is_leader():
            log.debug("%s job skipped: another node leads", name)
            self.skipped[name] += 1
            return
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await step()
        except Exception as exc:
            # Our own errors carry no PHI; a library's text may quote values, so only its type.
            text = str(exc) if isinstance(exc, EngineError) else "details not logged"
            log.error("%s job failed: %s (%s)", name, type(exc).__name__, text)
        finally:
            self.runs[name] += 1
            if task is not None:
                self._running.discard(task)
