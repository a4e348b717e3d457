"""Channels API without a running hub: list, view, validate, save, create, Git diff.

The store, the templates folder and Git are real; the channels folder is a Git
repository made for each test. Lifecycle actions need the hub (503 here); they
are tested against a running hub in test_channel_lifecycle.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from admin.api import create_app
from admin.security import CSRF_HEADER
from admin.settings import AdminSettings
from admin.tables import admin_access_log
from admin.users import add_user
from engine.config import HubSettings
from engine.services import Services
from engine.states import MessageStatus
from engine.store.db import open_engine
from engine.store.group_commit import GroupCommitter
from engine.store.messages import (
    InboundRecord,
    QueueItem,
    insert_inbound,
    mark_error,
    pending_entries,
)
from engine.templating import TemplateEnvironment

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"

ORDERS = """\
name: orders
description: orders to the RIS
source:
  type: mllp
  host: 127.0.0.1
  port: 2575
destinations:
  - name: ris
    type: mllp
    host: 127.0.0.1
    port: 2576
  - name: archive
    type: mllp
    enabled: false
    host: 127.0.0.1
    port: 2577
"""


@dataclass(frozen=True)
class ChannelServices:
    """What the channels API uses of :class:`Services`: store, settings, templates."""

    engine: Engine
    committer: GroupCommitter
    settings: HubSettings
    templates: TemplateEnvironment


def git(folder: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false",
         *args],
        cwd=folder, check=True, capture_output=True,
    )  # fmt: skip


@pytest.fixture
def channels(tmp_path: Path) -> Path:
    """A channels folder inside a Git repository, with orders.yaml committed."""
    repo = tmp_path / "site"
    folder = repo / "channels"
    folder.mkdir(parents=True)
    (folder / "orders.yaml").write_text(ORDERS)
    git(repo, "init", "-q")
    git(repo, "add", "channels/orders.yaml")
    git(repo, "commit", "-q", "-m", "orders")
    return folder


@pytest.fixture
def services(tmp_path: Path, channels: Path) -> Iterator[ChannelServices]:
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    committer = GroupCommitter(engine)
    committer.start()
    settings = HubSettings(channels_dir=channels, data_dir=tmp_path / "var")
    yield ChannelServices(engine, committer, settings, TemplateEnvironment(REPO / "transforms"))
    committer.stop()
    engine.dispose()


@pytest.fixture
def client(services: ChannelServices) -> TestClient:
    app = create_app(cast(Services, services), None, AdminSettings())
    for name, role in (("ann", "analyst"), ("vic", "viewer")):
        add_user(services.engine, name, PASSWORD, role)  # type: ignore[arg-type]
    return TestClient(app)


def login(client: TestClient, username: str) -> dict[str, str]:
    """Log in; the headers a write needs."""
    response = client.post("/api/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {CSRF_HEADER: response.json()["csrf_token"]}


def store_message(services: ChannelServices, channel: str, destinations: list[str]) -> None:
    record = InboundRecord(
        channel=channel,
        origin="mllp:test",
        raw="MSH|^~\\&|A|B|C|D|20260101||ORM^O01|1|P|2.5",
        status=MessageStatus.QUEUED if destinations else MessageStatus.ERROR,
        queue=[QueueItem(name, "payload") for name in destinations],
    )
    services.committer.run(insert_inbound(record, duplicate_control=False))


def errors_of(response: Any) -> list[tuple[int, str]]:
    assert response.status_code == 422, response.text
    return [(e["line"], e["field"]) for e in response.json()["detail"]["errors"]]


def test_list_shows_files_queues_and_channels_known_only_from_messages(
    client: TestClient, services: ChannelServices
) -> None:
    store_message(services, "orders", ["ris"])
    store_message(services, "orders", ["ris"])
    (entry, _) = pending_entries(services.engine, "orders", "ris", 10)
    services.committer.run(lambda conn: mark_error(conn, entry, "refused"))
    store_message(services, "retired", [])
    login(client, "vic")
    listed = client.get("/api/channels").json()
    assert [c["name"] for c in listed] == ["orders", "retired"]
    orders, retired = listed
    assert orders["file"] == "orders.yaml"
    assert orders["state"] == "undeployed"
    assert orders["enabled"] is True
    assert orders["source_type"] == "mllp"
    assert orders["description"] == "orders to the RIS"
    assert orders["counts"] == {"QUEUED": 1, "ERROR": 1}  # a failed delivery fails its message
    ris, archive = orders["destinations"]
    assert (ris["name"], ris["type"], ris["enabled"]) == ("ris", "mllp", True)
    assert (ris["queue_depth"], ris["errored"]) == (1, 1)
    assert ris["oldest_queued_at"].endswith("+00:00")
    assert (archive["name"], archive["enabled"], archive["queue_depth"]) == ("archive", False, 0)
    assert archive["oldest_queued_at"] is None
    assert retired == {
        "name": "retired",
        "file": None,
        "state": "undeployed",
        "enabled": False,
        "source_type": None,
        "description": None,
        "destinations": [],
        "counts": {"ERROR": 1},
    }
    assert client.get("/api/channels/orders").json() == orders
    assert client.get("/api/channels/nope").status_code == 404


def test_file_view_and_diff_against_git_head(client: TestClient, channels: Path) -> None:
    headers = login(client, "vic")
    view = client.get("/api/channels/orders/file").json()
    assert view == {
        "name": "orders",
        "file": "orders.yaml",
        "text": ORDERS,
        "tracked_in_git": True,
        "modified": False,
    }
    same = client.post("/api/channels/orders/diff", json={}, headers=headers).json()
    assert same == {"tracked_in_git": True, "diff": ""}
    edited = ORDERS.replace("port: 2576", "port: 2586")
    diff = client.post("/api/channels/orders/diff", json={"text": edited}, headers=headers).json()[
        "diff"
    ]
    assert diff.startswith("--- a/orders.yaml\n+++ b/orders.yaml\n@@")
    assert "\n-    port: 2576\n+    port: 2586\n" in diff
    (channels / "orders.yaml").write_text(edited)
    assert client.get("/api/channels/orders/file").json()["modified"] is True
    on_disk = client.post("/api/channels/orders/diff", json={}, headers=headers).json()["diff"]
    assert on_disk == diff
    assert client.get("/api/channels/nope/file").status_code == 404


def test_an_untracked_file_diffs_against_nothing(client: TestClient, channels: Path) -> None:
    text = ORDERS.replace("name: orders", "name: extra").replace("2575", "2578")
    (channels / "extra.yaml").write_text(text)
    headers = login(client, "vic")
    assert client.get("/api/channels/extra/file").json()["tracked_in_git"] is False
    diff = client.post("/api/channels/extra/diff", json={}, headers=headers).json()
    assert diff["tracked_in_git"] is False
    assert diff["diff"].startswith("--- a/extra.yaml\n+++ b/extra.yaml\n@@ -0,0 +1,")
    assert "+name: extra\n" in diff["diff"]


def test_a_folder_outside_git_is_not_tracked(tmp_path: Path, services: ChannelServices) -> None:
    outside = tmp_path / "loose"
    outside.mkdir()
    (outside / "orders.yaml").write_text(ORDERS)
    settings = services.settings.model_copy(update={"channels_dir": outside})
    loose = ChannelServices(services.engine, services.committer, settings, services.templates)
    client = TestClient(create_app(cast(Services, loose), None, AdminSettings()))
    add_user(services.engine, "ann", PASSWORD, "analyst")
    login(client, "ann")
    view = client.get("/api/channels/orders/file").json()
    assert (view["tracked_in_git"], view["modified"]) == (False, True)


def test_save_refuses_invalid_text_with_every_error_and_its_line(
    client: TestClient, channels: Path, services: ChannelServices
) -> None:
    headers = login(client, "ann")
    bad = ORDERS.replace("  port: 2575", "  port: 99999").replace(
        "type: mllp\n    host", "type: mlp\n    host", 1
    )
    response = client.put("/api/channels/orders/file", json={"text": bad}, headers=headers)
    assert errors_of(response) == [(6, "source.port"), (9, "destinations.0.type")]
    error = response.json()["detail"]["errors"][1]
    assert error["file"] == "orders.yaml"
    assert "did you mean 'mllp'" in error["message"]
    syntax = client.put(
        "/api/channels/orders/file",
        json={"text": ORDERS.replace("description: orders", "description: [orders")},
        headers=headers,
    )
    assert errors_of(syntax) == [(3, "(yaml)")]
    renamed = client.put(
        "/api/channels/orders/file",
        json={"text": ORDERS.replace("name: orders", "name: orders2")},
        headers=headers,
    )
    assert errors_of(renamed) == [(1, "name")]
    assert (channels / "orders.yaml").read_text() == ORDERS, "an invalid text never reaches disk"
    with services.engine.connect() as conn:
        assert conn.execute(select(admin_access_log)).all() == []


def test_save_writes_a_valid_text_and_logs_who(
    client: TestClient, channels: Path, services: ChannelServices
) -> None:
    headers = login(client, "ann")
    edited = ORDERS.replace("port: 2576", "port: 2586")
    response = client.put("/api/channels/orders/file", json={"text": edited}, headers=headers)
    assert response.json() == {"saved": True, "file": "orders.yaml"}
    assert (channels / "orders.yaml").read_text() == edited
    assert [p.name for p in channels.iterdir()] == ["orders.yaml"], "no temporary file left"
    with services.engine.connect() as conn:
        row = conn.execute(select(admin_access_log)).mappings().one()
    assert (row["username"], row["action"], row["channel"]) == ("ann", "channel.save", "orders")


def test_validation_includes_what_serve_checks_at_start(client: TestClient) -> None:
    headers = login(client, "vic")  # validating writes nothing: any user may
    text = ORDERS.replace(
        "destinations:",
        "filters:\n  - name: broken\n    when: msg.type ==\ntransform:\n"
        "  template: missing.j2\n  output: hl7\ndestinations:",
    )
    answer = client.post("/api/channels/validate", json={"text": text}, headers=headers).json()
    assert answer["valid"] is False
    assert [(e["line"], e["field"]) for e in answer["errors"]] == [
        (11, "transform.template"),
        (9, "filters.0.when"),
    ]
    assert "not found" in answer["errors"][0]["message"]
    good = client.post("/api/channels/validate", json={"text": ORDERS}, headers=headers).json()
    assert good == {"valid": True, "errors": []}
    taken = client.post(
        "/api/channels/validate", json={"text": ORDERS, "file": "copy.yaml"}, headers=headers
    ).json()
    assert taken["errors"][0]["field"] == "name"
    assert "also defined in orders.yaml" in taken["errors"][0]["message"]
    not_yaml = client.post("/api/channels/validate", json={"text": "- a\n- b\n"}, headers=headers)
    assert not_yaml.json()["errors"][0]["field"] == "(file)"


def test_create_a_channel_file(
    client: TestClient, channels: Path, services: ChannelServices
) -> None:
    headers = login(client, "ann")
    text = ORDERS.replace("name: orders", "name: copy").replace("2575", "2579")
    body = {"file": "copy.yaml", "text": text}
    created = client.post("/api/channels", json=body, headers=headers)
    assert created.status_code == 201, created.text
    assert (created.json()["name"], created.json()["state"]) == ("copy", "undeployed")
    assert created.json()["file"] == "copy.yaml"
    assert (channels / "copy.yaml").read_text() == text
    again = client.post("/api/channels", json=body, headers=headers)
    assert again.status_code == 409
    same_name = client.post(
        "/api/channels", json={"file": "other.yaml", "text": text}, headers=headers
    )
    assert errors_of(same_name) == [(1, "name")]
    escape = client.post(
        "/api/channels", json={"file": "../evil.yaml", "text": text}, headers=headers
    )
    assert escape.status_code == 422
    assert not (channels.parent / "evil.yaml").exists()
    with services.engine.connect() as conn:
        row = conn.execute(select(admin_access_log)).mappings().one()
    assert (row["action"], row["channel"]) == ("channel.create", "copy")


def test_a_viewer_cannot_change_channels(client: TestClient, channels: Path) -> None:
    headers = login(client, "vic")
    put = client.put("/api/channels/orders/file", json={"text": ORDERS}, headers=headers)
    create = client.post("/api/channels", json={"file": "x.yaml", "text": ORDERS}, headers=headers)
    deploy = client.post("/api/channels/orders/deploy", headers=headers)
    assert (put.status_code, create.status_code, deploy.status_code) == (403, 403, 403)
    assert not (channels / "x.yaml").exists()


def test_lifecycle_needs_a_running_hub(client: TestClient) -> None:
    headers = login(client, "ann")
    for action in ("deploy", "undeploy", "start", "stop", "pause"):
        response = client.post(f"/api/channels/orders/{action}", headers=headers)
        assert response.status_code == 503, action
    assert client.post("/api/channels/orders/explode", headers=headers).status_code == 422
