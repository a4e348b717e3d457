"""The hub: one process running every deployed channel, the store and the DICOM listener."""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine

from admin.server import AdminServer
from connectors.base import Source
from connectors.dicom_mpps import MPPSService
from connectors.dicom_mwl import MWLServer
from connectors.dicom_store import StorageService
from engine.ai_timeouts import AITimeoutMonitor
from engine.archive import Archive
from engine.channel_control import ChannelControl, ChannelState, ChannelStateError
from engine.channel_sync import POLL_SECONDS as CHANNEL_STATE_POLL_SECONDS
from engine.channel_sync import ChannelSync
from engine.cluster_nodes import APPLICATION_PREFIX, node_id
from engine.config import Channel, HubSettings
from engine.deid import Deidentifier
from engine.leadership import JobLeadership
from engine.mpps import MPPSStore
from engine.periodic import PeriodicTask
from engine.pipeline import ChannelRuntime
from engine.reading_worklist import ReadingWorklist, Reprioritizer
from engine.scheduler import HubScheduler
from engine.services import Services
from engine.store.db import open_engine
from engine.store.group_commit import GroupCommitter
from engine.store.queue_claims import QueueClaimer
from engine.templating import TemplateEnvironment
from engine.worklist import WorklistStore

__all__ = ["Hub"]

log = logging.getLogger(__name__)


class Hub:
    """Starts and stops everything ``meridian serve`` runs, in the right order.

    Once started, the channels are driven through the lifecycle methods
    (:meth:`deploy_channel`, :meth:`pause_channel`...), which run in the hub's loop.
    """

    def __init__(self, settings: HubSettings, channels: list[Channel]) -> None:
        self.settings = settings
        self._initial = [c for c in channels if c.file.enabled]
        self.control: ChannelControl | None = None
        self.mwl: MWLServer | None = None
        self._engine: Engine | None = None
        self._committer: GroupCommitter | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.services: Services | None = None
        self._periodic: list[AITimeoutMonitor | Reprioritizer] = []
        self._lease_keeper: PeriodicTask | None = None
        self._state_follower: PeriodicTask | None = None
        #: Records channel actions in the store; every node follows them.
        self.channel_sync: ChannelSync | None = None
        self.scheduler: HubScheduler | None = None
        #: One node runs the periodic jobs when several share a PostgreSQL store.
        self.leadership: JobLeadership | None = None
        self.admin: AdminServer | None = None
        #: This process's id among the nodes sharing the store (see engine.cluster_nodes).
        self.node_id = node_id(settings)

    @property
    def channels(self) -> list[Channel]:
        """The deployed channels (before the start: the enabled channels it will deploy)."""
        if self.control is None:
            return list(self._initial)
        return list(self.control.deployed().values())

    @property
    def runtimes(self) -> dict[str, ChannelRuntime]:
        """The runtimes of the deployed channels, by name."""
        return self.control.runtimes() if self.control is not None else {}

    @property
    def sources(self) -> dict[str, Source]:
        """The running sources (started channels), by name."""
        return self.control.sources() if self.control is not None else {}

    async def start(self) -> None:
        """Open the store, deploy every enabled channel, start the DICOM listener."""
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._engine = await asyncio.to_thread(
            functools.partial(
                open_engine,
                settings.resolved_db_url(),
                application_name=f"{APPLICATION_PREFIX}{self.node_id}",
            )
        )
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
        self.leadership = JobLeadership(self._engine)
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
            claimer=self._start_claims(self._engine),
            leadership=self.leadership,
        )
        self._pool = ThreadPoolExecutor(settings.pipeline_threads, thread_name_prefix="pipeline")
        self.control = ChannelControl(self.services, self._pool)
        await self.control.deploy_all(self._initial)
        await self._follow_channel_states(self.control)
        await asyncio.to_thread(self.mwl.start)
        self._start_periodic(self.services)
        # Retention and alert checks (APScheduler); the channels are read at each run.
        self.scheduler = HubScheduler(
            self._engine,
            self._committer,
            settings,
            lambda: [c.file for c in self.channels],
            self.leadership,
        )
        await self.scheduler.start()
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

    async def _follow_channel_states(self, control: ChannelControl) -> None:
        """Channels as the analysts left them (store), then follow changes made elsewhere."""
        assert self._engine is not None and self._committer is not None
        sync = ChannelSync(self._engine, self._committer, control, self.node_id)
        await sync.adopt(await asyncio.to_thread(sync.read))

        async def follow() -> None:
            await sync.apply(await asyncio.to_thread(sync.read))

        self.channel_sync = sync
        self._state_follower = PeriodicTask("channel-states", CHANNEL_STATE_POLL_SECONDS, follow)
        self._state_follower.start()

    def _start_claims(self, engine: Engine) -> QueueClaimer | None:
        """On PostgreSQL, this node's queue claims and the task renewing their leases."""
        if engine.dialect.name != "postgresql":
            return None  # SQLite: one node, nothing to share
        cluster = self.settings.cluster
        node = self.node_id
        claimer = QueueClaimer(node, cluster.lease_seconds)

        async def renew() -> None:
            await asyncio.to_thread(claimer.renew, engine)

        # A third of the lease: two renewals may fail (a slow store) before it runs out.
        self._lease_keeper = PeriodicTask("queue-leases", cluster.lease_seconds / 3, renew)
        self._lease_keeper.start()
        log.info("queue claims as node %s (lease %.0fs)", node, cluster.lease_seconds)
        return claimer

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
            job.leadership = self.leadership
            job.start()

    # -- channel lifecycle (the admin API calls these in the hub's loop) ---------------

    def _control(self) -> ChannelControl:
        if self.control is None:
            raise ChannelStateError("the hub is not running")
        return self.control

    def channel_state(self, name: str) -> ChannelState:
        """started, paused, stopped or undeployed."""
        return self.control.state(name) if self.control is not None else ChannelState.UNDEPLOYED

    async def deploy_channel(self, name: str) -> Channel:
        """Re-read and validate the channel's file, replace the running version and start it.

        Like every action below it is recorded in the store: the other nodes follow it
        and a restarted hub comes back to it.
        """
        channel = await self._control().deploy(name)
        await self._record(name, ChannelState.STARTED, redeployed=True)
        return channel

    async def undeploy_channel(self, name: str) -> None:
        """Stop the channel and forget it (its queued entries stay in the store)."""
        await self._control().undeploy(name)
        await self._record(name, ChannelState.UNDEPLOYED)

    async def start_channel(self, name: str) -> None:
        """Resume a paused or stopped channel."""
        await self._control().start(name)
        await self._record(name, ChannelState.STARTED)

    async def pause_channel(self, name: str) -> None:
        """Stop taking messages; destinations keep delivering."""
        await self._control().pause(name)
        await self._record(name, ChannelState.PAUSED)

    async def stop_channel(self, name: str) -> None:
        """Stop taking messages and delivering; queued entries wait for the next start."""
        await self._control().stop(name)
        await self._record(name, ChannelState.STOPPED)

    async def _record(self, name: str, state: ChannelState, *, redeployed: bool = False) -> None:
        if self.channel_sync is not None:
            await self.channel_sync.record(name, state, redeployed=redeployed)

    async def stop(self) -> None:
        """Stop listening, finish in-flight messages and deliveries, close the store."""
        if self.admin is not None:
            await self.admin.stop()
        if self._state_follower is not None:
            await self._state_follower.stop()
        if self.control is not None:
            await self.control.stop_all()  # each destination worker gives its claims back
        if self._lease_keeper is not None:
            await self._lease_keeper.stop()
        for job in self._periodic:
            await job.stop()
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.leadership is not None:
            await self.leadership.release()
        if self.mwl is not None:
            await asyncio.to_thread(self.mwl.stop)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._committer is not None:
            await asyncio.to_thread(self._committer.stop)
        if self._engine is not None:
            self._engine.dispose()
        log.info("hub stopped")
