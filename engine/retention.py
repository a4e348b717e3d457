"""Retention: old message content blanked, older message rows deleted; unfinished work kept.

Each channel's policy is the hub's ``retention:`` defaults overridden key by key
by the channel file's ``retention:`` block. Channels no longer configured (their
messages are still in the store) follow the hub defaults.

What is pruned: messages whose status is final (SENT or FILTERED), received
*and* last updated before the cutoff, with no delivery still QUEUED or in
ERROR. A message in ERROR, QUEUED or still being processed is never touched,
whatever its age: it is unfinished or waits for an analyst. The guard is
written into the UPDATE/DELETE itself, so a message reprocessed between the
look-up and the write is left alone.

Work is done in batches of ``batch_size`` messages, one store-writer
transaction each, so pruning never holds the writer for long. Each run logs
counts per channel (never content). Out of scope: the DICOM archive
(engine/archive.py), the worklists and the audit trail keep their own data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, delete, exists, or_, select, true, update

from engine.config import ChannelFile, RetentionPolicy, RetentionSettings
from engine.states import MessageStatus
from engine.store.group_commit import GroupCommitter
from engine.store.tables import duplicate_keys, messages, queue_entries

__all__ = ["PruneCounts", "RetentionJob", "effective_policy", "prune_batch"]

log = logging.getLogger(__name__)

#: Only messages that reached one of these are ever pruned.
_FINAL = (MessageStatus.SENT.value, MessageStatus.FILTERED.value)
#: A message with a delivery in one of these is kept.
_OPEN = (MessageStatus.QUEUED.value, MessageStatus.ERROR.value)
#: Policies are keyed by channel; the defaults (every other channel) by this.
DEFAULT_SCOPE = "*"


@dataclass
class PruneCounts:
    """What one run did to one scope (a channel, or the default channels)."""

    content_blanked: int = 0
    deleted: int = 0


@dataclass(frozen=True)
class _Scope:
    """The channels one policy applies to: ``only`` one, or all ``except`` the overridden."""

    name: str
    policy: RetentionPolicy
    excluded: tuple[str, ...] = field(default=())

    def where(self) -> ColumnElement[bool]:
        if self.name != DEFAULT_SCOPE:
            return messages.c.channel == self.name
        return messages.c.channel.not_in(self.excluded) if self.excluded else true()


def effective_policy(channel: RetentionPolicy | None, default: RetentionPolicy) -> RetentionPolicy:
    """The hub defaults with the keys the channel file sets (an explicit null included)."""
    if channel is None:
        return RetentionPolicy(
            content_days=default.content_days, metadata_days=default.metadata_days
        )
    values = {
        "content_days": default.content_days,
        "metadata_days": default.metadata_days,
        **channel.model_dump(include=channel.model_fields_set),
    }
    return RetentionPolicy.model_validate(values)


def _prunable(scope: ColumnElement[bool], cutoff: datetime) -> list[ColumnElement[bool]]:
    open_delivery = exists().where(
        queue_entries.c.message_id == messages.c.id, queue_entries.c.status.in_(_OPEN)
    )
    return [
        scope,
        messages.c.status.in_(_FINAL),
        messages.c.received_at < cutoff,
        messages.c.updated_at < cutoff,
        ~open_delivery,
    ]


def _has_content() -> ColumnElement[bool]:
    return or_(
        messages.c.raw != "", messages.c.transformed.is_not(None), messages.c.response.is_not(None)
    )


def prune_batch(
    scope: ColumnElement[bool], cutoff: datetime, limit: int, *, delete_rows: bool
) -> Callable[[Connection], tuple[int, int]]:
    """A write op: blank (or delete) up to ``limit`` prunable messages; (looked at, pruned)."""

    def op(conn: Connection) -> tuple[int, int]:
        guard = _prunable(scope, cutoff)
        if not delete_rows:
            guard.append(_has_content())
        ids = list(
            conn.execute(
                select(messages.c.id).where(and_(*guard)).order_by(messages.c.id).limit(limit)
            ).scalars()
        )
        if not ids:
            return 0, 0
        # The guard again, in the write: a message reprocessed since the select is kept.
        target = and_(messages.c.id.in_(ids), *guard)
        done = _delete(conn, target) if delete_rows else _blank(conn, target)
        return len(ids), len(done)

    return op


def _blank(conn: Connection, target: ColumnElement[bool]) -> list[Any]:
    statement = (
        update(messages)
        .where(target)
        .values(raw="", transformed=None, response=None)
        .returning(messages.c.id)
    )
    done = list(conn.execute(statement).scalars())
    if done:
        conn.execute(
            update(queue_entries)
            .where(queue_entries.c.message_id.in_(done))
            .values(payload="", response=None)
        )
    return done


def _delete(conn: Connection, target: ColumnElement[bool]) -> list[Any]:
    done = list(conn.execute(delete(messages).where(target).returning(messages.c.id)).scalars())
    if done:
        # ON DELETE CASCADE does this where foreign keys are enforced; said explicitly anyway.
        conn.execute(delete(queue_entries).where(queue_entries.c.message_id.in_(done)))
        conn.execute(delete(duplicate_keys).where(duplicate_keys.c.message_id.in_(done)))
    return done


class RetentionJob:
    """One prune run over every scope: deletes past ``metadata_days``, then blanks content.

    ``channels`` is called at each run, so channels deployed since are honoured.
    """

    def __init__(
        self,
        committer: GroupCommitter,
        settings: RetentionSettings,
        channels: Callable[[], Iterable[ChannelFile]],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._committer = committer
        self._settings = settings
        self._channels = channels
        self._clock = clock
        self._stopping = False

    def stop(self) -> None:
        """Finish the batch in progress and do no more in this run."""
        self._stopping = True

    def _scopes(self) -> list[_Scope]:
        overridden = [c for c in self._channels() if c.retention is not None]
        scopes = [_Scope(c.name, effective_policy(c.retention, self._settings)) for c in overridden]
        excluded = tuple(sorted(c.name for c in overridden))
        default = effective_policy(None, self._settings)
        return [_Scope(DEFAULT_SCOPE, default, excluded), *scopes]

    async def run_once(self) -> dict[str, PruneCounts]:
        """Prune every scope; returns the counts of the scopes that have a policy."""
        now = self._clock()
        results: dict[str, PruneCounts] = {}
        for scope in self._scopes():
            policy = scope.policy
            if policy.content_days is None and policy.metadata_days is None:
                continue
            counts = results[scope.name] = PruneCounts()
            if policy.metadata_days is not None:
                cutoff = now - timedelta(days=policy.metadata_days)
                counts.deleted = await self._drain(scope, cutoff, delete_rows=True)
            if policy.content_days is not None:
                cutoff = now - timedelta(days=policy.content_days)
                counts.content_blanked = await self._drain(scope, cutoff, delete_rows=False)
        for name, counts in results.items():
            log.info(
                "retention: channel %s: %d message(s) deleted, %d message(s) content blanked",
                "(default)" if name == DEFAULT_SCOPE else name,
                counts.deleted,
                counts.content_blanked,
            )
        return results

    async def _drain(self, scope: _Scope, cutoff: datetime, *, delete_rows: bool) -> int:
        limit = self._settings.batch_size
        total = 0
        while not self._stopping:
            op = prune_batch(scope.where(), cutoff, limit, delete_rows=delete_rows)
            looked_at, pruned = await self._committer.run_async(op)
            total += pruned
            if looked_at < limit:
                break
        return total
