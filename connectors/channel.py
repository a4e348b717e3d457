"""``type: channel`` — forward a payload to another channel of the same hub.

The payload enters the target channel as if its source had received it, and
the target's answer is recorded as this destination's response. A target that
is not deployed (yet) is an outage: the payload stays queued and is retried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from connectors.base import Delivery, InboundHandler, Origin
from engine.errors import RecoverableError

__all__ = ["ChannelForward", "ChannelForwardConfig"]


class ChannelForwardConfig(BaseModel):
    """Forward to the channel named ``channel``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["channel"]
    channel: str = Field(min_length=1)


class ChannelSourceConfig(BaseModel):
    """A channel fed only by other channels' ``type: channel`` destinations."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["channel"]


class ChannelSource:
    """Listens to nothing: other channels hand their payloads to this channel's handler."""

    def __init__(self, config: ChannelSourceConfig) -> None:
        self.config = config

    async def start(self, handler: InboundHandler) -> None:
        """Nothing to bind."""

    async def stop(self) -> None:
        """Nothing to release."""


class ChannelForward:
    """Hands each payload to the target channel's handler."""

    def __init__(
        self,
        config: ChannelForwardConfig,
        resolve: Callable[[str], InboundHandler | None],
        from_channel: str,
    ) -> None:
        self.config = config
        self._resolve = resolve
        self._origin = Origin("channel", from_channel, config.channel)

    async def send(self, payload: str) -> Delivery:
        """Process ``payload`` in the target channel; its reply becomes the response."""
        handler = self._resolve(self.config.channel)
        if handler is None:
            raise RecoverableError(f"channel {self.config.channel} is not deployed")
        reply = await handler(payload.encode("utf-8"), self._origin)
        return Delivery(response=reply.decode("utf-8", errors="replace") if reply else None)

    async def close(self) -> None:
        """Nothing to release."""
