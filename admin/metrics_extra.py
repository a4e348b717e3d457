"""Parts of ``/metrics`` beyond messages and queues: alerts, AI latency, live connections.

AI latency is read from the audit trail: for each ``ai_result`` of the last
hour, the seconds since the latest ``ai_requested`` of the same study and
model before it. It is exposed as gauges over that hour (quantiles and a
count per model), not as a cumulative Prometheus summary: the store, not a
process counter, is the source, so the numbers agree across restarts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select

from engine.ai_timeouts import alerts
from engine.audit import audit_events

if TYPE_CHECKING:
    from engine.hub import Hub

__all__ = ["ai_latency_lines", "alert_lines", "connection_lines"]

Labels = Callable[..., str]

QUANTILES = (0.5, 0.9, 0.99)
SEVERITIES = ("warning", "error")
_WINDOW = timedelta(hours=1)


def alert_lines(conn: Connection, labels: Labels) -> list[str]:
    """Unacknowledged alerts by severity (every severity listed, 0 when none)."""
    counts: dict[str, int] = dict(
        conn.execute(
            select(alerts.c.severity, func.count())
            .where(alerts.c.acknowledged.is_(False))
            .group_by(alerts.c.severity)
        ).all()
    )
    lines = [
        "# HELP meridian_alerts_open Alerts not acknowledged yet.",
        "# TYPE meridian_alerts_open gauge",
    ]
    for severity in sorted(set(SEVERITIES) | set(counts)):
        lines.append(f"meridian_alerts_open{labels(severity=severity)} {counts.get(severity, 0)}")
    return lines


def ai_latency_lines(conn: Connection, now: datetime, labels: Labels) -> list[str]:
    """Seconds from AI request to applied result over the last hour, per model."""
    by_model: dict[str, list[float]] = {}
    for model, requested, answered in conn.execute(_latency_query(now)).all():
        if requested is not None:
            seconds = (_aware(answered) - _aware(requested)).total_seconds()
            by_model.setdefault(model, []).append(max(0.0, seconds))
    lines = [
        "# HELP meridian_ai_latency_seconds AI request to result, last hour (quantiles).",
        "# TYPE meridian_ai_latency_seconds gauge",
    ]
    for model in sorted(by_model):
        values = sorted(by_model[model])
        lines += [
            f"meridian_ai_latency_seconds{labels(model=model, quantile=str(q))} "
            f"{_quantile(values, q):.3f}"
            for q in QUANTILES
        ]
    lines += [
        "# HELP meridian_ai_results_last_hour AI results applied in the last hour.",
        "# TYPE meridian_ai_results_last_hour gauge",
    ]
    lines += [
        f"meridian_ai_results_last_hour{labels(model=model)} {len(by_model[model])}"
        for model in sorted(by_model)
    ]
    return lines


def _latency_query(now: datetime) -> Any:
    result = audit_events.alias("result")
    request = audit_events.alias("request")
    # The study index (study, model, kind) answers the correlated lookup.
    requested_at = (
        select(func.max(request.c.at))
        .where(
            request.c.kind == "ai_requested",
            request.c.study_instance_uid == result.c.study_instance_uid,
            request.c.model == result.c.model,
            request.c.at <= result.c.at,
        )
        .scalar_subquery()
    )
    return select(result.c.model, requested_at, result.c.at).where(
        result.c.kind == "ai_result",
        result.c.at >= now - _WINDOW,
        result.c.model.is_not(None),
    )


def _quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted ``values``."""
    rank = max(1, math.ceil(len(values) * q))
    return values[min(len(values), rank) - 1]


def connection_lines(hub: Hub | None, labels: Labels) -> list[str]:
    """Open MLLP connections per channel and open DICOM associations (when the hub runs here)."""
    if hub is None:
        return []
    lines = [
        "# HELP meridian_mllp_connections Open MLLP client connections per source channel.",
        "# TYPE meridian_mllp_connections gauge",
    ]
    sources: dict[str, Any] = dict(getattr(hub, "sources", {}))
    for channel in sorted(sources):
        count = getattr(sources[channel], "open_connections", None)
        if isinstance(count, int):
            lines.append(f"meridian_mllp_connections{labels(channel=channel)} {count}")
    mwl = getattr(hub, "mwl", None)
    listener = getattr(mwl, "listener", None)
    if listener is not None:
        ae_title = str(listener.config.ae_title)
        lines += [
            "# HELP meridian_dicom_associations Open DICOM associations of the hub's listener.",
            "# TYPE meridian_dicom_associations gauge",
            f"meridian_dicom_associations{labels(ae_title=ae_title)} "
            f"{listener.active_associations}",
        ]
    return lines + _refusal_lines(sources, listener, labels)


def _refusal_lines(sources: dict[str, Any], listener: Any, labels: Labels) -> list[str]:
    """Connections refused because the peer is outside ``allowed_networks``.

    A counter of the running listener: it starts again at 0 when a channel's source
    is restarted (Prometheus treats that as a counter reset).
    """
    counts = [
        (f"channel:{channel}", getattr(sources[channel], "refused_by_allowlist", None))
        for channel in sorted(sources)
    ]
    counts.append(("dicom", getattr(listener, "refused_by_allowlist", None)))
    lines = [
        "# HELP meridian_allowlist_refused_total Connections refused: peer outside the allowlist.",
        "# TYPE meridian_allowlist_refused_total counter",
    ]
    lines += [
        f"meridian_allowlist_refused_total{labels(listener=name)} {count}"
        for name, count in counts
        if isinstance(count, int)
    ]
    return lines


def _aware(value: datetime) -> datetime:
    # SQLite returns naive datetimes; everything stored is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
