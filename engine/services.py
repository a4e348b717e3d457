"""What the hub shares with its channels and connectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from connectors.dicom_mpps import MPPSService
from connectors.dicom_store import StorageService
from engine.archive import Archive
from engine.config import AIModelConfig, HubSettings
from engine.deid import Deidentifier
from engine.leadership import JobLeadership
from engine.reading_worklist import ReadingWorklist
from engine.store.group_commit import GroupCommitter
from engine.store.queue_claims import QueueClaimer
from engine.templating import TemplateEnvironment
from engine.worklist import WorklistStore

__all__ = ["Services"]


@dataclass(frozen=True)
class Services:
    """The store, its writer, the worklist, templates, image archive and ingest of one hub."""

    settings: HubSettings
    engine: Engine
    committer: GroupCommitter
    worklist: WorklistStore
    templates: TemplateEnvironment
    archive: Archive
    storage: StorageService
    deid: Deidentifier
    reading_worklist: ReadingWorklist
    mpps: MPPSService
    #: Leadership of the hub's cluster-wide jobs and study assembly (always leads on SQLite).
    leadership: JobLeadership | None = None
    #: Queue claims of this node when several nodes share the store (None: SQLite, one node).
    claimer: QueueClaimer | None = None
    #: Deployed channels by name (filled by the hub), for ``type: channel`` forwarding.
    channels: dict[str, Any] = field(default_factory=dict)
    #: AI models by name (from every destination's ``ai:`` block), for their modes.
    ai_models: dict[str, AIModelConfig] = field(default_factory=dict)
