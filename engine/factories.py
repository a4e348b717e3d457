"""Factories the registry points at: build a connector from its config and the hub's services."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connectors.memory import (
        MemoryDestination,
        MemoryDestinationConfig,
        MemorySource,
        MemorySourceConfig,
    )
    from connectors.mllp import MLLPSource, MLLPSourceConfig
    from connectors.worklist import WorklistDestination, WorklistDestinationConfig
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
    config: WorklistDestinationConfig, services: Services
) -> WorklistDestination:
    """The Modality Worklist, in the hub's own store."""
    from connectors.worklist import WorklistDestination

    return WorklistDestination(config, services.worklist)


def memory_destination(config: MemoryDestinationConfig, services: Services) -> MemoryDestination:
    """An in-memory destination for tests."""
    from connectors.memory import MemoryDestination

    return MemoryDestination(config)
