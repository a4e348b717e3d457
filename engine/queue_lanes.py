"""Parallel delivery lanes for one destination, in order per key.

With ``queue.workers`` > 1 a destination's entries are delivered by that many
lanes at once. Every entry carries an order key (set when it was queued, by
default the patient ID): entries with the same key are delivered in arrival
order, entries of different keys in parallel. Only the *head* of a key (its
oldest QUEUED entry) is ever delivered, and a key is held by one lane at a
time, so an entry is delivered by exactly one lane and a key whose head is
waiting for a retry holds only that key: the others go on.

One dispatcher claims heads (:func:`~engine.store.messages.queue_heads`) for
the free lanes; a lane that delivered a head goes on with the next entry of the
same key (a cheap indexed read) for up to :data:`TURN` entries, then gives the
key back so a long backlog of one key cannot keep a lane from the others.
On one node the claims are held in memory; with several nodes on one
PostgreSQL store they are also claimed in the store
(:mod:`engine.store.queue_claims`, ``FOR UPDATE SKIP LOCKED`` with leases), so a
key is delivered by one lane of one node at a time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import Engine

from connectors.base import Destination, TransactionalDestination
from engine.config import AIModelConfig, QueueConfig, RetryPolicy
from engine.errors import EngineError, RecoverableError, StoreError
from engine.queue import IDLE_POLL_SECONDS, DestinationWorker, apply_op, sent_op
from engine.store.group_commit import GroupCommitter
from engine.store.messages import QueueEntry, key_head, now, queue_heads
from engine.store.queue_claims import QueueClaimer

__all__ = ["KeyedDestinationWorker", "new_worker"]

log = logging.getLogger(__name__)

TURN = 50  # entries of one key a lane delivers before it gives the key back

_Key = str | None


def new_worker(
    queue: QueueConfig,
    *,
    channel: str,
    destination: str,
    connectors: list[Destination | TransactionalDestination],
    retry: RetryPolicy,
    engine: Engine,
    ai: AIModelConfig | None,
    committer: GroupCommitter,
    claimer: QueueClaimer | None = None,
) -> DestinationWorker:
    """The worker for a destination's ``queue`` settings (one lane: strict arrival order).

    ``connectors`` has one connector per lane (``queue.workers`` of them): each lane
    talks to the destination over its own connection, so a slow answer holds one lane.
    """
    if len(connectors) != queue.workers:
        raise ValueError(f"{queue.workers} lanes need as many connectors, not {len(connectors)}")
    if queue.workers == 1:
        return DestinationWorker(
            channel,
            destination,
            connector=connectors[0],
            retry=retry,
            engine=engine,
            ai=ai,
            committer=committer,
            claimer=claimer,
        )
    return KeyedDestinationWorker(
        channel,
        destination,
        connectors=connectors,
        retry=retry,
        engine=engine,
        ai=ai,
        committer=committer,
        claimer=claimer,
    )


class KeyedDestinationWorker(DestinationWorker):
    """Delivers one destination's queue with ``lanes`` lanes, in order per order key."""

    def __init__(
        self,
        channel: str,
        destination: str,
        *,
        connectors: list[Destination | TransactionalDestination],
        **kwargs: Any,
    ) -> None:
        super().__init__(channel, destination, connector=connectors[0], **kwargs)
        self._connectors = connectors
        self._lanes = len(connectors)
        self._busy: set[_Key] = set()  # keys a lane holds (or is about to)
        self._claims: asyncio.Queue[QueueEntry | None] = asyncio.Queue()

    async def _run(self) -> None:
        lanes = [
            asyncio.create_task(
                self._lane(connector), name=f"lane:{self.channel}/{self.destination}/{i}"
            )
            for i, connector in enumerate(self._connectors)
        ]
        try:
            await self._dispatch()
        finally:
            for _ in lanes:
                self._claims.put_nowait(None)
            await asyncio.gather(*lanes)

    # -- dispatcher ----------------------------------------------------------------

    async def _dispatch(self) -> None:
        while not self._stopping:
            try:
                wait = await self._claim_heads()
            except StoreError as exc:
                log.error(
                    "%s/%s: store unavailable (%s); retrying", self.channel, self.destination, exc
                )
                wait = IDLE_POLL_SECONDS
            except Exception:
                log.exception("%s/%s: unexpected dispatch error", self.channel, self.destination)
                wait = IDLE_POLL_SECONDS
            if wait is not None:
                await self._sleep(wait)

    async def _claim_heads(self) -> float | None:
        """Hand due heads of free keys to free lanes; the seconds to wait (None: go on)."""
        self._wake.clear()
        free = self._lanes - len(self._busy)
        if free <= 0:
            return IDLE_POLL_SECONDS  # a lane that finishes wakes us
        held = set(self._busy)
        fetch = self._claimer.claim_heads if self._claimer is not None else queue_heads
        # Heads of keys our lanes hold come back too (a claim of ours is ours): skipped below.
        limit = free + len(held)
        heads = await asyncio.to_thread(fetch, self._engine, self.channel, self.destination, limit)
        # A key released while the query ran may show its just-delivered head: skip
        # every key held before or after the query (it comes back next round).
        held |= self._busy
        claimed = 0
        for entry in heads.due:
            if claimed == free:
                break
            if entry.order_key in held:
                continue
            self._busy.add(entry.order_key)
            self._claims.put_nowait(entry)
            claimed += 1
        if claimed == free:
            return None  # every lane is busy now: the next round waits for one
        if heads.next_attempt_at is None:
            return IDLE_POLL_SECONDS
        until = (heads.next_attempt_at - now()).total_seconds()
        return min(max(until, 0.0), IDLE_POLL_SECONDS)

    # -- lanes ---------------------------------------------------------------------

    async def stop(self) -> None:
        """Finish the deliveries in progress, then stop and close every lane's connector."""
        await super().stop()  # closes the first
        for connector in self._connectors[1:]:
            await connector.close()

    async def _lane(self, connector: Destination | TransactionalDestination) -> None:
        while (entry := await self._claims.get()) is not None:
            key = entry.order_key
            try:
                if not self._stopping:
                    await self._deliver_key(connector, entry)
            except StoreError as exc:
                log.error(
                    "%s/%s: store unavailable (%s); retrying", self.channel, self.destination, exc
                )
                await self._sleep(IDLE_POLL_SECONDS)
            except Exception:
                log.exception("%s/%s: unexpected lane error", self.channel, self.destination)
                await self._sleep(IDLE_POLL_SECONDS)
            finally:
                self._busy.discard(key)
                self._wake.set()

    async def _deliver_key(
        self, connector: Destination | TransactionalDestination, entry: QueueEntry
    ) -> None:
        """Deliver ``entry`` and the entries of its key behind it, in order, for one turn."""
        current: QueueEntry | None = entry
        for _ in range(TURN):
            if current is None or self._stopping or current.next_attempt_at > now():
                return
            if not await self._deliver(connector, current):
                return  # a retry is scheduled: the key waits for it
            fetch = self._claimer.claim_key_head if self._claimer is not None else key_head
            current = await asyncio.to_thread(
                fetch, self._engine, self.channel, self.destination, entry.order_key
            )

    async def _deliver(
        self, connector: Destination | TransactionalDestination, entry: QueueEntry
    ) -> bool:
        """Deliver one entry; False when it stays QUEUED for a retry (it holds its key)."""
        if isinstance(connector, TransactionalDestination):
            return await self._apply(connector, entry)
        return await self._send(connector, entry)

    async def _send(self, connector: Destination, entry: QueueEntry) -> bool:
        try:
            delivery = await connector.send(entry.payload)
        except RecoverableError as exc:
            await self._schedule_retry(entry, exc)
            return False
        except EngineError as exc:
            await self._fail(entry, exc)
            return True
        event = await self._ai_requested(entry)
        await self._committer.run_async(sent_op(entry, delivery, event))
        return True

    async def _apply(self, connector: TransactionalDestination, entry: QueueEntry) -> bool:
        # Prepared outside the writer; applied in the transaction that marks it sent.
        try:
            prepared = await asyncio.to_thread(connector.prepare, entry.payload)
            await self._committer.run_async(apply_op(connector, entry, prepared))
        except (RecoverableError, StoreError) as exc:
            await self._schedule_retry(entry, exc)
            return False
        except EngineError as exc:
            await self._fail(entry, exc)
        return True
