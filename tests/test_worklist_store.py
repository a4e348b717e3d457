"""WorklistStore on SQLite and PostgreSQL: order semantics, C-FIND matching, return keys."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom.dsutils import decode, encode
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from connectors.base import TransactionalDestination
from connectors.worklist import WorklistDestination, WorklistDestinationConfig
from engine.errors import ParseError, PermanentError, TransformError
from engine.worklist import WorklistStore, worklist_items
from engine.worklist_item import WorklistItem

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


# -- fixtures -----------------------------------------------------------------


def _sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'worklist.db'}")
    worklist_items.create(engine)
    yield engine
    engine.dispose()


def _postgres_engine() -> Iterator[Engine]:
    base = create_engine(POSTGRES_URL)
    try:
        with base.connect():
            pass
    except OperationalError as exc:
        base.dispose()
        pytest.skip(f"PostgreSQL NOT TESTED: {POSTGRES_URL} unreachable ({type(exc).__name__})")
    schema = f"wl_test_{uuid.uuid4().hex[:12]}"
    with base.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    # Each test gets its own schema: the shared table definition is mapped onto it.
    engine = base.execution_options(schema_translate_map={None: schema})
    worklist_items.create(engine)
    yield engine
    with base.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    base.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        yield from _sqlite_engine(tmp_path)
    else:
        yield from _postgres_engine()


@pytest.fixture
def store(engine: Engine) -> WorklistStore:
    return WorklistStore(engine)


# -- helpers ------------------------------------------------------------------


def order(
    key: str,
    *,
    action: str = "create",
    status: str | None = None,
    step: dict[str, Any] | None = None,
    **attributes: Any,
) -> WorklistItem:
    if step is not None:
        attributes["ScheduledProcedureStepSequence"] = [step]
    return WorklistItem.model_validate(
        {"action": action, "key": key, "status": status, "attributes": attributes}
    )


def apply(store: WorklistStore, engine: Engine, *items: WorklistItem) -> list[str]:
    with engine.begin() as conn:
        return [store.apply(conn, item) for item in items]


def query(step: dict[str, Any] | None = None, **keys: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    if step is not None:
        item = Dataset()
        for keyword, value in step.items():
            setattr(item, keyword, value)
        ds.ScheduledProcedureStepSequence = [item]
    return ds


def ids(store: WorklistStore, identifier: Dataset) -> list[str]:
    identifier.PatientID = identifier.get("PatientID", "")
    return [str(ds.PatientID) for ds in store.find(identifier)]


def sps(ds: Dataset) -> Dataset:
    return ds.ScheduledProcedureStepSequence[0]  # type: ignore[no-any-return]


CT_STEP = {
    "Modality": "CT",
    "ScheduledStationAETitle": "CT1",
    "ScheduledProcedureStepStartDate": "20240105",
    "ScheduledProcedureStepStartTime": "083000",
    "ScheduledProcedureStepID": "SPS1",
}


@pytest.fixture
def populated(store: WorklistStore, engine: Engine) -> WorklistStore:
    apply(
        store,
        engine,
        order("o1", PatientID="P1", PatientName="Doe^John", AccessionNumber="ACC1",
              RequestedProcedureID="RP1", StudyInstanceUID="1.2.3.1", step=CT_STEP),
        order("o2", PatientID="P2", PatientName="O_Brien^Mary", AccessionNumber="ACC2",
              StudyInstanceUID="1.2.3.2",
              step={**CT_STEP, "ScheduledStationAETitle": "CT2",
                    "ScheduledProcedureStepStartTime": "1015", "ScheduledProcedureStepID": "SPS2"}),
        order("o3", PatientID="p3", PatientName="DOE^JANE", AccessionNumber="ACC3",
              StudyInstanceUID="1.2.3.3",
              step={"Modality": "MR", "ScheduledStationAETitle": "MR1",
                    "ScheduledProcedureStepStartDate": "20240106",
                    "ScheduledProcedureStepStartTime": "0700", "ScheduledProcedureStepID": "SPS3"}),
        order("o4", PatientID="P4", PatientName="Oxbrien^Max", AccessionNumber="ACC%4",
              StudyInstanceUID="1.2.3.4",
              step={"Modality": "US", "ScheduledProcedureStepStartDate": "20240110"}),
    )  # fmt: skip
    return store


# -- order semantics ----------------------------------------------------------


def test_create_schedules_and_generates_study_uid(store: WorklistStore, engine: Engine) -> None:
    assert apply(store, engine, order("o1", PatientID="P1", step=CT_STEP)) == ["created"]
    row = store.get("o1")
    assert row is not None
    assert row["status"] == "SCHEDULED"
    assert row["active"] is True
    assert row["modality"] == "CT"
    assert row["sps_start_time"] == "083000000000"
    item = Dataset.from_json(row["attributes"])
    assert item.StudyInstanceUID
    assert sps(item).ScheduledProcedureStepStatus == "SCHEDULED"


def test_resent_create_updates_and_keeps_study_uid(store: WorklistStore, engine: Engine) -> None:
    apply(store, engine, order("o1", PatientID="P1", step=CT_STEP))
    first = store.get("o1")
    assert apply(store, engine, order("o1", PatientID="P1b")) == ["updated (order resent)"]
    second = store.get("o1")
    assert first is not None and second is not None
    assert second["study_instance_uid"] == first["study_instance_uid"]
    assert second["patient_id"] == "P1b"
    assert second["id"] == first["id"]


def test_update_merges_step_and_keeps_study_uid(store: WorklistStore, engine: Engine) -> None:
    apply(store, engine, order("o1", PatientID="P1", StudyInstanceUID="1.2.3", step=CT_STEP))
    change = order("o1", action="update", step={"ScheduledProcedureStepStartTime": "0915"})
    assert apply(store, engine, change) == ["updated"]
    row = store.get("o1")
    assert row is not None
    item = Dataset.from_json(row["attributes"])
    assert item.StudyInstanceUID == "1.2.3"
    assert sps(item).ScheduledProcedureStepStartTime == "0915"
    assert sps(item).ScheduledStationAETitle == "CT1"  # untouched keys survive
    assert row["sps_start_time"] == "091500000000"


def test_update_with_explicit_study_uid_replaces_it(store: WorklistStore, engine: Engine) -> None:
    apply(store, engine, order("o1", StudyInstanceUID="1.2.3", step=CT_STEP))
    apply(store, engine, order("o1", action="update", StudyInstanceUID="1.2.4"))
    row = store.get("o1")
    assert row is not None and row["study_instance_uid"] == "1.2.4"


def test_update_of_unknown_order_creates_it(store: WorklistStore, engine: Engine) -> None:
    done = apply(store, engine, order("o9", action="update", PatientID="P9", step=CT_STEP))
    assert done == ["created (update for unknown order)"]
    assert store.get("o9") is not None


@pytest.mark.parametrize(
    ("action", "status"), [("cancel", "CANCELED"), ("discontinue", "DISCONTINUED")]
)
def test_cancel_and_discontinue_take_item_off_worklist(
    store: WorklistStore, engine: Engine, action: str, status: str
) -> None:
    apply(store, engine, order("o1", PatientID="P1", step=CT_STEP))
    assert apply(store, engine, order("o1", action=action)) == [status.lower()]
    row = store.get("o1")
    assert row is not None
    assert (row["active"], row["status"]) == (False, status)
    assert sps(Dataset.from_json(row["attributes"])).ScheduledProcedureStepStatus == status
    assert ids(store, query()) == []
    assert ids(store, query(PatientID="P1")) == []
    assert store.list_items() == []
    assert [r["item_key"] for r in store.list_items(active_only=False)] == ["o1"]


def test_new_order_on_canceled_key_revives_it(store: WorklistStore, engine: Engine) -> None:
    apply(store, engine, order("o1", PatientID="P1", step=CT_STEP), order("o1", action="cancel"))
    apply(store, engine, order("o1", PatientID="P1", step=CT_STEP))
    assert ids(store, query()) == ["P1"]


def test_update_of_canceled_order_stays_off(store: WorklistStore, engine: Engine) -> None:
    apply(store, engine, order("o1", PatientID="P1", step=CT_STEP), order("o1", action="cancel"))
    apply(store, engine, order("o1", action="update", PatientID="P1"))
    assert ids(store, query()) == []


def test_status_updates_step_and_column(store: WorklistStore, engine: Engine) -> None:
    apply(store, engine, order("o1", PatientID="P1", step=CT_STEP))
    done = apply(store, engine, order("o1", action="status", status="ARRIVED", PatientID="P1x"))
    assert done == ["status ARRIVED"]
    row = store.get("o1")
    assert row is not None
    assert (row["status"], row["active"], row["patient_id"]) == ("ARRIVED", True, "P1x")
    item = Dataset.from_json(row["attributes"])
    assert sps(item).ScheduledProcedureStepStatus == "ARRIVED"
    assert sps(item).Modality == "CT"


@pytest.mark.parametrize("action", ["cancel", "discontinue", "status"])
def test_actions_on_unknown_order_are_permanent_errors(
    store: WorklistStore, engine: Engine, action: str
) -> None:
    with pytest.raises(PermanentError, match="no worklist item for order nope"):
        apply(store, engine, order("nope", action=action, status="ARRIVED"))


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (order("o1", PatientNmae="X"), "PatientNmae: unknown DICOM keyword"),
        (order("o1", step={"Modalty": "CT"}), r"ScheduledProcedureStepSequence\[0\]\.Modalty"),
        (order("o1", AccessionNumber="A" * 17), "AccessionNumber: .*maximum length of 16"),
        (order("o1", ScheduledProcedureStepSequence="CT"), "must be a list"),
        (order("o1", action="status"), "needs a status"),
        (order("o1", action="status", status="DONE"), "'DONE' is not one of"),
    ],
)
def test_invalid_items_are_transform_errors(
    store: WorklistStore, engine: Engine, item: WorklistItem, message: str
) -> None:
    apply(store, engine, order("o1", step=CT_STEP))
    with pytest.raises(TransformError, match=message):
        apply(store, engine, item)


def test_two_steps_in_one_item_are_refused(store: WorklistStore, engine: Engine) -> None:
    item = order("o1", ScheduledProcedureStepSequence=[CT_STEP, CT_STEP])
    with pytest.raises(TransformError, match="one item per step"):
        apply(store, engine, item)


def test_apply_does_not_commit(store: WorklistStore, engine: Engine) -> None:
    with engine.connect() as conn:
        store.apply(conn, order("o1", step=CT_STEP))
        conn.rollback()
    assert store.get("o1") is None


# -- matching -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("identifier", "expected"),
    [
        (query(), ["P1", "P2", "p3", "P4"]),
        (query(PatientID="P1"), ["P1"]),
        (query(PatientID="P*"), ["P1", "P2", "P4"]),  # case-sensitive outside PN
        (query(PatientID="*"), ["P1", "P2", "p3", "P4"]),
        (query(PatientID="P?"), ["P1", "P2", "P4"]),
        (query(PatientName="doe^john"), ["P1"]),
        (query(PatientName="doe*"), ["P1", "p3"]),
        (query(PatientName="D?E^J*"), ["P1", "p3"]),
        (query(PatientName="O_B*"), ["P2"]),  # '_' is literal, not a LIKE wildcard
        (query(PatientName="*BRIEN*"), ["P2", "P4"]),
        (query(AccessionNumber="ACC%4"), ["P4"]),
        (query(AccessionNumber="ACC%*"), ["P4"]),  # '%' is literal too
        (query(StudyInstanceUID="1.2.3.2"), ["P2"]),
        (query(StudyInstanceUID=["1.2.3.1", "1.2.3.3"]), ["P1", "p3"]),
        (query(RequestedProcedureID="RP1"), ["P1"]),
        (query(step={"Modality": "CT"}), ["P1", "P2"]),
        (query(step={"Modality": ""}), ["P1", "P2", "p3", "P4"]),
        (query(step={"ScheduledStationAETitle": "CT2"}), ["P2"]),
        (query(step={"ScheduledStationAETitle": "CT*"}), ["P1", "P2"]),
        (query(step={"ScheduledProcedureStepStartDate": "20240106"}), ["p3"]),
        (query(step={"ScheduledProcedureStepStartDate": "20240105-20240106"}), ["P1", "P2", "p3"]),
        (query(step={"ScheduledProcedureStepStartDate": "20240106-"}), ["p3", "P4"]),
        (query(step={"ScheduledProcedureStepStartDate": "-20240105"}), ["P1", "P2"]),
        (query(step={"ScheduledProcedureStepStartTime": "0830"}), ["P1"]),
        (query(step={"ScheduledProcedureStepStartTime": "08-10"}), ["P1", "P2"]),
        (query(step={"ScheduledProcedureStepStartTime": "-0830"}), ["P1", "p3"]),
        (query(step={"ScheduledProcedureStepStartTime": "1000-"}), ["P2"]),
        (
            query(step={"Modality": "CT", "ScheduledProcedureStepStartDate": "20240105",
                        "ScheduledProcedureStepStartTime": "0900-1100"}),
            ["P2"],
        ),
        (query(step={"ScheduledProcedureStepID": "SPS3"}), ["p3"]),
        (query(step={"ScheduledProcedureStepStatus": "SCHEDULED"}), ["P1", "P2", "p3", "P4"]),
        (query(step={"ScheduledProcedureStepStatus": "ARRIVED"}), []),
        (query(PatientID="P1", step={"Modality": "MR"}), []),
    ],
)  # fmt: skip
def test_matching(populated: WorklistStore, identifier: Dataset, expected: list[str]) -> None:
    assert ids(populated, identifier) == expected


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize(
    "step",
    [
        {"ScheduledProcedureStepStartDate": "2024-01-05"},
        {"ScheduledProcedureStepStartDate": "20240105-20240106-20240107"},
        {"ScheduledProcedureStepStartTime": "8am"},
    ],
)
def test_malformed_date_or_time_is_a_parse_error(
    populated: WorklistStore, step: dict[str, str]
) -> None:
    with pytest.raises(ParseError):
        populated.find(query(step=step))


def test_results_are_ordered_and_paged(store: WorklistStore, engine: Engine) -> None:
    items = [
        order(f"o{n}", PatientID=f"P{n:02}",
              step={**CT_STEP, "ScheduledProcedureStepStartDate": f"202401{10 - n // 3:02}",
                    "ScheduledProcedureStepStartTime": f"{8 + n % 3:02}00"})
        for n in range(10)
    ]  # fmt: skip
    apply(store, engine, *reversed(items))
    store.page_size = 3  # force several pages (keyset continuation)
    when = {"ScheduledProcedureStepStartDate": "", "ScheduledProcedureStepStartTime": ""}
    found = [
        (str(sps(ds).ScheduledProcedureStepStartDate), str(sps(ds).ScheduledProcedureStepStartTime))
        for ds in store.find(query(step=when))
    ]
    assert len(found) == 10
    assert found == sorted(found)
    assert len(list(store.find(query(), limit=4))) == 4
    assert len(list(store.find(query(), limit=3))) == 3


# -- return keys and character sets -------------------------------------------


def test_response_has_exactly_the_requested_keys(populated: WorklistStore) -> None:
    identifier = query(
        PatientName="", PatientID="P1", PatientBirthDate="",
        step={"Modality": "", "ScheduledStationAETitle": "", "ScheduledProcedureStepLocation": ""},
    )  # fmt: skip
    [response] = list(populated.find(identifier))
    assert set(response.dir()) == {
        "PatientName", "PatientID", "PatientBirthDate", "ScheduledProcedureStepSequence"
    }  # fmt: skip
    assert response.PatientName == "Doe^John"
    assert response.PatientBirthDate in ("", None)
    step = sps(response)
    assert set(step.dir()) == {
        "Modality",
        "ScheduledStationAETitle",
        "ScheduledProcedureStepLocation",
    }
    assert (step.Modality, step.ScheduledStationAETitle) == ("CT", "CT1")
    assert step.ScheduledProcedureStepLocation in ("", None)
    assert "SpecificCharacterSet" not in response  # all ASCII


def test_empty_sequence_in_request_returns_whole_sequence(populated: WorklistStore) -> None:
    identifier = query(PatientID="P1")
    identifier.ScheduledProcedureStepSequence = []
    [response] = list(populated.find(identifier))
    step = sps(response)
    assert step.ScheduledProcedureStepID == "SPS1"
    assert step.ScheduledProcedureStepStatus == "SCHEDULED"


@pytest.mark.parametrize(
    ("name", "charset"),
    [
        ("Müller^Jürgen", "ISO_IR 100"),
        ("Σωκράτης^Νίκος", "ISO_IR 192"),
        ("山田^太郎", "ISO_IR 192"),
    ],
)
def test_specific_character_set_follows_returned_values(
    store: WorklistStore, engine: Engine, name: str, charset: str
) -> None:
    apply(store, engine, order("o1", PatientID="P1", PatientName=name, step=CT_STEP))
    [response] = list(store.find(query(PatientID="P1", PatientName="")))
    assert response.SpecificCharacterSet == charset
    encoded = encode(response, False, True)
    assert encoded is not None
    decoded = decode(BytesIO(encoded), False, True)
    assert decoded.PatientName == name
    assert "SpecificCharacterSet" not in next(store.find(query(PatientID="P1")))


def test_non_ascii_name_matches_case_insensitively(store: WorklistStore, engine: Engine) -> None:
    apply(store, engine, order("o1", PatientID="P1", PatientName="Müller^Jürgen", step=CT_STEP))
    assert ids(store, query(PatientName="MÜLLER*")) == ["P1"]


def test_get_and_list_items_return_plain_dicts(populated: WorklistStore) -> None:
    assert populated.get("missing") is None
    row = populated.get("o1")
    assert row is not None and row["accession_number"] == "ACC1"
    listed = populated.list_items(limit=2, offset=1)
    assert [r["item_key"] for r in listed] == ["o2", "o3"]
    assert all(isinstance(r, dict) for r in listed)


# -- the worklist destination -------------------------------------------------


def test_destination_applies_one_item_per_payload(store: WorklistStore, engine: Engine) -> None:
    destination = WorklistDestination(WorklistDestinationConfig(type="worklist"), store)
    assert isinstance(destination, TransactionalDestination)
    prepared = destination.prepare(order("o1", PatientID="P1", step=CT_STEP).model_dump_json())
    with engine.begin() as conn:
        delivery = destination.apply(conn, prepared)
    assert delivery.response == "created"
    assert ids(store, query(PatientID="P1")) == ["P1"]


def test_destination_refuses_a_bad_payload_without_quoting_it(
    store: WorklistStore, engine: Engine
) -> None:
    destination = WorklistDestination(WorklistDestinationConfig(type="worklist"), store)
    payload = '{"action": "explode", "key": "o1", "attributes": {"PatientName": "Secret^Name"}}'
    with pytest.raises(TransformError, match="action") as raised:
        destination.prepare(payload)
    assert "Secret" not in str(raised.value)
