"""Pydantic models of a channel file and of the hub's own settings.

A channel file is validated in two steps: the channel's own fields here, then
each connector's fields by the config class its ``type:`` names in the
registry (see :mod:`engine.registry`). Everything is ``extra="forbid"`` so a
misspelt key is an error, never silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from admin.settings import AdminSettings
from connectors.dicom_mwl import DicomListenerConfig
from engine.ai_result import AIMode
from engine.alert_config import AlertSettings
from engine.normalize_config import NormalizeConfig
from engine.reading_config import ReadingWorklistConfig
from engine.transform import TransformConfig

__all__ = [
    "AIModelConfig",
    "Channel",
    "ChannelDestination",
    "ChannelFile",
    "DestinationFile",
    "FilterRule",
    "HubSettings",
    "InboundConfig",
    "QueueConfig",
    "RetentionPolicy",
    "RetentionSettings",
    "RetryPolicy",
]

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetryPolicy(_Strict):
    """Retry of a destination that is down: exponential backoff with jitter, never dropping."""

    initial_backoff_seconds: float = Field(default=1.0, gt=0)
    max_backoff_seconds: float = Field(default=300.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1.0)
    jitter: float = Field(default=0.2, ge=0, le=1, description="fraction of the delay")
    max_attempts: int | None = Field(
        default=None, ge=1, description="None retries for ever; otherwise ERROR after N attempts"
    )


class QueueConfig(_Strict):
    """How a destination's queue is delivered: in order per key, keys in parallel."""

    workers: int = Field(
        default=1,
        ge=1,
        le=32,
        description="delivery lanes working at once. 1 (default): the whole queue is delivered "
        "in arrival order, and an entry being retried holds every entry behind it. More: "
        "entries with the same order key are still delivered in arrival order (a retried "
        "entry holds only its own key), entries of different keys are delivered in parallel, "
        "each lane over its own connection to the destination",
    )
    order_key: str | None = Field(
        default=None,
        min_length=1,
        description="Jinja template giving an entry's order key, rendered with the message "
        "(the context filters see) when the entry is queued, e.g. "
        '\'{{ msg.seg("PID")["3.1"] }}\'. An empty result, like a message without a '
        "patient ID when unset, puts the entry in one shared key. Default: the message's "
        "patient ID. Keys longer than 200 characters are cut to 200 (same text, same key)",
    )


class FilterRule(_Strict):
    """Keeps a message when the Jinja expression ``when`` is true (``msg`` is the message)."""

    name: str = Field(min_length=1)
    when: str = Field(min_length=1)


class InboundConfig(_Strict):
    """How the channel reads what its source receives."""

    data_type: Literal["hl7v2", "dicom-study", "ai-results", "report", "procedure-step"] = Field(
        default="hl7v2",
        description="hl7v2: HL7 v2 messages; dicom-study: studies assembled by a dicom source; "
        "ai-results: DICOM AI results (study batches) and AIResult JSON; "
        "report: StudyReport JSON (reports to the EHR); "
        "procedure-step: MPPS events from an mpps source",
    )
    reidentify_scopes: list[str] = Field(
        default_factory=list,
        description="ai-results: '<channel>/<destination>' of the de-identifying (external) "
        "destinations whose AI answers here; their results are mapped back to the real patient",
    )
    default_charset: str = Field(
        default="UNICODE UTF-8", description="HL7 table 0211 name used when MSH-18 is empty"
    )
    accept_message_types: list[str] | None = Field(
        default=None, description="e.g. ['ORM^O01', 'OMI^O23']; others get AR. None accepts all."
    )
    duplicate_control: bool = Field(
        default=True,
        description="a resent message (same sender, MSH-10, content) is ACKed, not applied again",
    )


class AIModelConfig(_Strict):
    """The AI model a destination asks: recorded in the audit trail, drives triage."""

    model: str = Field(min_length=1, description="model name, as results name it")
    version: str = Field(min_length=1)
    mode: AIMode = Field(
        default="shadow",
        description="shadow: results stored and audited only; triage: the reading worklist "
        "is reprioritized; assistant: also forwarded to the PACS and drafted into the report",
    )
    timeout_seconds: float = Field(
        default=600, gt=0, description="no result after this long: timeout recorded, alert"
    )


class RetentionPolicy(_Strict):
    """How long a channel's messages are kept. None keeps for ever.

    Messages still QUEUED or in ERROR (or with such a delivery) are never pruned,
    whatever their age: they are unfinished or wait for an analyst.
    """

    content_days: float | None = Field(
        default=None,
        gt=0,
        description="after this many days the content (raw, transformed, response, queued "
        "payloads and responses) is blanked; status, type, IDs and times are kept",
    )
    metadata_days: float | None = Field(
        default=None,
        gt=0,
        description="after this many days the message row and its queue entries are deleted",
    )


class RetentionSettings(RetentionPolicy):
    """The hub's retention defaults (channels override them) and when pruning runs."""

    prune_every_minutes: float = Field(default=60, gt=0, description="how often pruning runs")
    batch_size: int = Field(
        default=500, ge=1, le=10_000, description="messages per prune transaction"
    )


class DestinationFile(_Strict):
    """The engine's fields of a destination; the rest belong to its connector."""

    name: str = Field(pattern=NAME_PATTERN)
    type: str
    enabled: bool = True
    filters: list[FilterRule] = Field(default_factory=list)
    transform: TransformConfig | None = None
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    queue: QueueConfig = Field(
        default_factory=QueueConfig,
        description="parallel delivery lanes and the per-key order they keep",
    )
    external: bool = Field(
        default=False,
        description="outside the hospital: images are de-identified (PS3.15) before sending",
    )
    ai: AIModelConfig | None = Field(
        default=None, description="this destination is an AI service running this model"
    )


class ChannelFile(_Strict):
    """One channel file (``channels/*.yaml``) as an analyst writes it."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    enabled: bool = True
    inbound: InboundConfig = Field(default_factory=InboundConfig)
    source: dict[str, Any]
    filters: list[FilterRule] = Field(default_factory=list)
    transform: TransformConfig | None = None
    normalize: NormalizeConfig | None = Field(
        default=None, description="tag morphing of images (dicom-study channels)"
    )
    destinations: list[dict[str, Any]] = Field(min_length=1)
    retention: RetentionPolicy | None = Field(
        default=None,
        description="overrides the hub's retention defaults; a key left out keeps the "
        "hub's value, null keeps for ever",
    )


class ChannelDestination(BaseModel):
    """A validated destination: engine fields plus its connector's validated config."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    spec: DestinationFile
    connector: BaseModel


class Channel(BaseModel):
    """A fully validated channel, ready to deploy."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    path: Path
    file: ChannelFile
    source: BaseModel
    destinations: list[ChannelDestination]

    @property
    def name(self) -> str:
        """The channel's unique name."""
        return self.file.name


def load_settings_file(path: Path | None) -> dict[str, Any]:
    """The raw settings of a hub settings file (``--config``); {} without one."""
    if path is None:
        return {}
    from engine.errors import ConfigError
    from engine.yaml_lines import load_located

    try:
        located = load_located(path.read_text(encoding="utf-8"), str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from exc
    if not isinstance(located.data, dict):
        raise ConfigError(f"{path}: a settings file must be a YAML mapping")
    return dict(located.data)


def validate_settings(values: dict[str, Any], source: str = "settings") -> HubSettings:
    """HubSettings from raw values; an invalid one is a ConfigError naming the field."""
    from pydantic import ValidationError

    from engine.errors import ConfigError

    try:
        return HubSettings.model_validate(values)
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        field = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{source}: {field}: {first['msg']}") from exc


class ClusterSettings(_Strict):
    """Several nodes on one PostgreSQL store (ignored on SQLite: one node)."""

    node_id: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="unique per node; default: host name, process id and a random tag. "
        "Set it to let a restarted node take its own unfinished claims back at once",
    )
    lease_seconds: float = Field(
        default=30,
        ge=2,
        le=3600,
        description="how long a dead node's claimed queue entries wait before another node "
        "delivers them",
    )


class HubSettings(_Strict):
    """Settings of one hub process (``meridian serve``)."""

    channels_dir: Path = Path("channels")
    transforms_dir: Path | None = Field(
        default=None, description="default: the 'transforms' folder next to channels_dir"
    )
    data_dir: Path = Path("var")
    db_url: str | None = Field(default=None, description="default: SQLite under data_dir")
    dicom: DicomListenerConfig = Field(default_factory=DicomListenerConfig)
    uid_root: str = Field(default="1.2.826.0.1.3680043.8.498.", pattern=r"^[0-9.]{2,40}\.$")
    pipeline_threads: int = Field(default=8, ge=1, le=64)
    # One reading worklist for the hub: several channels write it and must agree.
    reading_worklist: ReadingWorklistConfig = Field(default_factory=ReadingWorklistConfig)
    ai_timeout_check_seconds: float = Field(default=5, gt=0)
    reprioritize_seconds: float = Field(default=60, gt=0)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings, description="default: keep everything"
    )
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    def resolved_transforms_dir(self) -> Path:
        """The transforms folder in effect."""
        return self.transforms_dir or self.channels_dir.resolve().parent / "transforms"

    def resolved_db_url(self) -> str:
        """The store URL in effect."""
        return self.db_url or f"sqlite:///{(self.data_dir / 'meridian.db').resolve()}"
