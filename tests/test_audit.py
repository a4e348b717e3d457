"""The audit trail on SQLite and PostgreSQL: recording, filtered queries, the text form."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine

from engine.audit import (
    AuditEvent,
    ai_requested_event,
    audit_op,
    format_events,
    query,
    record,
    routed_event,
)
from engine.config import AIModelConfig
from engine.store.group_commit import GroupCommitter
from engine.study_batch import InstanceRef, StudyBatch
from tests.support.ai_store import clear, module_engine

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2024, 1, 5, 8, 0, tzinfo=UTC)
ICH = AIModelConfig(model="ich", version="2.1", mode="triage", timeout_seconds=300)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    yield from module_engine(request.param, tmp_path_factory.mktemp("audit"))


@pytest.fixture
def db(shared_engine: Engine) -> Engine:
    clear(shared_engine)
    return shared_engine


def batch_json(uid: str) -> str:
    ref = InstanceRef(
        sop_instance_uid=f"{uid}.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_instance_uid=f"{uid}.0",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path="/nonexistent.dcm",
    )
    batch = StudyBatch(
        study_instance_uid=uid,
        batch=1,
        calling_aet="CT1",
        called_aet="MERIDIAN",
        instances=[ref],
        metadata={"AccessionNumber": "ACC1", "PatientName": "Doe^Jane"},
    )
    return batch.model_dump_json()


def store(db: Engine, *events: AuditEvent) -> list[int]:
    with db.begin() as conn:
        return [record(conn, event) for event in events]


def event(kind: str, minutes: float, uid: str = "1.1", model: str | None = None) -> AuditEvent:
    return AuditEvent.model_validate(
        {"kind": kind, "at": T0 + timedelta(minutes=minutes), "study_instance_uid": uid,
         "model": model, "detail": {"n": minutes}}
    )  # fmt: skip


def test_record_and_query_in_time_order(db: Engine) -> None:
    ids = store(
        db, event("ai_result", 2, model="ich"), event("routed", 1), event("ai_requested", 1.5)
    )
    assert len(set(ids)) == 3
    events = query(db, study_instance_uid="1.1")
    assert [e.kind for e in events] == ["routed", "ai_requested", "ai_result"]
    assert events[0].at == T0 + timedelta(minutes=1)
    assert events[0].at.tzinfo is not None
    assert events[2].detail == {"n": 2}
    assert {e.id for e in events} == set(ids)


def test_query_filters(db: Engine) -> None:
    store(
        db,
        event("routed", 0, "1.1"),
        event("ai_requested", 1, "1.1", "ich"),
        event("ai_requested", 2, "2.2", "lung"),
        event("ai_result", 3, "2.2", "lung"),
        event("ai_timeout", 10, "1.1", "ich"),
    )

    def kinds(**filters: object) -> list[str]:
        return [e.kind for e in query(db, **filters)]  # type: ignore[arg-type]

    assert kinds(study_instance_uid="2.2") == ["ai_requested", "ai_result"]
    assert kinds(kind="ai_requested") == ["ai_requested", "ai_requested"]
    assert kinds(kind=["ai_result", "ai_timeout"]) == ["ai_result", "ai_timeout"]
    assert kinds(model="ich") == ["ai_requested", "ai_timeout"]
    assert kinds(since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=10)) == [
        "ai_requested",
        "ai_result",
    ]
    assert kinds(limit=2) == ["routed", "ai_requested"]
    assert kinds(limit=2, newest_first=True) == ["ai_timeout", "ai_result"]
    assert kinds(study_instance_uid="9.9") == []
    # A naive bound is taken as UTC, like the stored times.
    assert kinds(since=datetime(2024, 1, 5, 8, 5)) == ["ai_timeout"]


def test_audit_op_commits_through_the_writer(db: Engine) -> None:
    writer = GroupCommitter(db)
    writer.start()
    try:
        ids = writer.run(audit_op(event("routed", 0), event("worklist_added", 1)))
    finally:
        writer.stop()
    assert len(ids) == 2
    assert [e.kind for e in query(db)] == ["routed", "worklist_added"]


def test_detail_refuses_patient_attributes() -> None:
    for detail in ({"PatientName": "Doe^Jane"}, {"x": [{"patient_id": "P1"}]}, {"MRN": "1"}):
        with pytest.raises(ValidationError, match="patient data"):
            AuditEvent(kind="routed", detail=detail)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValidationError):
        AuditEvent.model_validate({"kind": "sneezed"})


def test_routed_and_ai_requested_events(db: Engine) -> None:
    routed = routed_event(
        channel="images",
        destination="ai-ct-head",
        rules=["CT head"],
        study_instance_uid="1.1",
        accession_number="ACC1",
        at=T0,
    )
    requested = ai_requested_event(
        batch_json("1.1"), channel="images", destination="ai-ct-head", ai=ICH, at=T0
    )
    assert requested is not None
    assert (requested.model, requested.model_version, requested.accession_number) == (
        "ich",
        "2.1",
        "ACC1",
    )
    assert requested.detail == {
        "mode": "triage",
        "timeout_seconds": 300,
        "batch": 1,
        "instances": 1,
    }
    everything = routed_event(channel="c", destination="d", rules=[], study_instance_uid=None)
    assert everything.rule == "(no filter)"
    assert ai_requested_event("MSH|^~\\&|", channel="c", destination="d", ai=ICH) is None
    store(db, routed, requested)
    assert [e.kind for e in query(db, study_instance_uid="1.1")] == ["routed", "ai_requested"]


def test_format_events(db: Engine) -> None:
    requested = ai_requested_event(
        batch_json("1.1"), channel="images", destination="ai-ct-head", ai=ICH, at=T0
    )
    assert requested is not None
    store(db, requested)
    text = format_events(query(db))
    assert text.startswith("2024-01-05T08:00:00Z  ai_requested")
    assert "study=1.1" in text and "model=ich 2.1" in text and "at=images/ai-ct-head" in text
    assert "Doe" not in text
    assert format_events([]) == "no audit events"
