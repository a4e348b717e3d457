"""The audit trail: what the hub did with each study and what AI said, queryable later.

One row per event in ``audit_events``, written with :func:`record` inside the
caller's transaction (the one that did the work), so the trail and the work
commit together. Events name studies by Study Instance UID and accession
number, never by patient: ``detail`` refuses patient attributes.

Kinds:

=============================  =============================================================
``routed``                     a message was queued for a destination (``rule``: the filters)
``ai_requested``               a study was sent to an AI model (``model``/``model_version``)
``ai_result``                  what came back: finding count, critical, scores, mode
``ai_timeout``                 no result within the model's timeout (see engine.ai_timeouts)
``worklist_added``             a study was put on the reading worklist
``worklist_reprioritized``     an AI result was applied: ``detail.old`` → ``detail.new``
``worklist_untouched_shadow``  a shadow-mode result: the worklist was left as it was
=============================  =============================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import to_jsonable_python
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Index,
    String,
    Table,
    insert,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from engine.errors import StoreError
from engine.store.schema import Id, metadata
from engine.study_batch import StudyBatch

if TYPE_CHECKING:
    from engine.config import AIModelConfig

__all__ = [
    "AUDIT_KINDS",
    "AuditEvent",
    "AuditKind",
    "ai_requested_event",
    "audit_events",
    "audit_op",
    "format_events",
    "query",
    "record",
    "routed_event",
]

AuditKind = Literal[
    "routed",
    "ai_requested",
    "ai_result",
    "ai_timeout",
    "worklist_added",
    "worklist_reprioritized",
    "worklist_untouched_shadow",
]
AUDIT_KINDS: tuple[str, ...] = get_args(AuditKind)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("study_instance_uid", String(64)),
    Column("accession_number", String(64)),
    Column("channel", String(64)),
    Column("destination", String(64)),
    Column("kind", String(32), nullable=False),
    Column("rule", String(200)),
    Column("model", String(128)),
    Column("model_version", String(64)),
    Column("detail", JSON, nullable=False),
    # A study's trail, and the AI-timeout check (request vs later result of a model).
    Index("ix_audit_events_study", "study_instance_uid", "model", "kind"),
    # Queries by kind over a time range (the timeout check's outer scan, reports).
    Index("ix_audit_events_kind_at", "kind", "at"),
    Index("ix_audit_events_at", "at"),
)

# Patient attributes that must never reach the trail (compared without case, '_' or ' ').
_PATIENT_KEYS = frozenset(
    {
        "patientname",
        "patientsname",
        "otherpatientnames",
        "patientid",
        "otherpatientids",
        "patientbirthdate",
        "birthdate",
        "patientaddress",
        "patientsex",
        "patientage",
        "mrn",
    }
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    """UTC; a naive value (SQLite gives those back) is taken as UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class AuditEvent(BaseModel):
    """One event of the trail (``id`` is set once stored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: AuditKind
    at: datetime = Field(default_factory=_utc_now)
    study_instance_uid: str | None = Field(default=None, max_length=64)
    accession_number: str | None = Field(default=None, max_length=64)
    channel: str | None = Field(default=None, max_length=64)
    destination: str | None = Field(default=None, max_length=64)
    rule: str | None = Field(default=None, max_length=200)
    model: str | None = Field(default=None, max_length=128)
    model_version: str | None = Field(default=None, max_length=64)
    detail: dict[str, Any] = Field(default_factory=dict)
    id: int | None = None

    @field_validator("at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        # Stored as UTC everywhere: SQLite keeps no offset, so mixed zones would misorder.
        return _as_utc(value)

    @field_validator("detail")
    @classmethod
    def _no_patient_data(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_keys(value)
        return to_jsonable_python(value)  # type: ignore[no-any-return]


def _check_keys(value: object) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key).lower().replace("_", "").replace(" ", "") in _PATIENT_KEYS:
                raise ValueError(f"audit detail must not carry patient data ('{key}')")
            _check_keys(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_keys(item)


# -- writing -------------------------------------------------------------------------------


def record(conn: Connection, event: AuditEvent) -> int:
    """Store ``event`` inside the caller's transaction (never commits); returns its id."""
    values = event.model_dump(exclude={"id"})
    try:
        result = conn.execute(insert(audit_events).values(**values))
    except SQLAlchemyError as exc:
        raise StoreError(f"audit write failed: {type(exc).__name__}") from exc
    key = result.inserted_primary_key
    if key is None:
        raise StoreError("audit write returned no id")
    return int(key[0])


def audit_op(*events: AuditEvent) -> Callable[[Connection], list[int]]:
    """A group-committer write op storing ``events``: ``committer.run(audit_op(event))``."""

    def op(conn: Connection) -> list[int]:
        return [record(conn, event) for event in events]

    return op


def routed_event(
    *,
    channel: str,
    destination: str,
    rules: Collection[str],
    study_instance_uid: str | None,
    accession_number: str | None = None,
    at: datetime | None = None,
    ai: AIModelConfig | None = None,
) -> AuditEvent:
    """A ``routed`` event: the message went to ``destination`` because ``rules`` passed.

    ``rules`` are the destination's filter names (empty: it takes everything).
    For an AI destination, ``ai`` names the model: the wait for its result
    starts here (see engine.ai_timeouts), even if the AI turns out to be down.
    """
    return AuditEvent(
        kind="routed",
        at=at or _utc_now(),
        study_instance_uid=study_instance_uid,
        accession_number=_clip(accession_number),
        channel=channel,
        destination=destination,
        rule=(", ".join(rules) or "(no filter)")[:200],
        model=ai.model if ai else None,
        model_version=ai.version if ai else None,
    )


def ai_requested_event(
    payload: str,
    *,
    channel: str,
    destination: str,
    ai: AIModelConfig,
    at: datetime | None = None,
) -> AuditEvent | None:
    """The ``ai_requested`` event of a StudyBatch payload delivered to an AI destination.

    Record it when the delivery succeeded (in the transaction marking the
    entry sent) with the hub's own Study Instance UID (the payload's, before
    any de-identification): results come back re-identified and are matched
    on it. None when the payload is not a StudyBatch (nothing to wait for).
    """
    try:
        batch = StudyBatch.model_validate_json(payload)
    except ValidationError:
        return None
    return AuditEvent(
        kind="ai_requested",
        at=at or _utc_now(),
        study_instance_uid=batch.study_instance_uid,
        accession_number=_clip(str(batch.metadata.get("AccessionNumber") or "")),
        channel=channel,
        destination=destination,
        model=ai.model,
        model_version=ai.version,
        detail={
            "mode": ai.mode,
            "timeout_seconds": ai.timeout_seconds,
            "batch": batch.batch,
            "instances": len(batch.instances),
        },
    )


def _clip(value: str | None) -> str | None:
    return value[:64] if value else None


# -- reading -------------------------------------------------------------------------------


def query(
    engine: Engine,
    *,
    study_instance_uid: str | None = None,
    accession_number: str | None = None,
    kind: AuditKind | Collection[AuditKind] | None = None,
    model: str | None = None,
    channel: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 500,
    newest_first: bool = False,
) -> list[AuditEvent]:
    """Events matching every filter given, in time order (``since`` ≤ at < ``until``).

    ``limit`` counts from the oldest (from the newest with ``newest_first``).
    """
    table = audit_events
    equal = {
        "study_instance_uid": study_instance_uid,
        "accession_number": accession_number,
        "model": model,
        "channel": channel,
    }
    conditions = [table.c[name] == value for name, value in equal.items() if value is not None]
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        conditions.append(table.c.kind.in_(kinds))
    if since is not None:
        conditions.append(table.c.at >= _as_utc(since))
    if until is not None:
        conditions.append(table.c.at < _as_utc(until))
    order = (table.c.at.desc(), table.c.id.desc()) if newest_first else (table.c.at, table.c.id)
    statement = select(table).where(*conditions).order_by(*order).limit(limit)
    try:
        with engine.connect() as conn:
            rows = conn.execute(statement).mappings().all()
    except SQLAlchemyError as exc:
        raise StoreError(f"audit query failed: {type(exc).__name__}") from exc
    return [AuditEvent.model_validate(dict(row)) for row in rows]


def format_events(events: Collection[AuditEvent]) -> str:
    """Events as text, one line each, for ``meridian audit`` (no patient data to show)."""
    if not events:
        return "no audit events"
    return "\n".join(_line(event) for event in events)


def _line(event: AuditEvent) -> str:
    parts = [event.at.strftime("%Y-%m-%dT%H:%M:%SZ"), f"{event.kind:<26}"]
    if event.study_instance_uid:
        parts.append(f"study={event.study_instance_uid}")
    if event.accession_number:
        parts.append(f"acc={event.accession_number}")
    if event.channel or event.destination:
        parts.append(f"at={event.channel or '-'}/{event.destination or '-'}")
    if event.rule:
        parts.append(f"rule={event.rule!r}")
    if event.model:
        parts.append(f"model={event.model} {event.model_version or ''}".rstrip())
    if event.detail:
        parts.append(json.dumps(event.detail, sort_keys=True, separators=(",", ":")))
    return "  ".join(parts)
