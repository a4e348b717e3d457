"""In-memory source and destination, for engine tests and channel dry runs.

The source is fed by calling :meth:`MemorySource.inject`; the destination keeps
what it was sent and can be switched "down" to exercise queueing and retry.
Instances are found by name through :data:`MEMORY_DESTINATIONS`/``SOURCES``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from connectors.base import Delivery, InboundHandler, Origin
from engine.errors import PermanentError, RecoverableError

__all__ = [
    "MEMORY_DESTINATIONS",
    "MEMORY_SOURCES",
    "MemoryDestination",
    "MemoryDestinationConfig",
    "MemorySource",
    "MemorySourceConfig",
]


class MemorySourceConfig(BaseModel):
    """A source fed by test code. ``instance`` makes it findable in MEMORY_SOURCES."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["memory"]
    instance: str = Field(min_length=1)


class MemoryDestinationConfig(BaseModel):
    """A destination that records payloads. ``instance`` makes it findable."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["memory"]
    instance: str = Field(min_length=1)


class MemorySource:
    """A source whose messages come from :meth:`inject`."""

    def __init__(self, config: MemorySourceConfig) -> None:
        self.config = config
        self._handler: InboundHandler | None = None
        MEMORY_SOURCES[config.instance] = self

    async def start(self, handler: InboundHandler) -> None:
        """Accept injected messages from now on."""
        self._handler = handler

    async def stop(self) -> None:
        """Refuse injected messages from now on."""
        self._handler = None

    async def inject(self, raw: bytes) -> bytes | None:
        """Hand ``raw`` to the engine as if a peer had sent it; returns the reply."""
        if self._handler is None:
            raise RecoverableError("memory source is not started")
        return await self._handler(raw, Origin("memory", "test", self.config.instance))


class MemoryDestination:
    """Records every payload; ``down``/``refuse`` simulate an outage or a refusal."""

    def __init__(self, config: MemoryDestinationConfig) -> None:
        self.config = config
        self.received: list[str] = []
        self.down = False
        self.refuse = False
        self.attempts = 0
        MEMORY_DESTINATIONS[config.instance] = self

    async def send(self, payload: str) -> Delivery:
        """Record ``payload`` unless switched down (RecoverableError) or refusing."""
        self.attempts += 1
        if self.down:
            raise RecoverableError("memory destination is down")
        if self.refuse:
            raise PermanentError("memory destination refused the message")
        self.received.append(payload)
        return Delivery(response=f"received #{len(self.received)}")

    async def close(self) -> None:
        """Nothing to release."""


MEMORY_SOURCES: dict[str, MemorySource] = {}
MEMORY_DESTINATIONS: dict[str, MemoryDestination] = {}
