"""Group commit: one writer thread runs many small write operations per transaction.

Each inbound message must be durably committed before it is acknowledged; one
fsync per message would cap throughput at the disk's fsync rate. Producers
submit operations; the writer takes every operation waiting, runs them in one
transaction and commits once, then resolves each producer's future. If the
batch fails, each operation is retried alone so one bad operation cannot sink
the others.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from engine.errors import EngineError, StoreError

__all__ = ["GroupCommitter", "WriteOp"]

T = TypeVar("T")
WriteOp = Callable[[Connection], T]
_Pending = tuple[Callable[[Connection], Any], "Future[Any]"]

log = logging.getLogger(__name__)
_STOP = object()


class GroupCommitter:
    """A single writer thread that batches write operations into shared commits."""

    def __init__(self, engine: Engine, *, max_batch: int = 500) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._started = False
        self.commits = 0
        self.operations = 0

    def start(self) -> None:
        """Start the writer thread."""
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self) -> None:
        """Commit everything already submitted, then end the writer thread."""
        if self._started:
            self._queue.put(_STOP)
            self._thread.join()
            self._started = False

    def submit(self, op: Callable[[Connection], T]) -> Future[T]:
        """Queue ``op``; its future resolves after the transaction holding it committed."""
        if not self._started:
            raise StoreError("the store writer is not running")
        future: Future[T] = Future()
        self._queue.put((op, future))
        return future

    def run(self, op: Callable[[Connection], T]) -> T:
        """Submit ``op`` and wait for its committed result (from a worker thread)."""
        return self.submit(op).result()

    async def run_async(self, op: Callable[[Connection], T]) -> T:
        """Submit ``op`` and await its committed result (from the event loop)."""
        return await asyncio.wrap_future(self.submit(op))

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch: list[_Pending] = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            # Claim each future before its write: one whose waiter was cancelled
            # (a hub stopping, a client gone) is skipped, since nobody was promised
            # anything; a claimed future can no longer be cancelled under us.
            claimed = [item for item in batch if item[1].set_running_or_notify_cancel()]
            if claimed:
                self._commit(claimed)

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            with self._engine.begin() as conn:
                results = [op(conn) for op, _ in batch]
        except Exception as exc:
            if len(batch) > 1:
                for item in batch:
                    self._commit([item])
                return
            batch[0][1].set_exception(_as_engine_error(exc))
            return
        self.commits += 1
        self.operations += len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)


def _as_engine_error(exc: Exception) -> Exception:
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, SQLAlchemyError):
        log.error("store write failed: %s", exc.__class__.__name__)
        return StoreError(f"store write failed: {exc.__class__.__name__}")
    log.exception("unexpected error in a store write")
    return StoreError(f"store write failed: {exc.__class__.__name__}: {exc}")
