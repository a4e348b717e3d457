"""AI that is slow or down: requests left unanswered past their model's timeout.

The audit trail already holds what is needed: an ``ai_requested`` event when
a study was delivered to a model, an ``ai_result`` when its answer was
applied. A request is *overdue* when it is the latest request of its study
and model, no result or timeout of that study and model was recorded at or
after it, and it is older than the model's ``timeout_seconds``. Each overdue
request gets one ``ai_timeout`` audit event and one row in ``alerts`` (for the
admin UI); the next check sees the timeout event and does not raise it again.

Nothing else changes: the study is already on the reading worklist at its
normal priority (the worklist never waits for AI), and a result arriving
late is still applied. Messages and logs name the model and the audit event,
never the patient or the study.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Index,
    String,
    Table,
    and_,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from engine.ai_result import AIMode
from engine.audit import AuditEvent, audit_events, record
from engine.config import AIModelConfig
from engine.errors import StoreError
from engine.periodic import PeriodicTask
from engine.store.group_commit import GroupCommitter
from engine.store.schema import Id, metadata

__all__ = [
    "AITimeoutMonitor",
    "Alert",
    "Overdue",
    "acknowledge",
    "alerts",
    "list_alerts",
    "overdue",
    "record_timeouts",
]

log = logging.getLogger(__name__)

Severity = Literal["warning", "error"]

alerts = Table(
    "alerts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("message", String(500), nullable=False, comment="never PHI"),
    Column("acknowledged", Boolean, nullable=False, default=False),
    Index("ix_alerts_open", "acknowledged", "at"),
)

#: Requests older than this are not looked at: they were checked while they aged.
DEFAULT_LOOKBACK = timedelta(days=7)
#: Timeout of a request whose model is no longer configured (AIModelConfig's default).
DEFAULT_TIMEOUT_SECONDS = 600.0

_R = audit_events.alias("request")
_LATER = audit_events.alias("later")
# A request is a "routed" event naming a model (the hub decided to ask it: the
# wait starts even if the AI is down and nothing could be sent) or an
# "ai_requested" one (it was sent). Answered: a result or timeout of the same
# study and model at or after the request, or a newer request (which supersedes
# it: one wait per study and model).
_REQUEST_KINDS = ("routed", "ai_requested")
_ANSWERED = (
    select(_LATER.c.id)
    .where(
        _LATER.c.study_instance_uid == _R.c.study_instance_uid,
        _LATER.c.model == _R.c.model,
        or_(
            and_(_LATER.c.kind.in_(("ai_result", "ai_timeout")), _LATER.c.at >= _R.c.at),
            and_(_LATER.c.kind.in_(_REQUEST_KINDS), _LATER.c.id > _R.c.id),
        ),
    )
    .exists()
)


@dataclass(frozen=True, slots=True)
class Overdue:
    """An AI request past its model's timeout."""

    request_id: int
    study_instance_uid: str
    accession_number: str | None
    channel: str | None
    destination: str | None
    model: str
    model_version: str | None
    requested_at: datetime
    timeout_seconds: float
    mode: AIMode | None  # None: the model is no longer configured


@dataclass(frozen=True, slots=True)
class Alert:
    """A row of ``alerts``."""

    id: int
    at: datetime
    kind: str
    severity: str
    message: str
    acknowledged: bool


def overdue(
    engine: Engine,
    now: datetime,
    models: Mapping[str, AIModelConfig],
    *,
    lookback: timedelta = DEFAULT_LOOKBACK,
) -> list[Overdue]:
    """Unanswered AI requests older than their model's timeout, oldest first.

    A model missing from ``models`` (removed from the channels since) waits
    :data:`DEFAULT_TIMEOUT_SECONDS`: its open requests are still reported.
    """
    now = _utc(now)
    shortest = min([m.timeout_seconds for m in models.values()] + [DEFAULT_TIMEOUT_SECONDS])
    statement = (
        select(_R)
        .where(
            _R.c.kind.in_(_REQUEST_KINDS),
            _R.c.study_instance_uid.is_not(None),
            _R.c.model.is_not(None),
            _R.c.at >= now - lookback,
            _R.c.at <= now - timedelta(seconds=shortest),
            ~_ANSWERED,
        )
        .order_by(_R.c.at, _R.c.id)
    )
    try:
        with engine.connect() as conn:
            rows = conn.execute(statement).mappings().all()
    except SQLAlchemyError as exc:
        raise StoreError(f"AI timeout check failed: {type(exc).__name__}") from exc
    found = (_overdue(row, models.get(row["model"])) for row in rows)
    return [item for item in found if now - item.requested_at >= _seconds(item.timeout_seconds)]


def _overdue(row: Any, config: AIModelConfig | None) -> Overdue:
    return Overdue(
        request_id=int(row["id"]),
        study_instance_uid=row["study_instance_uid"],
        accession_number=row["accession_number"],
        channel=row["channel"],
        destination=row["destination"],
        model=row["model"],
        model_version=row["model_version"],
        requested_at=_utc(row["at"]),
        timeout_seconds=config.timeout_seconds if config else DEFAULT_TIMEOUT_SECONDS,
        mode=config.mode if config else None,
    )


def record_timeouts(conn: Connection, found: Collection[Overdue], now: datetime) -> list[Overdue]:
    """Write an ``ai_timeout`` event and an alert per request still unanswered; returns those.

    Checked again inside the transaction: a result may have been applied
    since :func:`overdue` looked, and then no timeout is recorded.
    """
    now = _utc(now)
    still_open = _still_open(conn, [item.request_id for item in found])
    recorded = [item for item in found if item.request_id in still_open]
    for item in recorded:
        record(conn, _timeout_event(item, now))
        values = {
            "at": now,
            "kind": "ai_timeout",
            "severity": _severity(item),
            "message": _message(item),
            "acknowledged": False,
        }
        _execute(conn, insert(alerts).values(**values))
    return recorded


def _still_open(conn: Connection, request_ids: list[int]) -> set[int]:
    if not request_ids:
        return set()
    statement = select(_R.c.id).where(_R.c.id.in_(request_ids), ~_ANSWERED)
    return {int(row[0]) for row in _execute(conn, statement)}


def _timeout_event(item: Overdue, now: datetime) -> AuditEvent:
    return AuditEvent(
        kind="ai_timeout",
        at=now,
        study_instance_uid=item.study_instance_uid,
        accession_number=item.accession_number,
        channel=item.channel,
        destination=item.destination,
        model=item.model,
        model_version=item.model_version,
        detail={
            "request_id": item.request_id,
            "requested_at": item.requested_at.isoformat(),
            "timeout_seconds": item.timeout_seconds,
            "waited_seconds": round((now - item.requested_at).total_seconds(), 1),
            "mode": item.mode,
        },
    )


def _severity(item: Overdue) -> Severity:
    # Readers rely on triage/assistant results; a missing shadow result only affects evaluation.
    return "error" if item.mode in ("triage", "assistant") else "warning"


def _message(item: Overdue) -> str:
    version = f" {item.model_version}" if item.model_version else ""
    where = f" via {item.channel}/{item.destination}" if item.channel else ""
    return (
        f"AI model {item.model}{version}{where}: no result within {item.timeout_seconds:g} s "
        f"(audit event {item.request_id}); the study keeps its normal reading priority"
    )[:500]


def list_alerts(
    engine: Engine, *, include_acknowledged: bool = False, limit: int = 100
) -> list[Alert]:
    """Alerts, newest first; unacknowledged ones only by default."""
    statement = select(alerts).order_by(alerts.c.at.desc(), alerts.c.id.desc()).limit(limit)
    if not include_acknowledged:
        statement = statement.where(alerts.c.acknowledged.is_(False))
    try:
        with engine.connect() as conn:
            rows = conn.execute(statement).mappings().all()
    except SQLAlchemyError as exc:
        raise StoreError(f"alert query failed: {type(exc).__name__}") from exc
    return [
        Alert(
            id=int(r["id"]),
            at=_utc(r["at"]),
            kind=r["kind"],
            severity=r["severity"],
            message=r["message"],
            acknowledged=bool(r["acknowledged"]),
        )
        for r in rows
    ]


def acknowledge(conn: Connection, alert_id: int) -> bool:
    """Mark an alert seen (inside the caller's transaction); False if there is no such alert."""
    statement = update(alerts).where(alerts.c.id == alert_id).values(acknowledged=True)
    return int(_execute(conn, statement).rowcount) > 0


class AITimeoutMonitor(PeriodicTask):
    """Checks for overdue AI requests every ``interval_seconds``; a warning log per timeout.

    ``models`` is read at every check, so the hub's live registry
    (``services.ai_models``) can be passed as is.
    """

    def __init__(
        self,
        engine: Engine,
        committer: GroupCommitter,
        models: Mapping[str, AIModelConfig],
        interval_seconds: float = 5,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__("ai-timeout-monitor", interval_seconds, self.run_once)
        self._engine = engine
        self._committer = committer
        self._models = models
        self._clock = clock

    async def run_once(self) -> list[Overdue]:
        """One check; returns the timeouts it recorded."""
        now = self._clock()
        found = await asyncio.to_thread(overdue, self._engine, now, dict(self._models))
        if not found:
            return []
        recorded = await self._committer.run_async(lambda conn: record_timeouts(conn, found, now))
        for item in recorded:
            log.warning(
                "AI model %s %s: no result within %g s (audit event %d); alert raised",
                item.model, item.model_version or "", item.timeout_seconds, item.request_id,
            )  # fmt: skip
        return recorded


def _execute(conn: Connection, statement: Any) -> Any:
    try:
        return conn.execute(statement)
    except SQLAlchemyError as exc:
        raise StoreError(f"AI timeout write failed: {type(exc).__name__}") from exc


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
