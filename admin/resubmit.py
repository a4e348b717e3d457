"""Reprocess a message that failed before it was queued: run its raw content again.

Requeueing (``messages_api``) re-delivers what a channel already produced. A
message that errored in the channel itself (a transform or filter error, a
rejected type) produced nothing to re-deliver; after the analyst fixes the
channel and redeploys, reprocessing runs the stored raw message through the
channel as deployed now. The result is a new message (origin ``reprocess``);
the errored one stays as it was, for the record. Duplicate control does not
stand in the way: only accepted messages are remembered as duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import exists, select

from admin.access_log import log_access
from admin.context import AdminContext
from connectors.base import Origin
from engine.states import MessageStatus
from engine.store.tables import messages, queue_entries
from engine.testbench import as_sent

__all__ = ["Resubmitted", "resubmit_unqueued"]


@dataclass(frozen=True, slots=True)
class Resubmitted:
    """What running a message again gave: the new message, or why it was not run."""

    message_id: int | None = None
    status: str | None = None
    error: str | None = None


def resubmit_unqueued(
    ctx: AdminContext, username: str, message_ids: list[int]
) -> dict[int, Resubmitted]:
    """Run again each of ``message_ids`` that is ERROR with no delivery; others are left out.

    Runs in the caller's thread (a request worker): the pipeline's processing is
    synchronous and waits for its own commit.
    """
    results: dict[int, Resubmitted] = {}
    for message_id, channel, raw in _errored_before_queueing(ctx, message_ids):
        runtime = ctx.hub.runtimes.get(channel) if ctx.hub is not None else None
        if runtime is None:
            results[message_id] = Resubmitted(error=f"channel {channel} is not running")
            continue
        # Shown as the new message's origin in the browser: where it really came from.
        origin = Origin("reprocess", f"reprocess of #{message_id} by {username}", "admin")
        processed = runtime.process_message(as_sent(raw, runtime.channel), origin)
        ctx.run_write(log_access(username, "resubmit", message_id))
        status = processed.status.value if processed.status is not None else None
        results[message_id] = Resubmitted(processed.message_id, status, processed.error)
    return results


def _errored_before_queueing(
    ctx: AdminContext, message_ids: list[int]
) -> list[tuple[int, str, str]]:
    delivered = exists().where(queue_entries.c.message_id == messages.c.id)
    query = select(messages.c.id, messages.c.channel, messages.c.raw).where(
        messages.c.id.in_(message_ids),
        messages.c.status == MessageStatus.ERROR.value,
        ~delivered,
        messages.c.raw.is_not(None),
    )
    with ctx.services.engine.connect() as conn:
        return [(row.id, row.channel, row.raw) for row in conn.execute(query)]
