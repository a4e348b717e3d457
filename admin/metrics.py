"""``/metrics`` in the Prometheus text exposition format (version 0.0.4), read from the store.

Counts come from the store, not from in-process counters, so they survive a
restart and agree with what the message browser shows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine, func, select

from admin.metrics_extra import ai_latency_lines, alert_lines, connection_lines
from engine.states import MessageStatus
from engine.store.tables import messages, queue_entries

if TYPE_CHECKING:
    from engine.hub import Hub

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render_metrics(engine: Engine, now: datetime | None = None, hub: Hub | None = None) -> str:
    """The metrics page: messages by channel and status, queue depth and oldest age,
    open alerts, AI latency and (with ``hub``) open MLLP connections and DICOM associations.
    """
    stamp = now or datetime.now(UTC)
    with engine.connect() as conn:
        counts = conn.execute(
            select(messages.c.channel, messages.c.status, func.count())
            .group_by(messages.c.channel, messages.c.status)
            .order_by(messages.c.channel, messages.c.status)
        ).all()
        queues = conn.execute(
            select(
                queue_entries.c.channel,
                queue_entries.c.destination,
                func.count(),
                func.min(queue_entries.c.created_at),
            )
            .where(queue_entries.c.status == MessageStatus.QUEUED.value)
            .group_by(queue_entries.c.channel, queue_entries.c.destination)
            .order_by(queue_entries.c.channel, queue_entries.c.destination)
        ).all()
        extra = alert_lines(conn, _labels) + ai_latency_lines(conn, stamp, _labels)
    lines = [
        "# HELP meridian_messages_total Messages in the store by channel and status.",
        "# TYPE meridian_messages_total gauge",
    ]
    lines += [f"meridian_messages_total{_labels(channel=c, status=s)} {n}" for c, s, n in counts]
    lines += [
        "# HELP meridian_queue_depth Entries waiting in a destination queue.",
        "# TYPE meridian_queue_depth gauge",
    ]
    lines += [
        f"meridian_queue_depth{_labels(channel=c, destination=d)} {n}" for c, d, n, _ in queues
    ]
    lines += [
        "# HELP meridian_queue_oldest_age_seconds Age of the oldest queued entry.",
        "# TYPE meridian_queue_oldest_age_seconds gauge",
    ]
    lines += [
        f"meridian_queue_oldest_age_seconds{_labels(channel=c, destination=d)} "
        f"{_age(stamp, oldest):.3f}"
        for c, d, _, oldest in queues
    ]
    lines += extra + connection_lines(hub, _labels)
    return "\n".join(lines) + "\n"


def _labels(**values: str) -> str:
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in values.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    # The exposition format escapes backslash, double quote and newline in label values.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _age(now: datetime, oldest: datetime | None) -> float:
    if oldest is None:
        return 0.0
    # SQLite returns naive datetimes; everything stored is UTC.
    aware = oldest if oldest.tzinfo is not None else oldest.replace(tzinfo=UTC)
    return max(0.0, (now - aware).total_seconds())
