"""The state machine of a message and of a destination queue entry.

A message moves RECEIVED → FILTERED | TRANSFORMED | ERROR; TRANSFORMED →
QUEUED → SENT | ERROR. A queue entry moves QUEUED → SENT | ERROR and back to
QUEUED only on reprocess. Any other move is a bug and raises.
"""

from __future__ import annotations

from enum import StrEnum

from engine.errors import IllegalTransition

__all__ = ["MessageStatus", "check_transition"]


class MessageStatus(StrEnum):
    """Where a message, or one destination's copy of it, stands."""

    RECEIVED = "RECEIVED"
    FILTERED = "FILTERED"
    TRANSFORMED = "TRANSFORMED"
    QUEUED = "QUEUED"
    SENT = "SENT"
    ERROR = "ERROR"


_ALLOWED: dict[MessageStatus, frozenset[MessageStatus]] = {
    MessageStatus.RECEIVED: frozenset(
        {MessageStatus.FILTERED, MessageStatus.TRANSFORMED, MessageStatus.ERROR}
    ),
    # A transformed message that no destination takes (all destination filters
    # said no, or the transform produced nothing) ends FILTERED.
    MessageStatus.TRANSFORMED: frozenset(
        {MessageStatus.QUEUED, MessageStatus.FILTERED, MessageStatus.ERROR}
    ),
    MessageStatus.QUEUED: frozenset({MessageStatus.SENT, MessageStatus.ERROR}),
    # Reprocessing puts a finished entry back on its queue.
    MessageStatus.SENT: frozenset({MessageStatus.QUEUED}),
    MessageStatus.ERROR: frozenset({MessageStatus.QUEUED}),
    MessageStatus.FILTERED: frozenset(),
}


def check_transition(current: MessageStatus, new: MessageStatus) -> MessageStatus:
    """Return ``new`` if the machine allows ``current → new``, else raise IllegalTransition."""
    if new not in _ALLOWED[current]:
        raise IllegalTransition(f"a message cannot go from {current} to {new}")
    return new
