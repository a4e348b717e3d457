"""Channel lifecycle: deploy, start, pause, stop, undeploy (as in Mirth), one at a time.

States of a channel:

* **started** — its source takes messages, its destination workers deliver.
* **paused** — the source is stopped (listener closed, DICOM AE no longer served,
  forwards from other channels fail and are retried by their queues); the
  destination workers keep delivering what is queued.
* **stopped** — source and workers stopped; queued entries stay in the store and
  are delivered after the next start.
* **undeployed** — not running at all (its file may still be in the channels folder).

A source is never restarted: every start builds a new one from the channel's
config (connectors are not all written to be started twice). Workers are
rebuilt the same way, with new destination connectors.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum

from connectors.base import Source
from connectors.mllp import MLLPSource
from engine import registry
from engine.channel_files import find_file, load_validated
from engine.config import Channel
from engine.datatypes import datatype_for
from engine.errors import EngineError
from engine.pipeline import ChannelRuntime
from engine.queue_lanes import new_worker
from engine.services import Services

__all__ = ["ChannelControl", "ChannelState", "ChannelStateError", "UnknownChannel"]

log = logging.getLogger(__name__)


class ChannelState(StrEnum):
    """Where a channel stands (see the module doc)."""

    STARTED = "started"
    PAUSED = "paused"
    STOPPED = "stopped"
    UNDEPLOYED = "undeployed"


class ChannelStateError(EngineError):
    """The action is not possible in the channel's current state."""


class UnknownChannel(EngineError):  # noqa: N818 - reads as "unknown channel: x"
    """No channel file declares this name."""


@dataclass(eq=False)
class Deployment:
    """A deployed channel: its runtime (with its workers), its source while it runs."""

    channel: Channel
    runtime: ChannelRuntime
    state: ChannelState
    source: Source | None = field(default=None)


class ChannelControl:
    """Deploys and drives the channels of one hub; every action holds one lock."""

    def __init__(self, services: Services, pool: ThreadPoolExecutor) -> None:
        self._services = services
        self._pool = pool
        self._lock = asyncio.Lock()
        self._deployments: dict[str, Deployment] = {}

    # -- views ---------------------------------------------------------------------

    def state(self, name: str) -> ChannelState:
        """The state of channel ``name`` (undeployed if unknown)."""
        deployment = self._deployments.get(name)
        return deployment.state if deployment is not None else ChannelState.UNDEPLOYED

    def deployed(self) -> dict[str, Channel]:
        """The deployed channels (started, paused or stopped) by name."""
        return {name: d.channel for name, d in self._deployments.items()}

    def runtimes(self) -> dict[str, ChannelRuntime]:
        """The runtimes of the deployed channels by name."""
        return {name: d.runtime for name, d in self._deployments.items()}

    def sources(self) -> dict[str, Source]:
        """The running sources (started channels) by name."""
        return {n: d.source for n, d in self._deployments.items() if d.source is not None}

    # -- actions -------------------------------------------------------------------

    async def deploy_all(self, channels: list[Channel]) -> None:
        """Deploy and start ``channels`` (the hub's start); the first failure raises."""
        async with self._lock:
            self._services.ai_models.update(
                {d.spec.ai.model: d.spec.ai for c in channels for d in c.destinations if d.spec.ai}
            )
            for channel in channels:
                await self._deploy(channel)

    async def deploy(self, name: str) -> Channel:
        """Re-read and validate the file of ``name``, replace the running version, start it.

        Raises :class:`UnknownChannel`, :class:`~engine.channel_files.ChannelValidationError`
        (the running version is left alone), :class:`ChannelStateError` for a file
        with ``enabled: false``, or the error of a new version that cannot start (a port
        or AE title in use): the previous version is then put back as it was.
        """
        async with self._lock:
            directory = self._services.settings.channels_dir
            path = await asyncio.to_thread(find_file, directory, name)
            if path is None:
                raise UnknownChannel(f"no file in the channels folder defines channel {name}")
            channel = await asyncio.to_thread(
                load_validated, path, templates=self._services.templates, directory=directory
            )
            if not channel.file.enabled:
                raise ChannelStateError(f"channel {name} is disabled (enabled: false in its file)")
            previous = self._deployments.get(name)
            if previous is not None:
                await self._undeploy(name)
            self._services.ai_models.update(
                {d.spec.ai.model: d.spec.ai for d in channel.destinations if d.spec.ai}
            )
            try:
                await self._deploy(channel)
            except EngineError:
                if previous is not None:
                    await self._restore(previous)
                raise
            return channel

    async def undeploy(self, name: str) -> None:
        """Stop channel ``name`` and forget it; its queued entries stay in the store."""
        async with self._lock:
            self._require(name, ChannelState.STARTED, ChannelState.PAUSED, ChannelState.STOPPED)
            await self._undeploy(name)

    async def start(self, name: str) -> None:
        """Resume a paused or stopped channel (new source; new workers if stopped)."""
        async with self._lock:
            deployment = self._require(name, ChannelState.PAUSED, ChannelState.STOPPED)
            stopped = deployment.state is ChannelState.STOPPED
            if stopped:
                self._start_workers(deployment)
            try:
                await self._start_source(deployment)
            except BaseException:
                if stopped:
                    await self._stop_workers(deployment)
                raise
            deployment.state = ChannelState.STARTED
            log.info("channel %s started", name)

    async def pause(self, name: str) -> None:
        """Stop taking messages; queued deliveries go on."""
        async with self._lock:
            deployment = self._require(name, ChannelState.STARTED)
            await self._stop_source(deployment)
            deployment.state = ChannelState.PAUSED
            log.info("channel %s paused", name)

    async def stop(self, name: str) -> None:
        """Stop taking messages and stop delivering; queued entries wait for the next start."""
        async with self._lock:
            deployment = self._require(name, ChannelState.STARTED, ChannelState.PAUSED)
            await self._stop_source(deployment)
            await self._stop_workers(deployment)
            deployment.state = ChannelState.STOPPED
            log.info("channel %s stopped", name)

    async def stop_all(self) -> None:
        """The hub's stop: every source first (no new work), then every worker."""
        async with self._lock:
            for deployment in self._deployments.values():
                await self._stop_source(deployment)
            for deployment in self._deployments.values():
                await self._stop_workers(deployment)

    # -- steps ---------------------------------------------------------------------

    def _require(self, name: str, *states: ChannelState) -> Deployment:
        deployment = self._deployments.get(name)
        current = deployment.state if deployment is not None else ChannelState.UNDEPLOYED
        if deployment is None or current not in states:
            raise ChannelStateError(f"channel {name} is {current}")
        return deployment

    async def _deploy(self, channel: Channel) -> None:
        services = self._services
        runtime = ChannelRuntime(channel, services, self._pool, datatype_for(channel, services))
        deployment = Deployment(channel, runtime, ChannelState.STOPPED)
        self._start_workers(deployment)
        try:
            await self._start_source(deployment)
        except BaseException:
            await self._stop_workers(deployment)
            raise
        deployment.state = ChannelState.STARTED
        self._deployments[channel.name] = deployment
        log.info("channel %s deployed", channel.name)

    async def _restore(self, previous: Deployment) -> None:
        """Put back the version a failed redeploy replaced, in the state it was in."""
        name = previous.channel.name
        try:
            await self._deploy(previous.channel)
            deployment = self._deployments[name]
            if previous.state is not ChannelState.STARTED:
                await self._stop_source(deployment)
                deployment.state = ChannelState.PAUSED
            if previous.state is ChannelState.STOPPED:
                await self._stop_workers(deployment)
                deployment.state = ChannelState.STOPPED
        except EngineError as exc:
            log.error("channel %s: the previous version cannot be restored: %s", name, exc)
            return
        log.warning("channel %s: new version failed to start; previous version restored", name)

    async def _undeploy(self, name: str) -> None:
        deployment = self._deployments[name]
        await self._stop_source(deployment)
        await self._stop_workers(deployment)
        del self._deployments[name]
        log.info("channel %s undeployed", name)

    def _start_workers(self, deployment: Deployment) -> None:
        channel, services = deployment.channel, self._services
        enabled = [d for d in channel.destinations if d.spec.enabled]
        # Every connector is built before any worker starts: a factory that fails
        # (a config only checkable here) leaves no worker running behind it. One
        # connector per delivery lane: each lane has its own connection.
        connectors = [
            [
                registry.factory("destination", d.spec.type)(
                    d.connector, services, d.spec, channel=channel.name
                )
                for _ in range(d.spec.queue.workers)
            ]
            for d in enabled
        ]
        workers = []
        for destination, lane_connectors in zip(enabled, connectors, strict=True):
            worker = new_worker(
                destination.spec.queue,
                channel=channel.name,
                destination=destination.spec.name,
                connectors=lane_connectors,
                retry=destination.spec.retry,
                ai=destination.spec.ai,
                engine=services.engine,
                committer=services.committer,
                claimer=services.claimer,
            )
            worker.start()
            workers.append(worker)
        # A new list, not a mutation: pipeline threads iterate it to wake the workers.
        deployment.runtime.workers = workers

    async def _stop_workers(self, deployment: Deployment) -> None:
        workers, deployment.runtime.workers = deployment.runtime.workers, []
        for worker in workers:
            await worker.stop()

    async def _start_source(self, deployment: Deployment) -> None:
        channel, runtime = deployment.channel, deployment.runtime
        source: Source = registry.factory("source", channel.file.source["type"])(
            channel.source, self._services, channel=channel.name
        )
        # Registered before its source starts: other channels may forward to it.
        self._services.channels[channel.name] = runtime
        try:
            if isinstance(source, MLLPSource):
                await source.start(runtime.handle, on_oversize=runtime.handle_oversize)
            else:
                await source.start(runtime.handle)
        except BaseException:
            self._services.channels.pop(channel.name, None)
            raise
        deployment.source = source

    async def _stop_source(self, deployment: Deployment) -> None:
        # Forwards from other channels now fail (RecoverableError): their queues retry.
        self._services.channels.pop(deployment.channel.name, None)
        source, deployment.source = deployment.source, None
        if source is not None:
            await source.stop()
            log.info("channel %s: source stopped", deployment.channel.name)
