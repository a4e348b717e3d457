"""The ``reading_items`` table, its row type, and how AI results are summarized on a row.

One row per study the radiologists have to read (the reading worklist; the
Modality Worklist of orders is another table). ``priority_score`` is indexed:
the worklist is read in its order. A row in status ``PENDING`` is a
placeholder: an AI result arrived before its study was complete; it holds the
AI summary until the study arrives and is never shown as work.

``ai_findings`` summarizes each model's latest result, by model name::

    {"ich-detect": {"version": "2.1", "status": "completed", "produced_at": "...",
                    "critical": true, "score": 0.97,
                    "findings": [{"code": "...", "label": "...", "score": 0.97,
                                  "critical": true}]}}

A newer result of a model replaces its older one (a re-run may withdraw a
critical finding); ``ai_critical``/``ai_score`` are computed over all models.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    RowMapping,
    String,
    Table,
    Text,
)

from engine.ai_result import AIResult
from engine.store.schema import Id, metadata

__all__ = [
    "OPEN_STATUSES",
    "ReadingItem",
    "ReadingStatus",
    "merge_result",
    "reading_items",
    "summary_flags",
    "utc",
]

ReadingStatus = Literal["PENDING", "UNREAD", "IN_PROGRESS", "READ"]
#: Statuses of work still to do (PENDING placeholders are not work yet; READ is done).
OPEN_STATUSES: tuple[ReadingStatus, ...] = ("UNREAD", "IN_PROGRESS")

reading_items = Table(
    "reading_items",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    # PHI-adjacent identifiers: shown to readers, never logged.
    Column("accession_number", String(64)),
    Column("patient_id", String(64)),
    Column("modality", String(16), nullable=False, server_default=""),
    Column("body_part", String(64), nullable=False, server_default=""),
    Column("description", String(200), nullable=False, server_default=""),
    Column("order_priority", String(16), nullable=False),
    Column("subspecialty", String(64)),
    Column("received_at", DateTime(timezone=True), comment="study completed; NULL while PENDING"),
    Column("ai_critical", Boolean, nullable=False),
    Column("ai_score", Float),
    Column("ai_findings", JSON, nullable=False),
    # Assistant-mode models draft the report's preliminary findings text.
    Column("report_draft", Text, nullable=True),
    Column("priority_score", Float, nullable=False),
    Column("sla_due_at", DateTime(timezone=True)),
    Column("status", String(16), nullable=False),
    Column("assigned_to", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_reading_items_priority", "priority_score"),
    # Open work by status (reprioritize, listings) and each reader's workload.
    Index("ix_reading_items_status", "status", "assigned_to"),
    Index("ix_reading_items_accession", "accession_number"),
)


def utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive value (SQLite returns those) is taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class ReadingItem:
    """One row of the reading worklist."""

    id: int
    study_instance_uid: str
    accession_number: str | None
    patient_id: str | None
    modality: str
    body_part: str
    description: str
    order_priority: str
    subspecialty: str | None
    received_at: datetime | None
    ai_critical: bool
    ai_score: float | None
    ai_findings: dict[str, Any]
    priority_score: float
    sla_due_at: datetime | None
    status: ReadingStatus
    assigned_to: str | None
    updated_at: datetime
    report_draft: str | None = None

    @classmethod
    def from_row(cls, row: RowMapping) -> ReadingItem:
        """An item from a ``reading_items`` row (datetimes made UTC-aware)."""
        return cls(
            id=int(row["id"]),
            study_instance_uid=row["study_instance_uid"],
            accession_number=row["accession_number"],
            patient_id=row["patient_id"],
            modality=row["modality"],
            body_part=row["body_part"],
            description=row["description"],
            order_priority=row["order_priority"],
            subspecialty=row["subspecialty"],
            received_at=_maybe_utc(row["received_at"]),
            ai_critical=bool(row["ai_critical"]),
            ai_score=row["ai_score"],
            ai_findings=dict(row["ai_findings"] or {}),
            priority_score=float(row["priority_score"]),
            sla_due_at=_maybe_utc(row["sla_due_at"]),
            status=row["status"],
            assigned_to=row["assigned_to"],
            updated_at=utc(row["updated_at"]),
            report_draft=row["report_draft"],
        )


def _maybe_utc(value: datetime | None) -> datetime | None:
    return utc(value) if value is not None else None


def merge_result(summary: dict[str, Any], result: AIResult) -> dict[str, Any] | None:
    """``summary`` with ``result`` as its model's entry; None if a newer one is already there.

    Results can arrive out of order (retries, two channels): the one produced
    last wins, so an older answer never overwrites a re-run's.
    """
    current = summary.get(result.model)
    produced = utc(result.produced_at)
    if current is not None and datetime.fromisoformat(current["produced_at"]) > produced:
        return None
    findings = [
        {"code": f.code, "label": f.label, "score": f.score, "critical": f.critical}
        for f in result.findings
    ]
    entry = {
        "version": result.model_version,
        "status": result.status,
        "produced_at": produced.isoformat(),
        "critical": result.critical,
        "score": max((f.score for f in result.findings), default=None),
        "findings": findings,
    }
    return {**summary, result.model: entry}


def summary_flags(summary: dict[str, Any]) -> tuple[bool, float | None]:
    """Whether any model reports a critical finding, and the highest score of any model."""
    critical = any(bool(entry.get("critical")) for entry in summary.values())
    scores = [entry["score"] for entry in summary.values() if entry.get("score") is not None]
    return critical, (max(scores) if scores else None)


def draft_report(model: str, entry: dict[str, Any]) -> str:
    """The preliminary findings text an assistant-mode model drafts (never final)."""
    lines = [
        "PRELIMINARY - drafted from AI results, not yet reviewed by a radiologist.",
        f"{model} {entry['version']} ({entry['produced_at'][:16].replace('T', ' ')} UTC):",
    ]
    findings = entry.get("findings") or []
    if not findings:
        lines.append("- No finding reported.")
    for finding in findings:
        flag = ", CRITICAL" if finding.get("critical") else ""
        lines.append(f"- {finding['label']}: score {finding['score']:.2f}{flag}")
    return "\n".join(lines)
