"""The alert check: rules over the store, one alert per new condition, notifiers told.

Rules (see :class:`engine.alert_config.AlertSettings`):

* ``errors``: messages or deliveries of a channel that went to ERROR since the
  previous check;
* ``queue_age``: a destination whose oldest QUEUED entry is older than
  ``queue_age_minutes``;
* AI timeouts are raised by engine/ai_timeouts.py into the same ``alerts``
  table; this job only notifies them.

A condition found at a check raises one row in ``alerts`` (the admin UI's
list) with its facts in ``alert_facts``. While it stays present it is not
raised again, except every ``rearm_minutes``; once a check no longer finds it,
it is cleared and may be raised afresh. Then each notifier is sent every
recent, unacknowledged alert it has not sent yet (``alert_notifications``):
a notifier that fails keeps its alerts for the next check and never stops
the others or the job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, select, update

from engine.ai_timeouts import alerts
from engine.alert_config import AlertSettings
from engine.alert_notify import AlertPayload, Notifier, NotifyError, build_notifier
from engine.alert_tables import alert_checks, alert_conditions, alert_facts, alert_notifications
from engine.states import MessageStatus
from engine.store.group_commit import GroupCommitter
from engine.store.tables import messages, queue_entries

__all__ = ["AlertJob", "AlertRun", "Condition", "error_conditions", "queue_age_conditions"]

log = logging.getLogger(__name__)

_ERROR = MessageStatus.ERROR.value
_QUEUED = MessageStatus.QUEUED.value
#: Most alerts one notification carries; the rest go at the next check.
MAX_BATCH = 200
#: The errors window starts this much before the previous check: a message stamped
#: just before that check but committed just after it is still seen (once).
ERROR_GRACE = timedelta(seconds=10)


@dataclass(frozen=True)
class Condition:
    """Something wrong now, named by ``key`` (one alert while it lasts)."""

    key: str
    kind: str
    severity: str
    message: str
    channel: str | None = None
    destination: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class AlertRun:
    """What one check did."""

    raised: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _State:
    active: bool
    last_alert_at: datetime


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _error_counts(
    conn: Connection, since: datetime, now: datetime, channel: str | None = None
) -> dict[str, tuple[int, int]]:
    """(messages, their failed deliveries) per channel, of messages gone to ERROR in (since, now].

    A message is ERROR when its processing or one of its deliveries failed (once
    none is still queued); both are found from the messages' status index.
    """
    m, q = messages.c, queue_entries.c
    where = [m.status == _ERROR, m.updated_at > since, m.updated_at <= now]
    if channel is not None:
        where.append(m.channel == channel)
    failed = func.count(q.id)
    query = (
        select(m.channel, func.count(func.distinct(m.id)), failed)
        .select_from(
            messages.outerjoin(queue_entries, and_(q.message_id == m.id, q.status == _ERROR))
        )
        .where(*where)
        .group_by(m.channel)
    )
    return {name: (int(count), int(deliveries)) for name, count, deliveries in conn.execute(query)}


def _error_condition(channel: str, counts: tuple[int, int], since: datetime) -> Condition:
    failed_messages, failed_deliveries = counts
    return Condition(
        key=f"errors:{channel}",
        kind="errors",
        severity="error",
        message=f"channel {channel}: {failed_messages} message(s) in ERROR and "
        f"{failed_deliveries} failed delivery(ies) since {since:%Y-%m-%d %H:%M:%S} UTC",
        channel=channel,
        detail={
            "errored_messages": failed_messages,
            "failed_deliveries": failed_deliveries,
            "since": since.isoformat(),
        },
    )


def error_conditions(
    conn: Connection,
    since: datetime,
    now: datetime,
    rearm_since: Callable[[str], datetime | None] = lambda _key: None,
) -> list[Condition]:
    """One condition per channel with errors since ``since``.

    A condition about to be re-sent (``rearm_since`` gives its previous alert
    time) counts everything since that alert, not only since the last check.
    """
    found = []
    for channel, recent in sorted(_error_counts(conn, since, now).items()):
        previous = rearm_since(f"errors:{channel}")
        start, counts = since, recent
        if previous is not None and previous < since:
            start = previous
            counts = _error_counts(conn, start, now, channel).get(channel, recent)
        found.append(_error_condition(channel, counts, start))
    return found


def queue_age_conditions(conn: Connection, now: datetime, minutes: float) -> list[Condition]:
    """One condition per destination whose oldest QUEUED entry waits longer than ``minutes``."""
    c = queue_entries.c
    query = (
        select(c.channel, c.destination, func.min(c.created_at), func.count())
        .where(c.status == _QUEUED)
        .group_by(c.channel, c.destination)
        .having(func.min(c.created_at) < now - timedelta(minutes=minutes))
        .order_by(c.channel, c.destination)
    )
    found = []
    for channel, destination, oldest, count in conn.execute(query):
        age = (now - _utc(oldest)).total_seconds() / 60
        found.append(
            Condition(
                key=f"queue_age:{channel}/{destination}",
                kind="queue_age",
                severity="warning",
                message=f"{channel}/{destination}: oldest queued entry waits {age:.0f} min "
                f"(threshold {minutes:g} min), {count} queued",
                channel=channel,
                destination=destination,
                detail={
                    "queued": int(count),
                    "oldest_age_minutes": round(age, 1),
                    "threshold_minutes": minutes,
                },
            )
        )
    return found


class AlertJob:
    """One alert check (:meth:`run_once`), run by the hub's scheduler."""

    def __init__(
        self,
        engine: Engine,
        committer: GroupCommitter,
        settings: AlertSettings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        notifiers: Sequence[Notifier] | None = None,
    ) -> None:
        self._engine = engine
        self._committer = committer
        self._settings = settings
        self._clock = clock
        self.notifiers = (
            list(notifiers)
            if notifiers is not None
            else [build_notifier(n) for n in settings.notifiers]
        )

    async def run_once(self) -> AlertRun:
        """Evaluate the rules, record new alerts, then notify; returns what it did."""
        now = _utc(self._clock())
        run = AlertRun()
        found, state = await asyncio.to_thread(self._evaluate, now)
        raised, run.cleared = self._decide(found, state, now)
        run.raised = [c.key for c in raised]
        if raised or run.cleared or self._settings.errors:
            await self._committer.run_async(lambda conn: _record(conn, raised, run.cleared, now))
        for key in run.cleared:
            log.info("alert condition cleared: %s", key)
        for notifier in self.notifiers:
            await self._notify(notifier, now, run)
        return run

    def _evaluate(self, now: datetime) -> tuple[list[Condition], dict[str, _State]]:
        settings = self._settings
        with self._engine.connect() as conn:
            state = {
                row.key: _State(bool(row.active), _utc(row.last_alert_at))
                for row in conn.execute(select(alert_conditions))
            }
            found: list[Condition] = []
            if settings.errors:
                checked = _errors_checked(conn)
                since = (
                    checked or now - timedelta(minutes=settings.check_every_minutes)
                ) - ERROR_GRACE
                due = lambda key: _due(state, key, now, settings)  # noqa: E731
                found += error_conditions(conn, since, now, due)
            if settings.queue_age_minutes is not None:
                found += queue_age_conditions(conn, now, settings.queue_age_minutes)
        return found, state

    def _decide(
        self, found: list[Condition], state: dict[str, _State], now: datetime
    ) -> tuple[list[Condition], list[str]]:
        raised = [
            c
            for c in found
            if c.key not in state
            or not state[c.key].active
            or _due(state, c.key, now, self._settings) is not None
        ]
        present = {c.key for c in found}
        cleared = sorted(k for k, s in state.items() if s.active and k not in present)
        return raised, cleared

    async def _notify(self, notifier: Notifier, now: datetime, run: AlertRun) -> None:
        since = now - timedelta(hours=self._settings.lookback_hours)
        pending = await asyncio.to_thread(_unsent, self._engine, notifier.key, since)
        if not pending:
            return
        try:
            await notifier.send(pending)
        except Exception as exc:
            # Our own errors carry no PHI (nor do alerts); any other only by type.
            text = str(exc) if isinstance(exc, NotifyError) else type(exc).__name__
            log.warning(
                "alerts: notifier %s failed (%s); %d alert(s) kept for the next check",
                notifier.key, text, len(pending),
            )  # fmt: skip
            run.failed.append(notifier.key)
            return
        ids = [a.id for a in pending]
        await self._committer.run_async(lambda conn: _mark_sent(conn, notifier.key, ids, now))
        run.sent[notifier.key] = len(ids)


def _errors_checked(conn: Connection) -> datetime | None:
    checked = conn.execute(
        select(alert_checks.c.checked_at).where(alert_checks.c.rule == "errors")
    ).scalar()
    return _utc(checked) if checked is not None else None


def _due(
    state: dict[str, _State], key: str, now: datetime, settings: AlertSettings
) -> datetime | None:
    """The last alert time of an active condition due to be sent again, else None."""
    current = state.get(key)
    if current is None or not current.active or settings.rearm_minutes is None:
        return None
    if now - current.last_alert_at >= timedelta(minutes=settings.rearm_minutes):
        return current.last_alert_at
    return None


def _record(conn: Connection, raised: list[Condition], cleared: list[str], now: datetime) -> None:
    for condition in raised:
        alert_id = conn.execute(
            insert(alerts).values(
                at=now,
                kind=condition.kind,
                severity=condition.severity,
                message=condition.message[:500],
                acknowledged=False,
            )
        ).inserted_primary_key
        assert alert_id is not None
        conn.execute(
            insert(alert_facts).values(
                alert_id=alert_id[0],
                channel=condition.channel,
                destination=condition.destination,
                detail=condition.detail,
            )
        )
        _upsert(conn, condition.key, now)
    if cleared:
        conn.execute(
            update(alert_conditions).where(alert_conditions.c.key.in_(cleared)).values(active=False)
        )
    checked = conn.execute(
        update(alert_checks).where(alert_checks.c.rule == "errors").values(checked_at=now)
    )
    if checked.rowcount == 0:
        conn.execute(insert(alert_checks).values(rule="errors", checked_at=now))


def _upsert(conn: Connection, key: str, now: datetime) -> None:
    table = alert_conditions
    current = conn.execute(select(table.c.active).where(table.c.key == key)).first()
    if current is None:
        conn.execute(insert(table).values(key=key, active=True, raised_at=now, last_alert_at=now))
    elif current.active:
        conn.execute(update(table).where(table.c.key == key).values(last_alert_at=now))
    else:
        conn.execute(
            update(table)
            .where(table.c.key == key)
            .values(active=True, raised_at=now, last_alert_at=now)
        )


def _unsent(engine: Engine, notifier: str, since: datetime) -> list[AlertPayload]:
    sent = (
        select(alert_notifications.c.alert_id)
        .where(
            alert_notifications.c.alert_id == alerts.c.id,
            alert_notifications.c.notifier == notifier,
        )
        .exists()
    )
    query = (
        select(alerts, alert_facts.c.channel, alert_facts.c.destination, alert_facts.c.detail)
        .select_from(alerts.outerjoin(alert_facts, alert_facts.c.alert_id == alerts.c.id))
        .where(and_(alerts.c.at >= since, alerts.c.acknowledged.is_(False), ~sent))
        .order_by(alerts.c.id)
        .limit(MAX_BATCH)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        AlertPayload(
            id=int(row["id"]),
            at=_utc(row["at"]),
            kind=row["kind"],
            severity=row["severity"],
            message=row["message"],
            channel=row["channel"],
            destination=row["destination"],
            detail=dict(row["detail"] or {}),
        )
        for row in rows
    ]


def _mark_sent(conn: Connection, notifier: str, ids: list[int], now: datetime) -> None:
    already = set(
        conn.execute(
            select(alert_notifications.c.alert_id).where(
                alert_notifications.c.notifier == notifier,
                alert_notifications.c.alert_id.in_(ids),
            )
        ).scalars()
    )
    rows = [{"alert_id": i, "notifier": notifier, "sent_at": now} for i in ids if i not in already]
    if rows:
        conn.execute(insert(alert_notifications), rows)
