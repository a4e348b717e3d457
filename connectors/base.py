"""Contracts every connector implements.

A *source* receives bytes from a peer and hands each message to the engine's
handler, which returns the bytes to answer with (an HL7 ACK, say) only after
the message is durably stored. A *destination* delivers one queued payload.
Destinations that write into the message store itself (the worklist) implement
:class:`TransactionalDestination` so delivery and "sent" commit together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Connection

__all__ = [
    "Delivery",
    "Destination",
    "InboundHandler",
    "Origin",
    "Source",
    "TransactionalDestination",
]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an inbound message came from (never PHI; safe to log)."""

    protocol: str
    peer: str
    local: str
    tls: bool = False


class InboundHandler(Protocol):
    """The engine side of a source: store and process one message, return the reply."""

    async def __call__(self, raw: bytes, origin: Origin) -> bytes | None: ...


class Source(Protocol):
    """A listener feeding one channel."""

    async def start(self, handler: InboundHandler) -> None:
        """Bind and begin serving; returns once listening."""

    async def stop(self) -> None:
        """Stop accepting, finish in-flight messages, close connections."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a destination reports after delivering: the peer's response, if any."""

    response: str | None = None
    detail: str | None = None


class Destination(Protocol):
    """Sends one payload. Raises RecoverableError (retry) or PermanentError (give up)."""

    async def send(self, payload: str) -> Delivery: ...

    async def close(self) -> None: ...


@runtime_checkable
class TransactionalDestination(Protocol):
    """A destination that applies a payload inside the store's own transaction.

    The queue worker first calls :meth:`prepare` in a worker thread (parsing,
    validation: CPU work kept out of the store's single writer), then
    :meth:`apply` in the writer's transaction, the one that also marks the
    queue entry sent, so the effect happens exactly once even if the process
    dies at any point.
    """

    def prepare(self, payload: str) -> Any: ...

    def apply(self, conn: Connection, prepared: Any) -> Delivery: ...

    async def close(self) -> None: ...
