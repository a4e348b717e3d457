"""The web UI's routes: what is public, what needs a session, and the headers on UI answers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from admin.api import create_app
from admin.settings import AdminSettings
from admin.users import add_user
from engine.reading_config import ReadingWorklistConfig
from engine.reading_worklist import ReadingWorklist
from engine.services import Services
from engine.store.db import open_engine
from engine.store.group_commit import GroupCommitter
from engine.worklist import WorklistStore

PASSWORD = "correct horse battery"


@dataclass(frozen=True)
class StoreServices:
    """The parts of :class:`Services` the admin app uses, over a real SQLite store."""

    engine: Engine
    committer: GroupCommitter
    worklist: WorklistStore
    reading_worklist: ReadingWorklist


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    committer = GroupCommitter(engine)
    committer.start()
    services = StoreServices(
        engine, committer, WorklistStore(engine), ReadingWorklist(engine, ReadingWorklistConfig())
    )
    app = create_app(cast(Services, services), None, AdminSettings())
    add_user(engine, "ann", PASSWORD, "analyst")
    with TestClient(app, follow_redirects=False) as test_client:
        yield test_client
    committer.stop()
    engine.dispose()


def login(client: TestClient) -> None:
    answer = client.post("/api/login", json={"username": "ann", "password": PASSWORD})
    assert answer.status_code == 200


def csp_of(answer: Any) -> dict[str, str]:
    """The Content-Security-Policy as {directive: sources}."""
    policy = answer.headers["content-security-policy"]
    pairs = (part.strip().split(" ", 1) for part in policy.split(";"))
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}


def test_the_app_page_without_a_session_redirects_to_login(client: TestClient) -> None:
    answer = client.get("/")
    assert answer.status_code == 302
    assert answer.headers["location"] == "/login"


def test_a_stale_session_cookie_also_redirects(client: TestClient) -> None:
    client.cookies.set("meridian_session", "not-a-session")
    assert client.get("/").headers["location"] == "/login"


def test_login_page_and_its_files_are_public(client: TestClient) -> None:
    page = client.get("/login")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="login-form"' in page.text
    script = client.get("/static/login.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert client.get("/static/base.css").status_code == 200


@pytest.mark.parametrize(
    "path", ["/static/index.html", "/static/app.css", "/static/js/app.js", "/static/js/api.js"]
)
def test_app_files_need_a_session(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401
    login(client)
    assert client.get(path).status_code == 200


def test_missing_files_are_not_revealed_before_login(client: TestClient) -> None:
    assert client.get("/static/no-such-file.js").status_code == 401
    login(client)
    assert client.get("/static/no-such-file.js").status_code == 404


def test_no_escape_from_the_static_folder(client: TestClient) -> None:
    login(client)
    for path in (
        "/static/../ui.py",
        "/static/%2e%2e/ui.py",
        "/static/js/../../ui.py",
        "/static/js",
    ):
        assert client.get(path).status_code == 404, path


def test_logged_in_the_app_page_is_served_with_a_strict_csp(client: TestClient) -> None:
    login(client)
    page = client.get("/")
    assert page.status_code == 200
    assert '<script type="module" src="/static/js/app.js">' in page.text
    csp = csp_of(page)
    assert csp["default-src"] == "'self'"
    assert csp["script-src"] == "'self'"
    assert csp["style-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_the_login_page_has_the_csp_too(client: TestClient) -> None:
    assert csp_of(client.get("/login"))["script-src"] == "'self'"
    assert csp_of(client.get("/static/login.js"))["default-src"] == "'self'"


def test_shipped_html_has_no_inline_script_style_or_handlers() -> None:
    # The CSP would block them: the page would silently lose that behaviour or look.
    static = Path(__file__).resolve().parents[1] / "admin" / "static"
    for page in static.glob("*.html"):
        text = page.read_text()
        assert "style=" not in text, page.name
        assert "<style" not in text, page.name
        assert " on" not in text.replace(" only", ""), page.name
        for line in text.splitlines():
            if "<script" in line:
                assert 'src="/static/' in line, (page.name, line)


def test_logging_out_closes_the_app_page(client: TestClient) -> None:
    login(client)
    csrf = client.get("/api/session").json()["csrf_token"]
    assert client.post("/api/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert client.get("/").status_code == 302
