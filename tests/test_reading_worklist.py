"""Reading worklist: the priority formula, the store on SQLite and PostgreSQL, the destination."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import ValidationError
from pydicom import Dataset
from sqlalchemy import Connection, Engine

from connectors.base import TransactionalDestination
from connectors.reading_worklist import (
    PreparedStudy,
    ReadingWorklistDestination,
    ReadingWorklistDestinationConfig,
)
from engine import audit
from engine.ai_result import AIFinding, AIResult
from engine.config import AIModelConfig
from engine.errors import EngineError, TransformError
from engine.priority import CRITICAL_BASE, normalize_order_priority, priority_score
from engine.reading_config import Radiologist, ReadingWorklistConfig
from engine.reading_worklist import ReadingWorklist, choose_assignee
from engine.store.group_commit import GroupCommitter
from engine.study_batch import InstanceRef, StudyBatch
from engine.worklist import WorklistStore
from engine.worklist_item import WorklistItem
from tests.support.ai_store import clear, module_engine

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
T0 = datetime(2024, 1, 5, 8, 0, tzinfo=UTC)
SLA = {"STAT": 60.0, "HIGH": 240.0, "ROUTINE": 1440.0}
CONFIG = ReadingWorklistConfig(
    subspecialties={"CT:HEAD": "neuro", "MR:HEAD": "neuro", "CR:CHEST": "chest", "CT": "body"},
    radiologists=[
        Radiologist(name="ann", subspecialties=["neuro"]),
        Radiologist(name="bob", subspecialties=["neuro", "body"]),
        Radiologist(name="cyd", subspecialties=["chest"]),
    ],
)


def score(
    priority: str, *, waited: float = 0, critical: bool = False, ai: float | None = None
) -> float:
    return priority_score(priority, critical, ai, waited, SLA.get(priority, 1440.0))


# -- the formula (pure) ----------------------------------------------------------------------


def test_order_priority_bands_stat_above_high_above_routine() -> None:
    assert score("STAT") > score("HIGH") > score("MEDIUM") > score("ROUTINE") > score("LOW")
    # At its SLA and with the highest AI suspicion, a routine study stays below a fresh STAT.
    assert score("ROUTINE", waited=1440, ai=1.0) < score("STAT")


def test_critical_finding_goes_to_the_top_and_critical_ones_are_ordered_by_wait() -> None:
    fresh_critical_routine = score("ROUTINE", critical=True)
    assert fresh_critical_routine > score("STAT", waited=10_000, ai=1.0)
    assert fresh_critical_routine >= CRITICAL_BASE
    assert score("ROUTINE", waited=30, critical=True) > score("STAT", waited=5, critical=True)


def test_sla_breach_rises_above_same_priority_but_not_above_a_higher_one() -> None:
    breached = score("ROUTINE", waited=1441)
    assert breached > score("ROUTINE", waited=1440, ai=1.0)
    assert breached < score("HIGH")
    assert score("ROUTINE", waited=2000) > breached  # further past: higher still


def test_waiting_raises_priority_and_ai_score_only_nudges() -> None:
    assert score("ROUTINE", waited=100) > score("ROUTINE", waited=10)
    assert score("ROUTINE", waited=10, ai=0.9) > score("ROUTINE", waited=10)
    assert score("ROUTINE", waited=10, ai=0.9) < score("ROUTINE", waited=1441)


def test_priority_score_rejects_a_non_positive_sla() -> None:
    with pytest.raises(ValueError, match="sla_minutes"):
        priority_score("STAT", False, None, 0, 0)


@pytest.mark.parametrize(
    ("given", "term"),
    [("stat", "STAT"), ("S", "STAT"), ("ASAP", "HIGH"), ("A", "HIGH"), (None, "ROUTINE"),
     ("", "ROUTINE"), ("R", "ROUTINE"), ("LOW", "LOW"), ("PREOP", "MEDIUM")],
)  # fmt: skip
def test_order_priority_terms_and_aliases(given: object, term: str) -> None:
    assert normalize_order_priority(given) == term


# -- configuration ---------------------------------------------------------------------------


def test_sla_overrides_keep_the_other_defaults() -> None:
    config = ReadingWorklistConfig(sla_minutes={"stat": 30, "ASAP": 120})
    assert config.sla_for("STAT") == 30
    assert config.sla_for("HIGH") == 120
    assert config.sla_for("ROUTINE") == 1440


@pytest.mark.parametrize(
    "settings",
    [
        {"sla_minutes": {"SOON": 5}},
        {"sla_minutes": {"STAT": 0}},
        {"subspecialties": {"CT/HEAD": "neuro"}},
        {"radiologists": [{"name": "ann"}, {"name": "ann"}]},
        {"radiologist": []},
    ],
)
def test_invalid_configuration_is_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ReadingWorklistConfig.model_validate(settings)


def test_subspecialty_exact_pair_wins_over_modality() -> None:
    assert CONFIG.subspecialty_for("ct", "head") == "neuro"
    assert CONFIG.subspecialty_for("CT", "ABDOMEN") == "body"
    assert CONFIG.subspecialty_for("US", "ABDOMEN") is None


def test_choose_assignee_by_subspecialty_then_workload() -> None:
    readers = CONFIG.radiologists
    assert choose_assignee("neuro", readers, {"ann": 3, "bob": 1}) == "bob"
    assert choose_assignee("neuro", readers, {}) == "ann"  # tie: first listed
    assert choose_assignee("chest", readers, {"cyd": 9}) == "cyd"
    # Nobody reads it: everyone is a candidate.
    assert choose_assignee("msk", readers, {"ann": 1, "bob": 1}) == "cyd"
    assert choose_assignee(None, [], {}) is None


# -- the store (SQLite and PostgreSQL) ---------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    yield from module_engine(request.param, tmp_path_factory.mktemp("reading"))


@pytest.fixture
def db(shared_engine: Engine) -> Engine:
    clear(shared_engine)
    return shared_engine


@pytest.fixture
def worklist(db: Engine) -> ReadingWorklist:
    return ReadingWorklist(db, CONFIG)


def write(db: Engine, op: Callable[[Connection], T]) -> T:
    with db.begin() as conn:
        return op(conn)


def study(
    uid: str, *, modality: str = "CT", body_part: str = "HEAD", accession: str = "ACC1"
) -> StudyBatch:
    ref = InstanceRef(
        sop_instance_uid=f"{uid}.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_instance_uid=f"{uid}.0",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"/nonexistent/{uid}.dcm",
    )
    metadata = {
        "Modality": modality,
        "BodyPartExamined": body_part,
        "AccessionNumber": accession,
        "PatientID": "P1",
        "StudyDescription": f"{modality} {body_part}",
    }
    return StudyBatch(
        study_instance_uid=uid,
        batch=1,
        calling_aet="CT1",
        called_aet="MERIDIAN",
        instances=[ref],
        metadata=metadata,
    )


def order(priority: str) -> Dataset:
    ds = Dataset()
    ds.RequestedProcedurePriority = priority
    return ds


def result(
    uid: str,
    *,
    critical: bool = False,
    score: float = 0.4,
    model: str = "ich",
    produced_at: datetime = T0,
) -> AIResult:
    finding = AIFinding(code="hemorrhage", label="Hemorrhage", score=score, critical=critical)
    return AIResult(
        study_instance_uid=uid,
        model=model,
        model_version="2.1",
        findings=[finding],
        produced_at=produced_at,
        source="json",
    )


def add(
    worklist: ReadingWorklist, db: Engine, batch: StudyBatch, priority: str, at: datetime
) -> Any:
    return write(db, lambda conn: worklist.add_study(conn, batch, order(priority), at))


def uids(worklist: ReadingWorklist, **options: Any) -> list[str]:
    return [item.study_instance_uid for item in worklist.items(**options)]


def test_add_study_is_idempotent(worklist: ReadingWorklist, db: Engine) -> None:
    first = add(worklist, db, study("1.1"), "STAT", T0)
    again = add(worklist, db, study("1.1"), "ROUTINE", T0 + timedelta(hours=1))
    assert first.added and not again.added
    assert "already" in str(again)
    [item] = worklist.items()
    assert (item.study_instance_uid, item.order_priority, item.subspecialty) == (
        "1.1",
        "STAT",
        "neuro",
    )
    assert (item.accession_number, item.modality, item.body_part) == ("ACC1", "CT", "HEAD")
    assert item.status == "UNREAD" and item.received_at == T0
    assert item.sla_due_at == T0 + timedelta(minutes=60)
    assert first.detail["order_priority"] == "STAT"


def test_study_without_order_is_routine_and_unmapped_has_no_subspecialty(
    worklist: ReadingWorklist, db: Engine
) -> None:
    write(db, lambda conn: worklist.add_study(conn, study("2.1", modality="US"), None, T0))
    [item] = worklist.items()
    assert (item.order_priority, item.subspecialty) == ("ROUTINE", None)


def test_items_in_priority_order(worklist: ReadingWorklist, db: Engine) -> None:
    add(worklist, db, study("r"), "ROUTINE", T0)
    add(worklist, db, study("s"), "STAT", T0 + timedelta(minutes=5))
    add(worklist, db, study("h", modality="CR", body_part="CHEST"), "HIGH", T0)
    assert uids(worklist) == ["s", "h", "r"]
    assert uids(worklist, order="received") == ["r", "h", "s"]
    assert uids(worklist, order="sla") == ["s", "h", "r"]
    assert uids(worklist, subspecialty="chest") == ["h"]
    assert uids(worklist, limit=1) == ["s"]


def test_shadow_result_leaves_the_worklist_untouched(worklist: ReadingWorklist, db: Engine) -> None:
    add(worklist, db, study("1.1"), "ROUTINE", T0)
    before = worklist.item("1.1")
    change = write(
        db, lambda conn: worklist.apply_result(conn, result("1.1", critical=True), "shadow", T0)
    )
    assert worklist.item("1.1") == before
    assert not change.reprioritized and "shadow" in str(change)
    # Nor does a shadow result for an unknown study leave anything behind.
    write(db, lambda conn: worklist.apply_result(conn, result("9.9"), "shadow", T0))
    assert worklist.item("9.9") is None


def test_assistant_mode_drafts_the_report_and_triage_does_not(
    worklist: ReadingWorklist, db: Engine
) -> None:
    add(worklist, db, study("1.1"), "ROUTINE", T0)
    add(worklist, db, study("1.2"), "ROUTINE", T0)
    write(db, lambda conn: worklist.apply_result(conn, result("1.1", critical=True), "triage", T0))
    write(db, lambda c: worklist.apply_result(c, result("1.2", critical=True), "assistant", T0))
    assert worklist.item("1.1").report_draft is None  # type: ignore[union-attr]
    draft = worklist.item("1.2").report_draft  # type: ignore[union-attr]
    assert draft is not None and draft.startswith("PRELIMINARY")
    assert "CRITICAL" in draft


@pytest.mark.parametrize("mode", ["triage", "assistant"])
def test_critical_result_puts_the_study_at_the_top(
    worklist: ReadingWorklist, db: Engine, mode: Any
) -> None:
    add(worklist, db, study("stat"), "STAT", T0)
    add(worklist, db, study("routine"), "ROUTINE", T0)
    later = T0 + timedelta(minutes=10)
    critical = result("routine", critical=True, score=0.97)
    change = write(db, lambda conn: worklist.apply_result(conn, critical, mode, later))
    assert change.reprioritized and change.new_priority is not None
    assert change.old_priority is not None and change.new_priority > change.old_priority
    assert uids(worklist) == ["routine", "stat"]
    item = worklist.item("routine")
    assert item is not None and item.ai_critical and item.ai_score == 0.97
    assert item.ai_findings["ich"]["findings"][0]["code"] == "hemorrhage"


def test_a_newer_result_replaces_an_older_one(worklist: ReadingWorklist, db: Engine) -> None:
    add(worklist, db, study("1.1"), "ROUTINE", T0)
    first = result("1.1", critical=True, score=0.9, produced_at=T0)
    rerun = result("1.1", critical=False, score=0.2, produced_at=T0 + timedelta(minutes=5))
    write(db, lambda conn: worklist.apply_result(conn, first, "triage", T0))
    write(db, lambda conn: worklist.apply_result(conn, rerun, "triage", T0))
    stale = write(db, lambda conn: worklist.apply_result(conn, first, "triage", T0))
    item = worklist.item("1.1")
    assert item is not None and not item.ai_critical and item.ai_score == 0.2
    assert "older" in str(stale) and not stale.reprioritized


def test_a_result_before_its_study_waits_for_it(worklist: ReadingWorklist, db: Engine) -> None:
    add(worklist, db, study("stat"), "STAT", T0)
    early = result("late", critical=True)
    change = write(db, lambda conn: worklist.apply_result(conn, early, "triage", T0))
    assert "not on the reading worklist yet" in str(change)
    assert uids(worklist) == ["stat"]  # a placeholder is not work
    placeholder = worklist.item("late")
    assert placeholder is not None and placeholder.status == "PENDING"
    added = add(worklist, db, study("late"), "ROUTINE", T0 + timedelta(minutes=1))
    assert added.added and added.detail["ai_results_first"]
    assert uids(worklist) == ["late", "stat"]


def test_reprioritize_lets_waiting_and_sla_breach_raise_a_study(
    worklist: ReadingWorklist, db: Engine
) -> None:
    add(worklist, db, study("old"), "ROUTINE", T0)
    add(worklist, db, study("new"), "ROUTINE", T0 + timedelta(hours=1))
    write(db, lambda conn: worklist.set_status(conn, "new", "READ", T0))
    add(worklist, db, study("newer"), "ROUTINE", T0 + timedelta(hours=2))
    before = worklist.item("old")
    now = T0 + timedelta(hours=25)  # "old" is past its 24 h SLA, "newer" is not
    changed = write(db, lambda conn: worklist.reprioritize(conn, now))
    assert changed == 2  # the READ study is not touched
    assert uids(worklist) == ["old", "newer"]
    after = worklist.item("old")
    assert before is not None and after is not None
    assert after.priority_score > before.priority_score
    assert after.priority_score == score("ROUTINE", waited=25 * 60)
    add(worklist, db, study("fresh-stat"), "STAT", now)
    assert uids(worklist)[0] == "fresh-stat"  # a breached routine never outranks a STAT


def test_suggest_assignee_counts_open_assigned_work(worklist: ReadingWorklist, db: Engine) -> None:
    for uid in ("a", "b", "c", "d"):
        add(worklist, db, study(uid), "ROUTINE", T0)
    write(db, lambda conn: worklist.set_status(conn, "a", "IN_PROGRESS", T0, assigned_to="ann"))
    write(db, lambda conn: worklist.set_status(conn, "b", "UNREAD", T0, assigned_to="ann"))
    write(db, lambda conn: worklist.set_status(conn, "c", "READ", T0, assigned_to="bob"))
    assert worklist.workloads() == {"ann": 2}
    item = worklist.item("d")
    assert item is not None
    assert worklist.suggest_assignee(item) == "bob"
    assert worklist.suggest_assignee(item, [Radiologist(name="zed")]) == "zed"
    assert not write(db, lambda conn: worklist.set_status(conn, "nope", "READ", T0))


# -- the reading-worklist destination ----------------------------------------------------------


MODELS = {
    "ich": AIModelConfig(model="ich", version="2.1", mode="triage"),
    "lung": AIModelConfig(model="lung", version="1.0", mode="shadow"),
}


@pytest.fixture
def committer(db: Engine) -> Iterator[GroupCommitter]:
    writer = GroupCommitter(db)
    writer.start()
    yield writer
    writer.stop()


def destination(
    worklist: ReadingWorklist, db: Engine, kind: Any, name: str
) -> ReadingWorklistDestination:
    config = ReadingWorklistDestinationConfig.model_validate(
        {"type": "reading-worklist", "input": kind}
    )
    return ReadingWorklistDestination(
        config,
        reading_worklist=worklist,
        worklist_store=WorklistStore(db),
        models=MODELS,
        channel="images" if kind == "studies" else "ai-results",
        destination=name,
        clock=lambda: T0,
    )


def deliver(dest: ReadingWorklistDestination, committer: GroupCommitter, payload: str) -> str:
    prepared = dest.prepare(payload)
    delivery = committer.run(lambda conn: dest.apply(conn, prepared))
    return delivery.response or ""


def place_order(db: Engine, accession: str, priority: str) -> None:
    item = WorklistItem(
        action="create",
        key=f"order-{accession}",
        attributes={
            "PatientID": "P1",
            "PatientName": "Doe^Jane",
            "AccessionNumber": accession,
            "RequestedProcedurePriority": priority,
            "ScheduledProcedureStepSequence": [{"Modality": "CT"}],
        },
    )
    write(db, lambda conn: WorklistStore(db).apply(conn, item))


def test_destination_end_to_end(
    worklist: ReadingWorklist, db: Engine, committer: GroupCommitter
) -> None:
    studies = destination(worklist, db, "studies", "reading")
    results = destination(worklist, db, "ai-results", "triage")
    assert isinstance(studies, TransactionalDestination)
    place_order(db, "ACC-STAT", "STAT")
    answer = deliver(studies, committer, study("1.1", accession="ACC-STAT").model_dump_json())
    assert answer == "added to the reading worklist as STAT"
    deliver(studies, committer, study("2.2", accession="ACC-NONE").model_dump_json())

    critical = result("2.2", critical=True, score=0.95).model_dump_json()
    assert "reprioritized: critical finding" in deliver(results, committer, critical)
    assert uids(worklist) == ["2.2", "1.1"]

    events = audit.query(db, study_instance_uid="2.2")
    kinds = [e.kind for e in events]
    assert kinds == ["worklist_added", "ai_result", "worklist_reprioritized"]
    answered, moved = events[1], events[2]
    assert (answered.model, answered.model_version, answered.channel) == (
        "ich",
        "2.1",
        "ai-results",
    )
    assert answered.detail["critical"] and answered.detail["findings"] == 1
    assert answered.detail["mode"] == "triage"
    assert moved.detail["old"] < moved.detail["new"] and moved.detail["changed"]
    assert "Doe" not in audit.format_events(audit.query(db))


@pytest.mark.parametrize("model", ["lung", "unknown-model"])
def test_destination_shadow_and_unknown_models_leave_the_worklist(
    worklist: ReadingWorklist, db: Engine, committer: GroupCommitter, model: str
) -> None:
    studies = destination(worklist, db, "studies", "reading")
    results = destination(worklist, db, "ai-results", "triage")
    deliver(studies, committer, study("1.1").model_dump_json())
    before = worklist.item("1.1")
    deliver(results, committer, result("1.1", critical=True, model=model).model_dump_json())
    assert worklist.item("1.1") == before
    kinds = [e.kind for e in audit.query(db, study_instance_uid="1.1", model=model)]
    assert kinds == ["ai_result", "worklist_untouched_shadow"]


def test_destination_prepare_reads_the_order(worklist: ReadingWorklist, db: Engine) -> None:
    place_order(db, "ACC-H", "HIGH")
    prepared = destination(worklist, db, "studies", "reading").prepare(
        study("1.1", accession="ACC-H").model_dump_json()
    )
    assert isinstance(prepared, PreparedStudy) and prepared.order is not None
    assert prepared.order.RequestedProcedurePriority == "HIGH"


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("studies", '{"study_instance_uid": "1", "PatientName": "Doe^Jane"}'),
        ("ai-results", '{"model": "ich", "findings": "Doe^Jane"}'),
        ("ai-results", "Doe^Jane"),
        ("ai-results", '["Doe^Jane"]'),
    ],
)
def test_destination_refuses_invalid_payloads_without_quoting_them(
    worklist: ReadingWorklist, db: Engine, kind: str, payload: str
) -> None:
    with pytest.raises(TransformError) as caught:
        destination(worklist, db, kind, "reading").prepare(payload)
    assert "Doe" not in str(caught.value)


def test_destination_dicom_results_go_through_results_ingest(
    worklist: ReadingWorklist, db: Engine
) -> None:
    # The SR file does not exist: results ingest (or its absence) refuses the batch.
    with pytest.raises(EngineError):
        destination(worklist, db, "ai-results", "triage").prepare(study("1.1").model_dump_json())


def test_destination_applies_dicom_results(
    worklist: ReadingWorklist, db: Engine, committer: GroupCommitter, tmp_path: Path
) -> None:
    ai_dicom = pytest.importorskip("tests.support.ai_dicom", reason="results ingest helpers")
    from tests.support.dicom_files import make_ct_instance, write_dataset

    image = make_ct_instance("1.2.826.0.1.3680043.8.498.77", "1.2.826.0.1.3680043.8.498.78")
    sr = ai_dicom.make_sr([image])
    path = write_dataset(sr, tmp_path / "sr.dcm")
    ref = InstanceRef(
        sop_instance_uid=sr.SOPInstanceUID,
        sop_class_uid=sr.SOPClassUID,
        series_instance_uid=sr.SeriesInstanceUID,
        transfer_syntax_uid=sr.file_meta.TransferSyntaxUID,
        path=str(path),
    )
    uid = str(image.StudyInstanceUID)
    batch = StudyBatch(
        study_instance_uid=uid, batch=1, calling_aet="AI", called_aet="RESULTS", instances=[ref]
    )
    add(worklist, db, study("stat"), "STAT", T0)
    add(worklist, db, study(uid), "ROUTINE", T0)
    models = {ai_dicom.MODEL: AIModelConfig(model=ai_dicom.MODEL, version="1", mode="triage")}
    config = ReadingWorklistDestinationConfig(type="reading-worklist", input="ai-results")
    results = ReadingWorklistDestination(
        config,
        reading_worklist=worklist,
        worklist_store=None,
        models=models,
        channel="ai-results",
        destination="triage",
        clock=lambda: T0,
    )
    assert "critical finding" in deliver(results, committer, batch.model_dump_json())
    assert uids(worklist) == [uid, "stat"]
    [answered] = audit.query(db, study_instance_uid=uid, kind="ai_result")
    assert answered.model == ai_dicom.MODEL and answered.detail["source"] == "dicom"
