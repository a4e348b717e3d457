"""Which node runs the hub's periodic jobs when several share one PostgreSQL store.

Retention pruning, alert checks, AI timeout checks and worklist aging must run
on one node at a time (two pruners would fight over the same rows; two alert
checks could raise the same alert twice). :class:`JobLeadership` elects that
node with a PostgreSQL session-level advisory lock held on a dedicated
connection kept open for the life of the hub:

* each job run first asks :meth:`JobLeadership.is_leader`; a node that does not
  hold the lock tries to take it (``pg_try_advisory_lock``, never waits), and a
  node that holds it checks that its connection is still alive;
* if the leader's connection dies (node crash, network cut, backend killed),
  PostgreSQL drops the lock and another node takes it at its next check;
* :meth:`JobLeadership.release` (hub stop) unlocks and closes the connection.

On SQLite the store is one file used by one node, so every instance leads.
There is a short window after a leader loses its connection (e.g. a network
partition) in which it may start one more run before its next check notices;
the jobs are idempotent per run (prunes by age, alerts deduplicated by
condition), so that overlap costs a little work, not wrong data.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from engine.store.db import is_sqlite

__all__ = ["HUB_JOBS", "JobLeadership", "lock_key"]

log = logging.getLogger(__name__)

#: The job group of the hub's scheduled and periodic jobs (one leader for all of them).
HUB_JOBS = "hub-jobs"


def lock_key(group: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``group`` (the same on every node)."""
    digest = hashlib.blake2b(f"meridian:{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class JobLeadership:
    """Leadership of one job group across the nodes sharing a store (see the module doc)."""

    def __init__(self, engine: Engine, group: str = HUB_JOBS) -> None:
        self.group = group
        self.key = lock_key(group)
        self._engine = engine
        self._always = is_sqlite(engine)
        self._conn: Connection | None = None
        # The scheduler's jobs and the periodic tasks check from different worker threads;
        # one DB-API connection must never be used by two threads at once.
        self._lock = threading.Lock()
        self._released = False

    @property
    def leading(self) -> bool:
        """True while this node holds the lock (on SQLite: always, until released)."""
        if self._always:
            return not self._released
        return self._conn is not None

    async def is_leader(self) -> bool:
        """Whether this node should run the group's jobs now; tries to take the lock if free."""
        if self._always:
            return not self._released
        return await asyncio.to_thread(self.check)

    def check(self) -> bool:
        """Blocking form of :meth:`is_leader` (one or two short queries)."""
        if self._always:
            return not self._released
        with self._lock:
            if self._released:
                return False
            if self._conn is not None and self._alive(self._conn):
                return True
            return self._acquire()

    async def release(self) -> None:
        """Give leadership up (hub stop): unlock, close the connection; checks then say no."""
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        with self._lock:
            self._released = True
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            except SQLAlchemyError:
                pass  # closing the connection below releases the lock anyway
            finally:
                _close(conn)
            log.info("job leadership (%s) released", self.group)

    def _alive(self, conn: Connection) -> bool:
        try:
            conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            # The session is gone, and with it the lock: another node may hold it now.
            log.warning("job leadership (%s) lost: store connection failed", self.group)
            self._conn = None
            _close(conn, invalidate=True)
            return False

    def _acquire(self) -> bool:
        try:
            # AUTOCOMMIT: a session lock needs no transaction, and an idle open transaction
            # would hold back vacuum (or be killed by idle_in_transaction_session_timeout).
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as exc:
            log.debug("job leadership (%s): store unreachable (%s)", self.group, type(exc).__name__)
            return False
        try:
            query = text("SELECT pg_try_advisory_lock(:key)")
            got = bool(conn.execute(query, {"key": self.key}).scalar_one())
        except SQLAlchemyError as exc:
            log.debug("job leadership (%s): lock query failed (%s)", self.group, type(exc).__name__)
            _close(conn, invalidate=True)
            return False
        if not got:
            _close(conn)
            return False
        self._conn = conn
        log.info("job leadership (%s) taken: this node runs the periodic jobs", self.group)
        return True


def _close(conn: Connection, *, invalidate: bool = False) -> None:
    """Close ``conn``; ``invalidate`` drops the DB-API connection instead of pooling it."""
    try:
        if invalidate:
            conn.invalidate()
        conn.close()
    except SQLAlchemyError:
        pass  # already broken: nothing left to release
