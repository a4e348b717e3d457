"""Channel state kept in the store: the same on every node, and across restarts.

An analyst's pause, stop, start, redeploy or undeploy (admin API) acts on the
node that got the request and is recorded in ``channel_states``. Every node
polls that table (:data:`POLL_SECONDS`) and brings its own channels to the
recorded state, so a pause through a load balancer pauses the channel on every
node, and a hub that restarts comes back with its channels as they were left.

A redeploy increments the channel's ``generation``; a node whose deployed
generation is older re-reads the channel file from its own channels folder
(which must be the same on every node: the files live in Git) and redeploys.
A channel with no row is as its file says (started if enabled). An action that
fails on a node (its file is invalid there, a port is taken) is logged once and
not retried until the recorded state changes again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, insert, select, update

from engine.channel_control import ChannelState
from engine.errors import EngineError
from engine.store.group_commit import GroupCommitter
from engine.store.tables import channel_states

if TYPE_CHECKING:
    from engine.channel_control import ChannelControl

__all__ = ["POLL_SECONDS", "ChannelSync", "RecordedState"]

log = logging.getLogger(__name__)

#: How often a node looks for state changes made through another node.
POLL_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class RecordedState:
    """What the cluster agreed a channel should be."""

    state: ChannelState
    generation: int


class ChannelSync:
    """Records this node's channel actions and applies the ones other nodes recorded."""

    def __init__(
        self, engine: Engine, committer: GroupCommitter, control: ChannelControl, node: str
    ) -> None:
        self._engine = engine
        self._committer = committer
        self._control = control
        self._node = node
        self._applied: dict[str, RecordedState] = {}
        # The generation each deployed channel runs (0: its file as deployed at start).
        self._generations: dict[str, int] = {}

    # -- what this node did -------------------------------------------------------------

    async def record(self, channel: str, state: ChannelState, *, redeployed: bool = False) -> None:
        """Record an action taken here (after it succeeded) for every node to follow."""
        generation = await self._committer.run_async(
            _record_op(channel, state, redeployed, self._node)
        )
        recorded = RecordedState(state, generation)
        self._applied[channel] = recorded
        self._generations[channel] = generation

    # -- what the others did ------------------------------------------------------------

    def read(self) -> dict[str, RecordedState]:
        """The recorded state of every channel that has one."""
        with self._engine.connect() as conn:
            c = channel_states.c
            rows = conn.execute(select(c.channel, c.state, c.generation)).all()
        return {row.channel: RecordedState(ChannelState(row.state), row.generation) for row in rows}

    async def adopt(self, recorded: dict[str, RecordedState]) -> None:
        """At start, after the enabled channels were deployed: take the recorded states.

        The freshly deployed channels run their files as of now, so they count as
        the recorded generation (no redeploy); only their states are applied.
        """
        for channel, wanted in recorded.items():
            if self._control.state(channel) is not ChannelState.UNDEPLOYED:
                self._generations[channel] = wanted.generation
        await self.apply(recorded)

    async def apply(self, recorded: dict[str, RecordedState]) -> None:
        """Bring each recorded channel to its state here; each change is tried once."""
        for channel, wanted in recorded.items():
            if self._applied.get(channel) == wanted:
                continue
            self._applied[channel] = wanted  # tried once per recorded change
            try:
                await self._bring(channel, wanted)
            except EngineError as exc:
                log.error(
                    "channel %s: cannot follow the cluster to %s (generation %d): %s",
                    channel,
                    wanted.state,
                    wanted.generation,
                    exc,
                )

    async def _bring(self, channel: str, wanted: RecordedState) -> None:
        control = self._control
        current = control.state(channel)
        if wanted.state is ChannelState.UNDEPLOYED:
            if current is not ChannelState.UNDEPLOYED:
                await control.undeploy(channel)
                log.info("channel %s undeployed (recorded by another node)", channel)
            return
        stale = self._generations.get(channel, 0) < wanted.generation
        if current is ChannelState.UNDEPLOYED or stale:
            await control.deploy(channel)
            self._generations[channel] = wanted.generation
            log.info("channel %s deployed (generation %d)", channel, wanted.generation)
            current = ChannelState.STARTED
        await _move(control, channel, current, wanted.state)


async def _move(
    control: ChannelControl, channel: str, current: ChannelState, wanted: ChannelState
) -> None:
    """From a deployed state to another (started, paused, stopped)."""
    if current is wanted:
        return
    actions: dict[ChannelState, Callable[[str], Awaitable[None]]] = {
        ChannelState.STARTED: control.start,
        ChannelState.PAUSED: control.pause,
        ChannelState.STOPPED: control.stop,
    }
    if current is ChannelState.STOPPED and wanted is ChannelState.PAUSED:
        await control.start(channel)  # paused = delivering without a source
    await actions[wanted](channel)
    log.info("channel %s %s (recorded by another node)", channel, wanted)


def _record_op(
    channel: str, state: ChannelState, redeployed: bool, node: str
) -> Callable[[Connection], int]:
    def op(conn: Connection) -> int:
        values = {"state": state.value, "changed_at": datetime.now(UTC), "changed_on": node}
        bump = 1 if redeployed else 0
        row = conn.execute(
            update(channel_states)
            .where(channel_states.c.channel == channel)
            .values(generation=channel_states.c.generation + bump, **values)
            .returning(channel_states.c.generation)
        ).first()
        if row is not None:
            return int(row.generation)
        conn.execute(insert(channel_states).values(channel=channel, generation=bump, **values))
        return bump

    return op
