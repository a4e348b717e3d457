"""Durable destination queues: one worker per channel destination.

The worker delivers its queue's entries in arrival order (with ``queue.workers``
above 1, :mod:`engine.queue_lanes` delivers in order per key, keys in parallel). A destination that
is down (RecoverableError) keeps the head entry QUEUED and retries it with
exponential backoff and jitter, holding the entries behind it so order is
kept; a refusal (PermanentError, TransformError) marks that entry ERROR for an
analyst and moves on. Nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from connectors.base import Delivery, Destination, TransactionalDestination
from engine.audit import AuditEvent, ai_requested_event
from engine.audit import record as record_audit
from engine.config import AIModelConfig, RetryPolicy
from engine.errors import EngineError, RecoverableError, StoreError
from engine.store.group_commit import GroupCommitter
from engine.store.messages import (
    QueueEntry,
    mark_error,
    mark_retry,
    mark_sent,
    now,
    pending_entries,
)
from engine.store.queue_claims import QueueClaimer

__all__ = ["DestinationWorker", "apply_op", "backoff_delay", "sent_op"]

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 1.0
#: With several nodes: how often a node asks again for a destination another node delivers.
HELD_ELSEWHERE_POLL_SECONDS = 0.5
BATCH = 200


def backoff_delay(policy: RetryPolicy, attempts: int, rng: random.Random | None = None) -> float:
    """Seconds before attempt ``attempts + 1``: exponential, capped, with jitter."""
    base = policy.initial_backoff_seconds * policy.multiplier ** max(attempts - 1, 0)
    delay = min(base, policy.max_backoff_seconds)
    spread = delay * policy.jitter
    return max(0.0, delay + (rng or random).uniform(-spread, spread))


class DestinationWorker:
    """Delivers one destination's queue, in order, until stopped."""

    def __init__(
        self,
        channel: str,
        destination: str,
        *,
        connector: Destination | TransactionalDestination,
        retry: RetryPolicy,
        engine: Engine,
        ai: AIModelConfig | None = None,
        committer: GroupCommitter,
        claimer: QueueClaimer | None = None,
    ) -> None:
        self.channel = channel
        self.destination = destination
        self._connector = connector
        self._retry = retry
        self._ai = ai
        self._engine = engine
        self._committer = committer
        # Several nodes on one store: entries are claimed before delivery (None: one node).
        self._claimer = claimer
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()  # also ends a pause that ignores wakes
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start delivering (call from the event loop)."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(
            self._run(), name=f"queue:{self.channel}/{self.destination}"
        )

    @property
    def _stopping(self) -> bool:
        return self._stop_requested.is_set()

    def notify(self) -> None:
        """New entries were committed: wake the worker (safe from any thread)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        """Finish the delivery in progress, then stop; queued entries stay for the next start."""
        self._stop_requested.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        await self._connector.close()
        await self._release_claims()

    async def _release_claims(self) -> None:
        """A stopped worker's claims go back, so the other nodes deliver them now."""
        if self._claimer is None:
            return
        try:
            await asyncio.to_thread(
                self._claimer.release, self._engine, self.channel, self.destination
            )
        except Exception as exc:  # held until this worker starts again or the node stops
            log.warning(
                "%s/%s: could not give claims back (%s)",
                self.channel,
                self.destination,
                type(exc).__name__,
            )

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._drain_once()
            except StoreError as exc:
                log.error(
                    "%s/%s: store unavailable (%s); retrying", self.channel, self.destination, exc
                )
                await self._sleep(IDLE_POLL_SECONDS)
            except Exception:
                log.exception("%s/%s: unexpected worker error", self.channel, self.destination)
                await self._sleep(IDLE_POLL_SECONDS)

    async def _drain_once(self) -> None:
        self._wake.clear()
        fetch = self._claimer.claim_run if self._claimer is not None else pending_entries
        entries = await asyncio.to_thread(
            fetch, self._engine, self.channel, self.destination, BATCH
        )
        if entries is None:
            # Another node is delivering this destination (it takes what we queue too):
            # our own new entries are no reason to ask again before a while.
            await self._pause(HELD_ELSEWHERE_POLL_SECONDS)
            return
        if not entries:
            await self._sleep(IDLE_POLL_SECONDS)
            return
        wait = (entries[0].next_attempt_at - now()).total_seconds()
        if wait > 0:
            await self._sleep(wait)
            return
        if isinstance(self._connector, TransactionalDestination):
            await self._apply_batch(self._connector, _due(entries))
        else:
            await self._send_in_order(self._connector, entries)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` whatever wakes come (a stop still ends it at once)."""
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), timeout=seconds)

    async def _sleep(self, seconds: float) -> None:
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def _apply_batch(
        self, connector: TransactionalDestination, entries: list[QueueEntry]
    ) -> None:
        prepared = await asyncio.to_thread(_prepare_all, connector, entries)
        ready: list[tuple[QueueEntry, Any]] = []
        for entry, outcome in zip(entries, prepared, strict=True):
            if isinstance(outcome, RecoverableError | StoreError):
                await self._schedule_retry(entry, outcome)
            elif isinstance(outcome, EngineError):
                await self._fail(entry, outcome)
            else:
                ready.append((entry, outcome))
        # All ops go to the writer together, so they share commits; the writer
        # keeps their order and retries them one by one if any fails.
        futures = [
            (entry, self._committer.submit(apply_op(connector, entry, item)))
            for entry, item in ready
        ]
        for entry, future in futures:
            try:
                await asyncio.wrap_future(future)
            except (RecoverableError, StoreError) as exc:
                await self._schedule_retry(entry, exc)
            except EngineError as exc:
                await self._fail(entry, exc)

    async def _send_in_order(self, connector: Destination, entries: list[QueueEntry]) -> None:
        for entry in entries:
            if self._stopping or entry.next_attempt_at > now():
                return
            try:
                delivery = await connector.send(entry.payload)
            except RecoverableError as exc:
                await self._schedule_retry(entry, exc)
                return  # the head waits; entries behind it keep their order
            except EngineError as exc:
                await self._fail(entry, exc)
                continue
            event = await self._ai_requested(entry)
            await self._committer.run_async(sent_op(entry, delivery, event))

    async def _ai_requested(self, entry: QueueEntry) -> AuditEvent | None:
        """The audit of an AI model being asked about a study (None: not an AI)."""
        if self._ai is None:
            return None
        return await asyncio.to_thread(
            ai_requested_event,
            entry.payload,
            channel=self.channel,
            destination=self.destination,
            ai=self._ai,
        )

    async def _schedule_retry(self, entry: QueueEntry, exc: Exception) -> None:
        attempts = entry.attempts + 1
        if self._retry.max_attempts is not None and attempts >= self._retry.max_attempts:
            await self._fail(entry, exc)
            return
        delay = backoff_delay(self._retry, attempts)
        # The exception type only: a peer's error text can name a patient; the
        # full text is kept with the entry in the store for the analyst.
        log.warning(
            "%s/%s: entry %d attempt %d failed (%s); next try in %.1fs",
            self.channel,
            self.destination,
            entry.id,
            attempts,
            type(exc).__name__,
            delay,
        )
        next_at = now() + timedelta(seconds=delay)
        await self._committer.run_async(lambda conn: mark_retry(conn, entry, next_at, str(exc)))

    async def _fail(self, entry: QueueEntry, exc: Exception) -> None:
        log.error(
            "%s/%s: entry %d failed (%s); see the message store",
            self.channel,
            self.destination,
            entry.id,
            type(exc).__name__,
        )
        await self._committer.run_async(lambda conn: mark_error(conn, entry, str(exc)))


def _due(entries: list[QueueEntry]) -> list[QueueEntry]:
    """The leading entries that are due now; stop at the first that is not (order)."""
    current = now()
    due: list[QueueEntry] = []
    for entry in entries:
        if entry.next_attempt_at > current:
            break
        due.append(entry)
    return due


def _prepare_all(connector: TransactionalDestination, entries: list[QueueEntry]) -> list[Any]:
    """Each entry's prepared payload, or the EngineError that refused it."""
    outcomes: list[Any] = []
    for entry in entries:
        try:
            outcomes.append(connector.prepare(entry.payload))
        except EngineError as exc:
            outcomes.append(exc)
    return outcomes


def apply_op(
    connector: TransactionalDestination, entry: QueueEntry, prepared: Any
) -> Callable[[Connection], None]:
    """A writer op applying ``prepared`` and marking ``entry`` sent, in one transaction."""

    def op(conn: Connection) -> None:
        delivery = connector.apply(conn, prepared)
        mark_sent(conn, entry, delivery.response)

    return op


def sent_op(
    entry: QueueEntry, delivery: Delivery, event: AuditEvent | None
) -> Callable[[Connection], None]:
    """A writer op marking ``entry`` sent (with the audit of an AI request, if any)."""

    def op(conn: Connection) -> None:
        mark_sent(conn, entry, delivery.response)
        if event is not None:
            record_audit(conn, event)

    return op
