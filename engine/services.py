"""What the hub shares with its channels and connectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from engine.config import HubSettings
from engine.store.group_commit import GroupCommitter
from engine.templating import TemplateEnvironment
from engine.worklist import WorklistStore

__all__ = ["Services"]


@dataclass(frozen=True)
class Services:
    """The store, its writer, the worklist and the template environment of one hub."""

    settings: HubSettings
    engine: Engine
    committer: GroupCommitter
    worklist: WorklistStore
    templates: TemplateEnvironment
    #: Deployed channels by name (filled by the hub), for ``type: channel`` forwarding.
    channels: dict[str, Any] = field(default_factory=dict)
