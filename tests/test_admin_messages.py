"""Message browser extras: segment view, search count, bulk reprocess, export, access log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from admin.hl7_segments import display
from admin.security import CSRF_HEADER
from admin.tables import admin_access_log
from engine.store.tables import queue_entries
from tests.support.admin_app import (
    FakeServices,
    Hub,
    Runtime,
    Worker,
    failed_message,
    login,
    make_client,
    open_store,
    store_message,
)

ORDER = (
    "MSH|^~\\&|EHR|HOSP|MERIDIAN|RAD|202601010830||ORM^O01|C1|P|2.3\r\n"
    "PID|1||MRN123^^^HOSP~X9^^^OTHER||DOE^JANE\n"
    "ORC|NW|ORD1\r"
    "ZDS|1.2.840.99^MERIDIAN\r"
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FakeServices]:
    with open_store(tmp_path) as services:
        yield services


@pytest.fixture
def worker() -> Worker:
    return Worker("ris")


@pytest.fixture
def client(store: FakeServices, worker: Worker) -> TestClient:
    return make_client(store, Hub(runtimes={"orders": Runtime([worker])}))


def access(store: FakeServices) -> list[tuple[str, str, int | None]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(admin_access_log).order_by(admin_access_log.c.id)).mappings()
        return [(row["username"], row["action"], row["message_id"]) for row in rows]


def fields(segment: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {f["position"]: (f["name"], f["value"]) for f in segment["fields"]}


# -- segments ------------------------------------------------------------------------------


def test_hl7_is_shown_segment_by_segment_with_standard_names(
    client: TestClient, store: FakeServices
) -> None:
    message_id = store_message(store, ORDER)
    login(client, "ann")
    response = client.get(f"/api/messages/{message_id}/segments")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["format"], body["version"]) == ("hl7", "2.3")
    assert [s["name"] for s in body["segments"]] == ["MSH", "PID", "ORC", "ZDS"]
    assert [s["index"] for s in body["segments"]] == [0, 1, 2, 3]
    # CRLF, LF and CR all end a segment; the text shows one per line.
    assert body["text"].splitlines()[1].startswith("PID|1||")
    msh, pid, orc, zds = body["segments"]
    assert msh["description"] == "Message Header"
    assert fields(msh)["MSH-1"] == ("Field Separator", "|")
    assert fields(msh)["MSH-2"] == ("Encoding Characters", "^~\\&")
    assert fields(msh)["MSH-9"] == ("Message Type", "ORM^O01")
    assert fields(msh)["MSH-12"][1] == "2.3"
    assert pid["description"] == "Patient Identification"
    # Names of the message's own version (2.3 calls PID-3 the internal ID).
    assert fields(pid)["PID-3"] == ("Patient ID Internal ID", "MRN123^^^HOSP~X9^^^OTHER")
    assert fields(pid)["PID-5"] == ("Patient Name", "DOE^JANE")
    assert fields(orc)["ORC-1"] == ("Order Control", "NW")
    assert zds["description"] == "Z-segment"
    assert fields(zds) == {"ZDS-1": ("", "1.2.840.99^MERIDIAN")}


def test_unknown_version_is_named_with_2_5_1(client: TestClient, store: FakeServices) -> None:
    raw = "MSH|^~\\&|EHR|HOSP|MERIDIAN|RAD|202601010830||ORM^O01|C1|P|9.9\rPID|1||MRN7"
    message_id = store_message(store, raw)
    login(client, "ann")
    body = client.get(f"/api/messages/{message_id}/segments").json()
    assert body["version"] == "9.9"
    assert fields(body["segments"][1])["PID-3"][0] == "Patient Identifier List"


def test_other_stages_and_queue_entries(client: TestClient, store: FakeServices) -> None:
    message_id = store_message(store, ORDER, transformed='{"accession": "ACC1", "n": [1]}')
    other = store_message(store, ORDER)
    login(client, "ann")
    transformed = client.get(
        f"/api/messages/{message_id}/segments", params={"stage": "transformed"}
    ).json()
    assert transformed["format"] == "json"
    assert transformed["segments"] == []
    assert json.loads(transformed["text"]) == {"accession": "ACC1", "n": [1]}
    assert "\n  " in transformed["text"]  # pretty-printed
    with store.engine.connect() as conn:
        entry = conn.execute(
            select(queue_entries.c.id).where(queue_entries.c.message_id == message_id)
        ).scalar_one()
    payload = client.get(
        f"/api/messages/{message_id}/segments", params={"queue_entry": entry}
    ).json()
    assert payload["format"] == "text"  # "PAYLOAD MSH|...": not an HL7 message
    assert payload["text"].startswith("PAYLOAD ")
    response = client.get(
        f"/api/messages/{message_id}/segments", params={"queue_entry": entry, "part": "response"}
    ).json()
    assert response == {"format": "text", "version": None, "text": "", "segments": []}
    # A queue entry of another message is not reachable through this one.
    wrong = client.get(f"/api/messages/{other}/segments", params={"queue_entry": entry})
    assert wrong.status_code == 404
    assert client.get("/api/messages/999/segments").status_code == 404


def test_segments_need_phi_access_and_are_access_logged(
    client: TestClient, store: FakeServices
) -> None:
    message_id = store_message(store, ORDER)
    login(client, "vic")
    assert client.get(f"/api/messages/{message_id}/segments").status_code == 403
    login(client, "ann")
    assert client.get(f"/api/messages/{message_id}/segments").status_code == 200
    assert access(store) == [("ann", "view", message_id)]


# -- search count --------------------------------------------------------------------------


def test_count_gives_the_total_beyond_the_page(client: TestClient, store: FakeServices) -> None:
    for n in range(3):
        store_message(store, accession=f"ACC{n}")
    store_message(store, channel="other")
    login(client, "vic")
    page = client.get("/api/messages", params={"channel": "orders", "limit": 2, "count": True})
    body = page.json()
    assert (len(body["items"]), body["total"]) == (2, 3)
    assert "total" not in client.get("/api/messages").json()


# -- bulk reprocess ------------------------------------------------------------------------


def test_bulk_reprocess_requeues_each_and_reports_missing_ones(
    client: TestClient, store: FakeServices, worker: Worker
) -> None:
    first = failed_message(store, accession="A1")
    second = failed_message(store, accession="A2")
    csrf = login(client, "ann")
    response = client.post(
        "/api/messages/reprocess",
        json={"ids": [first, 424242, second, first]},
        headers={CSRF_HEADER: csrf},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "results": [
            {"message_id": first, "requeued": 1, "error": None},
            {"message_id": 424242, "requeued": 0, "error": "no such message"},
            {"message_id": second, "requeued": 1, "error": None},
        ]
    }
    with store.engine.connect() as conn:
        statuses = conn.execute(select(queue_entries.c.status)).scalars().all()
    assert statuses == ["QUEUED", "QUEUED"]
    assert worker.woken == 1  # one wake per destination, not per message
    assert access(store) == [("ann", "reprocess", first), ("ann", "reprocess", second)]


def test_bulk_reprocess_limits(client: TestClient, store: FakeServices) -> None:
    message_id = failed_message(store)
    csrf = login(client, "vic")
    body = {"ids": [message_id]}
    assert (
        client.post("/api/messages/reprocess", json=body, headers={CSRF_HEADER: csrf}).status_code
        == 403
    )
    csrf = login(client, "ann")
    for bad in ({"ids": []}, {"ids": list(range(1, 1002))}, {"ids": [1], "all": True}):
        answer = client.post("/api/messages/reprocess", json=bad, headers={CSRF_HEADER: csrf})
        assert answer.status_code == 422, bad


# -- export --------------------------------------------------------------------------------


def test_export_ndjson_streams_every_match_with_content(
    client: TestClient, store: FakeServices
) -> None:
    ids = [store_message(store, ORDER, accession=f"ACC{n}") for n in range(3)]
    store_message(store, channel="other")
    login(client, "ann")
    response = client.get("/api/messages/export", params={"channel": "orders"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="meridian-messages-')
    assert disposition.endswith('.ndjson"')
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["id"] for line in lines] == sorted(ids, reverse=True)
    assert lines[0]["raw"] == ORDER
    assert lines[0]["transformed"] == "TRANSFORMED " + ORDER
    assert lines[0]["patient_id"] == "MRN123"
    assert lines[0]["received_at"].endswith("+00:00")
    assert sorted(access(store)) == sorted(("ann", "export", i) for i in ids)


def test_export_hl7_is_a_resendable_file(client: TestClient, store: FakeServices) -> None:
    first = store_message(store, ORDER)
    store_message(store, '{"not": "hl7"}')
    second = store_message(store, ORDER.replace("C1", "C2"))
    login(client, "ann")
    response = client.get("/api/messages/export", params={"format": "hl7"})
    assert response.status_code == 200
    assert response.headers["content-disposition"].endswith('.hl7"')
    messages = response.text.split("\n")
    # Newest first, one message per LF-terminated line, every segment ended by CR.
    assert messages[-1] == ""
    assert [m.split("|")[9] for m in messages[:-1]] == ["C2", "C1"]
    assert messages[1] == (
        "MSH|^~\\&|EHR|HOSP|MERIDIAN|RAD|202601010830||ORM^O01|C1|P|2.3\r"
        "PID|1||MRN123^^^HOSP~X9^^^OTHER||DOE^JANE\rORC|NW|ORD1\rZDS|1.2.840.99^MERIDIAN\r"
    )
    assert {row[2] for row in access(store)} >= {first, second}


def test_export_needs_phi_access_and_is_bounded(client: TestClient, store: FakeServices) -> None:
    store_message(store)
    login(client, "vic")
    assert client.get("/api/messages/export").status_code == 403
    login(client, "ann")
    assert client.get("/api/messages/export", params={"limit": 10_001}).status_code == 422
    assert client.get("/api/messages/export", params={"format": "csv"}).status_code == 422
    limited = client.get("/api/messages/export", params={"limit": 1})
    assert len(limited.text.splitlines()) == 1
    assert access(store) == [("ann", "export", 1)]


# -- access log ----------------------------------------------------------------------------


def test_access_log_shows_who_did_what_to_admins_only(
    client: TestClient, store: FakeServices
) -> None:
    message_id = failed_message(store)
    csrf = login(client, "ann")
    client.get(f"/api/messages/{message_id}")
    client.post(f"/api/messages/{message_id}/reprocess", headers={CSRF_HEADER: csrf})
    assert client.get("/api/access-log").status_code == 403
    login(client, "ada")
    rows = client.get("/api/access-log").json()
    assert [(r["username"], r["action"], r["message_id"]) for r in rows] == [
        ("ann", "reprocess", message_id),
        ("ann", "view", message_id),
    ]
    assert rows[0]["at"].endswith(("Z", "+00:00"))
    only = client.get("/api/access-log", params={"action": "view", "limit": 5}).json()
    assert [r["action"] for r in only] == ["view"]
    assert client.get("/api/access-log", params={"username": "zed"}).json() == []


def test_other_delimiters_and_stray_lines_are_shown_faithfully() -> None:
    shown = display("\ufeffMSH#*~\\&#EHR#HOSP\rPID#1##A*B~C\rnot a segment\r\r")
    assert shown["format"] == "hl7"
    assert shown["version"] is None
    msh, pid, stray = shown["segments"]
    assert fields(msh)["MSH-1"] == ("Field Separator", "#")
    assert fields(msh)["MSH-2"] == ("Encoding Characters", "*~\\&")
    assert fields(pid)["PID-3"][1] == "A*B~C"
    assert (stray["name"], stray["fields"][0]["value"]) == ("", "not a segment")
    assert display("plain words")["format"] == "text"
    assert display("[1, 2")["format"] == "text"  # broken JSON stays text
