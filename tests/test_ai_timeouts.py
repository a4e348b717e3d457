"""AI slow/down detection on SQLite and PostgreSQL: overdue requests, one timeout each, alerts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from engine.ai_timeouts import (
    AITimeoutMonitor,
    acknowledge,
    list_alerts,
    overdue,
    record_timeouts,
)
from engine.audit import AuditEvent, query, record
from engine.config import AIModelConfig
from engine.store.group_commit import GroupCommitter
from tests.support.ai_store import clear, module_engine

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2024, 1, 5, 8, 0, tzinfo=UTC)
MODELS = {
    "ich": AIModelConfig(model="ich", version="2.1", mode="triage", timeout_seconds=300),
    "lung": AIModelConfig(model="lung", version="1.0", mode="shadow", timeout_seconds=1800),
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    yield from module_engine(request.param, tmp_path_factory.mktemp("timeouts"))


@pytest.fixture
def db(shared_engine: Engine) -> Engine:
    clear(shared_engine)
    return shared_engine


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def log_event(db: Engine, kind: str, minutes: float, uid: str = "1.1", model: str = "ich") -> int:
    event = AuditEvent.model_validate(
        {"kind": kind, "at": at(minutes), "study_instance_uid": uid, "accession_number": "ACC1",
         "channel": "images", "destination": f"ai-{model}", "model": model, "model_version": "2.1"}
    )  # fmt: skip
    with db.begin() as conn:
        return record(conn, event)


def overdue_uids(db: Engine, minutes: float) -> list[tuple[str, str]]:
    return [(o.study_instance_uid, o.model) for o in overdue(db, at(minutes), MODELS)]


def test_a_request_is_overdue_only_after_its_models_timeout(db: Engine) -> None:
    log_event(db, "ai_requested", 0, "1.1", "ich")
    log_event(db, "ai_requested", 0, "2.2", "lung")
    assert overdue_uids(db, 4.9) == []
    assert overdue_uids(db, 5) == [("1.1", "ich")]
    assert overdue_uids(db, 30) == [("1.1", "ich"), ("2.2", "lung")]
    [item] = overdue(db, at(6), MODELS)
    assert (item.timeout_seconds, item.mode, item.requested_at) == (300, "triage", T0)


def test_a_result_answers_the_request(db: Engine) -> None:
    log_event(db, "ai_requested", 0, "1.1")
    log_event(db, "ai_result", 3, "1.1")
    log_event(db, "ai_requested", 0, "2.2")
    log_event(db, "ai_result", 3, "2.2", model="other")  # another model's answer does not count
    assert overdue_uids(db, 60) == [("2.2", "ich")]


def test_a_newer_request_supersedes_an_older_one(db: Engine) -> None:
    log_event(db, "ai_requested", 0, "1.1")
    log_event(db, "ai_requested", 4, "1.1")
    assert overdue_uids(db, 6) == []  # the first is superseded, the second is not late yet
    [item] = overdue(db, at(9), MODELS)
    assert item.requested_at == at(4)


def test_an_unconfigured_model_waits_the_default_timeout(db: Engine) -> None:
    log_event(db, "ai_requested", 0, "1.1", "retired")
    assert overdue_uids(db, 9) == []
    [item] = overdue(db, at(10), MODELS)
    assert (item.model, item.timeout_seconds, item.mode) == ("retired", 600, None)


def test_timeouts_are_recorded_once_with_an_alert(db: Engine) -> None:
    request_id = log_event(db, "ai_requested", 0, "1.2.840.99")
    found = overdue(db, at(6), MODELS)
    with db.begin() as conn:
        assert record_timeouts(conn, found, at(6)) == found
    assert overdue(db, at(7), MODELS) == []
    with db.begin() as conn:  # the same findings again: nothing more is written
        assert record_timeouts(conn, found, at(7)) == []
    [timeout] = query(db, kind="ai_timeout")
    assert (timeout.study_instance_uid, timeout.model, timeout.at) == ("1.2.840.99", "ich", at(6))
    assert timeout.detail["request_id"] == request_id and timeout.detail["waited_seconds"] == 360
    [alert] = list_alerts(db)
    assert (alert.kind, alert.severity, alert.acknowledged) == ("ai_timeout", "error", False)
    assert "ich 2.1" in alert.message and f"audit event {request_id}" in alert.message
    assert "1.2.840.99" not in alert.message and "ACC1" not in alert.message
    with db.begin() as conn:
        assert acknowledge(conn, alert.id)
        assert not acknowledge(conn, alert.id + 1000)
    assert list_alerts(db) == []
    assert len(list_alerts(db, include_acknowledged=True)) == 1


def test_a_result_arriving_after_the_check_prevents_the_timeout(db: Engine) -> None:
    log_event(db, "ai_requested", 0, "1.1")
    found = overdue(db, at(6), MODELS)
    log_event(db, "ai_result", 6, "1.1")
    with db.begin() as conn:
        assert record_timeouts(conn, found, at(6)) == []
    assert list_alerts(db) == []


def test_a_shadow_models_timeout_is_a_warning(db: Engine) -> None:
    log_event(db, "ai_requested", 0, "2.2", "lung")
    with db.begin() as conn:
        record_timeouts(conn, overdue(db, at(31), MODELS), at(31))
    [alert] = list_alerts(db)
    assert alert.severity == "warning"


def test_monitor_records_and_logs_without_phi(db: Engine, caplog: pytest.LogCaptureFixture) -> None:
    log_event(db, "ai_requested", 0, "1.2.3.4")
    clock = [at(1)]

    async def scenario() -> tuple[int, int, int]:
        writer = GroupCommitter(db)
        writer.start()
        monitor = AITimeoutMonitor(
            db, writer, MODELS, interval_seconds=0.01, clock=lambda: clock[0]
        )
        try:
            early = len(await monitor.run_once())
            clock[0] = at(6)
            first = len(await monitor.run_once())
            second = len(await monitor.run_once())
            monitor.start()
            await asyncio.sleep(0.05)
            await monitor.stop()
        finally:
            writer.stop()
        return early, first, second

    with caplog.at_level(logging.WARNING, logger="engine.ai_timeouts"):
        assert asyncio.run(scenario()) == (0, 1, 0)
    assert len(query(db, kind="ai_timeout")) == 1
    [message] = [r.getMessage() for r in caplog.records if r.name == "engine.ai_timeouts"]
    assert "ich" in message and "1.2.3.4" not in message and "ACC1" not in message
