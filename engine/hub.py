"""The hub: one process running every deployed channel, the store and the DICOM listener."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine

from admin.server import AdminServer
from connectors.base import Source
from connectors.dicom_mpps import MPPSService
from connectors.dicom_mwl import MWLServer
from connectors.dicom_store import StorageService
from connectors.mllp import MLLPSource
from engine import registry
from engine.ai_timeouts import AITimeoutMonitor
from engine.archive import Archive
from engine.config import Channel, HubSettings
from engine.datatypes import datatype_for
from engine.deid import Deidentifier
from engine.mpps import MPPSStore
from engine.pipeline import ChannelRuntime
from engine.queue import DestinationWorker
from engine.reading_worklist import ReadingWorklist, Reprioritizer
from engine.services import Services
from engine.store.db import open_engine
from engine.store.group_commit import GroupCommitter
from engine.templating import TemplateEnvironment
from engine.worklist import WorklistStore

__all__ = ["Hub"]

log = logging.getLogger(__name__)


class Hub:
    """Starts and stops everything ``meridian serve`` runs, in the right order."""

    def __init__(self, settings: HubSettings, channels: list[Channel]) -> None:
        self.settings = settings
        self.channels = [c for c in channels if c.file.enabled]
        self.sources: dict[str, Any] = {}
        self.runtimes: dict[str, ChannelRuntime] = {}
        self.mwl: MWLServer | None = None
        self._engine: Engine | None = None
        self._committer: GroupCommitter | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.services: Services | None = None
        self._periodic: list[AITimeoutMonitor | Reprioritizer] = []
        self.admin: AdminServer | None = None

    async def start(self) -> None:
        """Open the store, deploy every enabled channel, start the DICOM listener."""
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._engine = await asyncio.to_thread(open_engine, settings.resolved_db_url())
        self._committer = GroupCommitter(self._engine)
        self._committer.start()
        worklist = WorklistStore(self._engine)
        templates = TemplateEnvironment(
            settings.resolved_transforms_dir(), uid_root=settings.uid_root
        )
        archive = Archive(settings.data_dir / "archive", self._engine, self._committer)
        storage = StorageService(archive)
        self.mwl = MWLServer(settings.dicom, worklist)
        # One AE, one port: the worklist, storage and MPPS SCPs share the listener.
        self.mwl.listener.add_service(storage)
        mpps = MPPSService(
            MPPSStore(self._engine, worklist), self._committer, uid_root=settings.uid_root
        )
        self.mwl.listener.add_service(mpps)
        self.services = Services(
            settings=settings,
            engine=self._engine,
            committer=self._committer,
            worklist=worklist,
            templates=templates,
            archive=archive,
            storage=storage,
            deid=Deidentifier(self._engine),
            reading_worklist=ReadingWorklist(self._engine, settings.reading_worklist),
            mpps=mpps,
        )
        self._pool = ThreadPoolExecutor(settings.pipeline_threads, thread_name_prefix="pipeline")
        self.services.ai_models.update(
            {d.spec.ai.model: d.spec.ai for c in self.channels for d in c.destinations if d.spec.ai}
        )
        for channel in self.channels:
            await self._deploy(channel, self.services, self._pool)
        await asyncio.to_thread(self.mwl.start)
        self._start_periodic(self.services)
        self.admin = AdminServer(self.services, self, settings.admin)
        await self.admin.start()
        assert self.mwl is not None
        log.info(
            "hub started: %d channel(s), DICOM AE %s on port %d, store %s",
            len(self.channels),
            settings.dicom.ae_title,
            self.mwl.bound_port,
            self._engine.dialect.name,
        )

    def _start_periodic(self, services: Services) -> None:
        """AI timeouts and reading-worklist aging: background checks, never in a hot path."""
        settings = self.settings
        self._periodic = [
            AITimeoutMonitor(
                services.engine,
                services.committer,
                services.ai_models,
                settings.ai_timeout_check_seconds,
            ),
            Reprioritizer(
                services.reading_worklist, services.committer, settings.reprioritize_seconds
            ),
        ]
        for job in self._periodic:
            job.start()

    async def _deploy(self, channel: Channel, services: Services, pool: ThreadPoolExecutor) -> None:
        runtime = ChannelRuntime(channel, services, pool, datatype_for(channel, services))
        for destination in channel.destinations:
            if not destination.spec.enabled:
                continue
            make = registry.factory("destination", destination.spec.type)
            worker = DestinationWorker(
                channel.name,
                destination.spec.name,
                connector=make(
                    destination.connector, services, destination.spec, channel=channel.name
                ),
                retry=destination.spec.retry,
                ai=destination.spec.ai,
                engine=services.engine,
                committer=services.committer,
            )
            worker.start()
            runtime.workers.append(worker)
        source: Source = registry.factory("source", channel.file.source["type"])(
            channel.source, services, channel=channel.name
        )
        # Registered before its source starts: other channels may forward to it.
        services.channels[channel.name] = runtime
        self.runtimes[channel.name] = runtime
        if isinstance(source, MLLPSource):
            await source.start(runtime.handle, on_oversize=runtime.handle_oversize)
        else:
            await source.start(runtime.handle)
        self.sources[channel.name] = source
        log.info("channel %s deployed", channel.name)

    async def stop(self) -> None:
        """Stop listening, finish in-flight messages and deliveries, close the store."""
        if self.admin is not None:
            await self.admin.stop()
        for name, source in self.sources.items():
            await source.stop()
            log.info("channel %s: source stopped", name)
        for runtime in self.runtimes.values():
            for worker in runtime.workers:
                await worker.stop()
        for job in self._periodic:
            await job.stop()
        if self.mwl is not None:
            await asyncio.to_thread(self.mwl.stop)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._committer is not None:
            await asyncio.to_thread(self._committer.stop)
        if self._engine is not None:
            self._engine.dispose()
        log.info("hub stopped")
