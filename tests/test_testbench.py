"""The template test bench API over the shipped channels and templates, on a real store.

The bench must show what the hub would do (same filters, templates, validation) and
do none of it: no message stored, nothing queued, no worklist item.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from admin.api import create_app
from admin.security import CSRF_HEADER
from admin.settings import AdminSettings
from admin.tables import admin_access_log
from admin.users import Role, add_user
from engine.config import HubSettings
from engine.reading_config import ReadingWorklistConfig
from engine.reading_worklist import ReadingWorklist
from engine.services import Services
from engine.states import MessageStatus
from engine.store.db import open_engine
from engine.store.group_commit import GroupCommitter
from engine.store.messages import InboundRecord, insert_inbound
from engine.store.tables import messages, queue_entries
from engine.worklist import WorklistStore
from tests.support.orders import orm

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"
ORM_FILE = REPO / "tests" / "messages" / "orm_o01_v251_nw.hl7"
ORDERS = "orders-to-worklist"
ORDERS_YAML = (REPO / "channels" / "orders-to-worklist.yaml").read_text()


@dataclass(frozen=True)
class BenchServices:
    """What the admin API and the bench use of :class:`Services`, from real objects."""

    settings: HubSettings
    engine: Engine
    committer: GroupCommitter
    worklist: WorklistStore
    reading_worklist: ReadingWorklist


@pytest.fixture
def services(tmp_path: Path) -> Iterator[BenchServices]:
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    committer = GroupCommitter(engine)
    committer.start()
    settings = HubSettings(
        channels_dir=REPO / "channels", transforms_dir=REPO / "transforms", data_dir=tmp_path
    )
    yield BenchServices(
        settings,
        engine,
        committer,
        WorklistStore(engine),
        ReadingWorklist(engine, ReadingWorklistConfig()),
    )
    committer.stop()
    engine.dispose()


@pytest.fixture
def client(services: BenchServices) -> TestClient:
    app = create_app(cast(Services, services), None, AdminSettings())
    users: tuple[tuple[str, Role, bool], ...] = (
        ("ann", "analyst", True),
        ("nora", "analyst", False),
        ("vic", "viewer", True),
    )
    for name, role, phi in users:
        add_user(services.engine, name, PASSWORD, role, can_view_phi=phi)
    return TestClient(app)


def login(client: TestClient, username: str = "ann") -> dict[str, str]:
    """Log in; returns the CSRF header for writes."""
    response = client.post("/api/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {CSRF_HEADER: response.json()["csrf_token"]}


def bench(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post("/api/testbench", json={"channel": ORDERS, **body}, headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def store_counts(services: BenchServices) -> tuple[int, int, int]:
    """Messages, queue entries, worklist items."""
    with services.engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(messages)).scalar_one()
        queued = conn.execute(select(func.count()).select_from(queue_entries)).scalar_one()
    items = len(services.worklist.list_items(active_only=False))
    return int(stored), int(queued), items


def test_a_real_order_shows_the_worklist_item_each_step_would_produce(
    client: TestClient, services: BenchServices
) -> None:
    headers = login(client)
    # Pasted from an editor: LF line ends, not the CR of the wire.
    pasted = ORM_FILE.read_text().replace("\r", "\n")
    result = bench(client, headers, message=pasted)

    assert result["read"] == {"ok": True, "error": None, "message_type": "ORM^O01"}
    assert result["filters"] == [
        {"name": "orders with an order control code", "passed": True, "error": None}
    ]
    assert result["filtered"] is False
    transform = result["transform"]
    assert transform["error"] is None
    output = transform["output"]
    for expected in (
        '"action":"create"',
        '"AccessionNumber":"ACC2001"',
        '"PatientID":"MRN2001"',
        '"PatientName":"SMITH^JOHN^Q"',
        '"Modality":"MR"',
        '"StudyInstanceUID":"',
        '"ScheduledProcedureStepSequence"',
    ):
        assert expected in output
    worklist, prefetch = result["destinations"]
    assert worklist["name"] == "worklist" and worklist["type"] == "worklist"
    assert worklist["enabled"] is True and worklist["filtered"] is False
    assert worklist["output"] == output, "the worklist destination gets the item unchanged"
    assert prefetch["name"] == "prefetch-priors" and prefetch["enabled"] is False
    assert store_counts(services) == (0, 0, 0), "the bench stores, queues and schedules nothing"


def test_crlf_and_cr_separators_read_alike(client: TestClient) -> None:
    headers = login(client)
    message = orm(accession="ACCSEP")
    outputs = {
        bench(client, headers, message=message.replace("\r", sep))["transform"]["output"]
        for sep in ("\r", "\n", "\r\n")
    }
    assert len(outputs) == 1
    assert '"AccessionNumber":"ACCSEP"' in outputs.pop()


def test_a_channel_filter_that_rejects_stops_before_the_transform(client: TestClient) -> None:
    headers = login(client)
    edited = ORDERS_YAML.replace(
        "filters:\n",
        'filters:\n  - name: only CT\n    when: msg.seg("OBR")["24"] == "CT"\n',
        1,
    )
    result = bench(client, headers, message=ORM_FILE.read_text(), channel_yaml=edited)
    assert result["read"]["ok"] is True
    assert result["filters"] == [
        {"name": "only CT", "passed": False, "error": None},
        # The hub stops at the first failing rule: the next one is not evaluated.
        {"name": "orders with an order control code", "passed": None, "error": None},
    ]
    assert result["filtered"] is True
    assert result["transform"] == {"output": None, "error": None, "truncated": False}
    assert all(d["output"] is None for d in result["destinations"])


def test_a_destination_filter_decides_for_that_destination_only(client: TestClient) -> None:
    headers = login(client)
    edited = ORDERS_YAML.replace(
        "  - name: worklist\n    type: worklist\n",
        "  - name: worklist\n    type: worklist\n    filters:\n"
        '      - name: CT only\n        when: msg.seg("OBR")["24"] == "CT"\n',
        1,
    )
    mr = bench(client, headers, message=orm(modality="MR"), channel_yaml=edited)
    ct = bench(client, headers, message=orm(modality="CT"), channel_yaml=edited)
    assert mr["transform"]["output"] and ct["transform"]["output"]
    assert mr["destinations"][0]["filtered"] is True
    assert mr["destinations"][0]["output"] is None
    assert mr["destinations"][0]["filters"] == [{"name": "CT only", "passed": False, "error": None}]
    assert ct["destinations"][0]["filtered"] is False
    assert '"Modality":"CT"' in ct["destinations"][0]["output"]


def test_a_message_type_the_channel_does_not_accept_is_shown_as_refused(
    client: TestClient,
) -> None:
    headers = login(client)
    oru = (REPO / "tests" / "messages" / "oru" / "oru_r01_v251_final.hl7").read_text()
    result = bench(client, headers, message=oru)
    assert result["read"]["ok"] is False
    assert result["read"]["message_type"] == "ORU^R01"
    assert "not accepted" in result["read"]["error"]
    assert result["transform"]["output"] is None


def test_unparseable_text_is_a_read_error_not_a_server_error(client: TestClient) -> None:
    result = bench(client, login(client), message="this is not HL7")
    assert result["read"]["ok"] is False
    assert "MSH" in result["read"]["error"]
    assert result["filters"][0]["passed"] is None


def test_a_template_override_with_a_syntax_error_names_its_line(client: TestClient) -> None:
    headers = login(client)
    broken = "- action: create\n  key: x\n  status: {{ lookup( }}\n"
    result = bench(client, headers, message=orm(), templates={"orm_to_mwl.j2": broken})
    error = result["transform"]["error"]
    assert error.startswith("orm_to_mwl.j2:3: template syntax error"), error
    assert result["transform"]["output"] is None


def test_a_template_override_runtime_error_names_its_line(client: TestClient) -> None:
    headers = login(client)
    broken = "{# line 1 #}\n- action: create\n  key: {{ msg.seg('ORC').nonexistent() }}\n"
    result = bench(client, headers, message=orm(), templates={"orm_to_mwl.j2": broken})
    assert result["transform"]["error"].startswith("orm_to_mwl.j2:3:"), result["transform"]


def test_a_template_override_replaces_the_file_for_this_run_only(client: TestClient) -> None:
    headers = login(client)
    override = (
        "- action: create\n  key: {{ 'K-' ~ msg.seg('OBR')['18'] }}\n"
        "  attributes:\n    AccessionNumber: {{ msg.seg('OBR')['18'] }}\n"
    )
    result = bench(client, headers, message=orm(), templates={"orm_to_mwl.j2": override})
    assert result["transform"]["output"] == (
        '{"action":"create","key":"K-ACC1001","status":null,'
        '"attributes":{"AccessionNumber":"ACC1001"}}'
    )
    # The next run (and the hub) still use the file on disk.
    again = bench(client, headers, message=orm())
    assert '"RequestedProcedureID":"RPACC1001"' in again["transform"]["output"]


def test_invalid_unsaved_channel_text_is_a_422_naming_the_line(client: TestClient) -> None:
    headers = login(client)
    edited = ORDERS_YAML.replace("  duplicate_control: true\n", "  duplicate_controll: true\n")
    line = edited.splitlines().index("  duplicate_controll: true") + 1
    response = client.post(
        "/api/testbench",
        json={"channel": ORDERS, "message": orm(), "channel_yaml": edited},
        headers=headers,
    )
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]["errors"]
    assert error["file"] == "orders-to-worklist.yaml"
    assert error["line"] == line
    assert error["field"] == "inbound.duplicate_controll"
    assert error["message"]


def test_a_filter_expression_that_does_not_compile_is_a_422_naming_the_line(
    client: TestClient,
) -> None:
    headers = login(client)
    edited = ORDERS_YAML.replace('msg.segs("ORC") | length > 0', 'msg.segs("ORC") |', 1)
    line = next(
        number
        for number, text in enumerate(edited.splitlines(), start=1)
        if 'msg.segs("ORC") |' in text
    )
    response = client.post(
        "/api/testbench",
        json={"channel": ORDERS, "message": orm(), "channel_yaml": edited},
        headers=headers,
    )
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]["errors"]
    assert (error["line"], error["field"]) == (line, "filters.0.when")
    assert "expression syntax error" in error["message"]


def test_a_stored_message_runs_without_any_side_effect(
    client: TestClient, services: BenchServices
) -> None:
    record = InboundRecord(
        channel=ORDERS,
        origin="mllp:test",
        raw=ORM_FILE.read_text(),
        status=MessageStatus.ERROR,
        error="template error at the time",
    )
    message_id = services.committer.run(insert_inbound(record, duplicate_control=False)).message_id
    before = store_counts(services)
    headers = login(client)

    result = bench(client, headers, message_id=message_id)

    assert '"AccessionNumber":"ACC2001"' in result["destinations"][0]["output"]
    assert store_counts(services) == before == (1, 0, 0)
    with services.engine.connect() as conn:
        logged = conn.execute(
            select(admin_access_log.c.username, admin_access_log.c.action).where(
                admin_access_log.c.message_id == message_id
            )
        ).all()
    assert [tuple(row) for row in logged] == [("ann", "testbench")]


def test_a_stored_message_needs_phi_access(client: TestClient, services: BenchServices) -> None:
    record = InboundRecord(
        channel=ORDERS, origin="mllp:test", raw=orm(), status=MessageStatus.FILTERED
    )
    message_id = services.committer.run(insert_inbound(record, duplicate_control=False)).message_id
    headers = login(client, "nora")
    response = client.post(
        "/api/testbench", json={"channel": ORDERS, "message_id": message_id}, headers=headers
    )
    assert response.status_code == 403
    # Pasted text is the analyst's own: allowed.
    assert bench(client, headers, message=orm())["read"]["ok"] is True


def test_bench_needs_the_analyst_role_and_csrf(client: TestClient) -> None:
    headers = login(client, "vic")
    body = {"channel": ORDERS, "message": orm()}
    assert client.post("/api/testbench", json=body, headers=headers).status_code == 403
    login(client, "ann")
    assert client.post("/api/testbench", json=body).status_code == 403  # no CSRF token


def test_unknown_channel_is_404_and_the_body_must_name_one_message(client: TestClient) -> None:
    headers = login(client)
    response = client.post(
        "/api/testbench", json={"channel": "no-such-channel", "message": orm()}, headers=headers
    )
    assert response.status_code == 404
    both = {"channel": ORDERS, "message": orm(), "message_id": 1}
    assert client.post("/api/testbench", json=both, headers=headers).status_code == 422


def test_channels_whose_reading_has_side_effects_are_refused(client: TestClient) -> None:
    response = client.post(
        "/api/testbench",
        json={"channel": "images-to-ai", "message": "{}"},
        headers=login(client),
    )
    assert response.status_code == 422
    assert "dicom-study" in response.json()["detail"]


def test_report_channels_render_their_oru_without_sending_it(client: TestClient) -> None:
    headers = login(client)
    report = {
        "study_instance_uid": "1.2.3.4.5",
        "accession_number": "ACC77",
        "patient": {"id": "MRN77", "name": "DOE^JANE"},
        "procedure": {"code": "CTHEAD", "description": "CT head"},
        "status": "F",
        "text": "IMPRESSION: normal.",
        "author": "HOUSE^GREGORY",
        "reported_at": "2026-11-23T10:00:00+01:00",
    }
    import json

    response = client.post(
        "/api/testbench",
        json={"channel": "results-to-ehr", "message": json.dumps(report)},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    oru, fhir = response.json()["destinations"]
    assert oru["error"] is None, oru
    obr = next(s for s in oru["output"].split("\r") if s.startswith("OBR|"))
    assert obr.split("|")[25] == "F"
    assert '"DiagnosticReport"' in fhir["output"]


def test_templates_are_listed_and_read_but_not_outside_the_folder(client: TestClient) -> None:
    login(client, "vic")
    names = [t["name"] for t in client.get("/api/testbench/templates").json()]
    assert "orm_to_mwl.j2" in names and "report_to_oru.j2" in names
    one = client.get("/api/testbench/templates/orm_to_mwl.j2").json()
    assert one["name"] == "orm_to_mwl.j2"
    assert one["text"] == (REPO / "transforms" / "orm_to_mwl.j2").read_text()
    for bad in (
        "../channels/orders-to-worklist.yaml",
        "..%2Fchannels%2Forders-to-worklist.yaml",
        "tables/order_control.csv",
        "missing.j2",
        "%2Fetc%2Fpasswd.j2",
    ):
        assert client.get(f"/api/testbench/templates/{bad}").status_code == 404, bad


def test_pasted_text_is_read_in_the_charset_its_msh_18_declares(client: TestClient) -> None:
    latin1 = (REPO / "tests" / "messages" / "orm_o01_latin1.hl7").read_bytes().decode("latin-1")
    result = bench(client, login(client), message=latin1)
    assert result["read"]["ok"] is True
    assert '"PatientName":"MÜLLER^JÖRG"' in result["transform"]["output"]


NEW_CHANNEL = """\
name: bench-scratch
source:
  type: channel
transform:
  template: scratch.j2
  output: text
destinations:
  - name: elsewhere
    type: channel
    channel: results-to-ehr
"""


def test_an_unsaved_new_channel_runs_and_huge_output_is_cut(client: TestClient) -> None:
    headers = login(client)
    response = client.post(
        "/api/testbench",
        json={
            "channel": "bench-scratch",
            "message": orm(),
            "channel_yaml": NEW_CHANNEL,
            "templates": {"scratch.j2": "{{ msg.seg('OBR')['18'] * 200000 }}"},
        },
        headers=headers,
    )
    assert response.status_code == 200, response.text
    transform = response.json()["transform"]
    assert transform["truncated"] is True
    assert len(transform["output"]) == 1_000_000
    assert transform["output"].startswith("ACC1001ACC1001")
    assert response.json()["destinations"][0]["truncated"] is True


def test_every_error_of_unsaved_channel_text_is_reported(client: TestClient) -> None:
    broken = NEW_CHANNEL.replace("  output: text", "  output: pdf").replace(
        "    channel: results-to-ehr", "    chanel: results-to-ehr"
    )
    response = client.post(
        "/api/testbench",
        json={"channel": "bench-scratch", "message": orm(), "channel_yaml": broken},
        headers=login(client),
    )
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]["errors"]
    assert {e["file"] for e in errors} == {"bench-scratch.yaml"}
    lines = broken.splitlines()
    assert {(e["field"], e["line"]) for e in errors} >= {
        ("transform.output", lines.index("  output: pdf") + 1),
        ("destinations.0.chanel", lines.index("    chanel: results-to-ehr") + 1),
    }
