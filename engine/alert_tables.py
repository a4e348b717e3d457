"""Bookkeeping of alerting, next to the ``alerts`` table (engine/ai_timeouts.py) the admin shows.

``alert_facts``: channel, destination and counts of the alerts the scheduled
checks raise (an alert's ``message`` is text; notifiers send these as fields).
``alert_conditions``: which conditions are present now, so one is not raised
again at every check. ``alert_checks``: when each rule last looked.
``alert_notifications``: which notifier has sent which alert; an alert a
notifier has not sent is tried again at the next check.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    PrimaryKeyConstraint,
    String,
    Table,
)

from engine.ai_timeouts import alerts
from engine.store.schema import Id, metadata

__all__ = [
    "alert_checks",
    "alert_conditions",
    "alert_facts",
    "alert_notifications",
    "create_tables",
]

alert_facts = Table(
    "alert_facts",
    metadata,
    Column("alert_id", Id, ForeignKey(alerts.c.id, ondelete="CASCADE"), primary_key=True),
    Column("channel", String(64)),
    Column("destination", String(64)),
    Column("detail", JSON, nullable=False, comment="counts and ages, never PHI"),
)

alert_conditions = Table(
    "alert_conditions",
    metadata,
    Column("key", String(200), primary_key=True, comment="e.g. queue_age:orders/ris"),
    Column("active", Boolean, nullable=False),
    Column("raised_at", DateTime(timezone=True), nullable=False),
    Column("last_alert_at", DateTime(timezone=True), nullable=False),
)

alert_checks = Table(
    "alert_checks",
    metadata,
    Column("rule", String(32), primary_key=True),
    Column("checked_at", DateTime(timezone=True), nullable=False),
)

alert_notifications = Table(
    "alert_notifications",
    metadata,
    Column("alert_id", Id, ForeignKey(alerts.c.id, ondelete="CASCADE"), nullable=False),
    Column("notifier", String(32), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("alert_id", "notifier"),
)


def create_tables(engine: Engine) -> None:
    """Create these tables if missing (a store opened before alerting existed)."""
    metadata.create_all(
        engine, tables=[alerts, alert_facts, alert_conditions, alert_checks, alert_notifications]
    )
