"""Factories the registry points at: build a connector from its config and the hub's services."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connectors.channel import ChannelForward, ChannelForwardConfig
    from connectors.memory import (
        MemoryDestination,
        MemoryDestinationConfig,
        MemorySource,
        MemorySourceConfig,
    )
    from connectors.mllp import MLLPSource, MLLPSourceConfig
    from connectors.worklist import WorklistDestination, WorklistDestinationConfig
    from engine.config import DestinationFile
    from engine.services import Services

__all__ = ["memory_destination", "memory_source", "mllp_source", "worklist_destination"]


def mllp_source(config: MLLPSourceConfig, services: Services) -> MLLPSource:
    """An MLLP listener."""
    from connectors.mllp import MLLPSource

    return MLLPSource(config)


def memory_source(config: MemorySourceConfig, services: Services) -> MemorySource:
    """An in-memory source for tests."""
    from connectors.memory import MemorySource

    return MemorySource(config)


def worklist_destination(
    config: WorklistDestinationConfig, services: Services, spec: DestinationFile
) -> WorklistDestination:
    """The Modality Worklist, in the hub's own store."""
    from connectors.worklist import WorklistDestination

    return WorklistDestination(config, services.worklist)


def memory_destination(
    config: MemoryDestinationConfig, services: Services, spec: DestinationFile
) -> MemoryDestination:
    """An in-memory destination for tests."""
    from connectors.memory import MemoryDestination

    return MemoryDestination(config)


def channel_destination(
    config: ChannelForwardConfig, services: Services, spec: DestinationFile
) -> ChannelForward:
    """Forwarding to another channel of this hub (looked up at send time)."""
    from connectors.channel import ChannelForward

    def resolve(name: str) -> Any:
        runtime = services.channels.get(name)
        return runtime.handle if runtime is not None else None

    return ChannelForward(config, resolve, from_channel=spec.name)
