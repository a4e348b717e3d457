"""User management over the API: changes, the last-admin guard, passwords, login throttling."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from admin.rate_limit import MAX_ADDRESS_FAILURES, LoginThrottle
from admin.security import CSRF_HEADER
from admin.tables import admin_sessions
from tests.support.admin_app import PASSWORD, FakeServices, login, make_client, open_store

NEW_PASSWORD = "another long secret"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FakeServices]:
    with open_store(tmp_path) as services:
        yield services


@pytest.fixture
def client(store: FakeServices) -> TestClient:
    return make_client(store)


def other_client(client: TestClient) -> TestClient:
    """A second browser on the same app (its own cookies)."""
    return TestClient(client.app)


def user_ids(client: TestClient) -> dict[str, int]:
    return {u["username"]: u["id"] for u in client.get("/api/users").json()}


def sessions(store: FakeServices) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(admin_sessions)).scalar_one())


def test_admin_changes_role_and_phi_access(client: TestClient) -> None:
    csrf = login(client, "ada")
    vic = user_ids(client)["vic"]
    changed = client.patch(
        f"/api/users/{vic}",
        json={"role": "analyst", "can_view_phi": True},
        headers={CSRF_HEADER: csrf},
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["role"], changed.json()["can_view_phi"]) == ("analyst", True)
    assert changed.json()["disabled"] is False
    # Takes effect on the user's next request (the session reads the user each time).
    other = other_client(client)
    login(other, "vic")
    assert other.get("/api/session").json()["role"] == "analyst"
    bad = client.patch(f"/api/users/{vic}", json={"role": "root"}, headers={CSRF_HEADER: csrf})
    assert bad.status_code == 422
    unknown = client.patch("/api/users/999", json={"disabled": True}, headers={CSRF_HEADER: csrf})
    assert unknown.status_code == 404


def test_only_admins_change_users(client: TestClient) -> None:
    csrf = login(client, "ann")
    response = client.patch("/api/users/1", json={"role": "admin"}, headers={CSRF_HEADER: csrf})
    assert response.status_code == 403
    response = client.post(
        "/api/users/1/password", json={"password": NEW_PASSWORD}, headers={CSRF_HEADER: csrf}
    )
    assert response.status_code == 403


def test_disabling_a_user_ends_their_sessions(client: TestClient, store: FakeServices) -> None:
    ann = other_client(client)
    login(ann, "ann")
    csrf = login(client, "ada")
    ann_id = user_ids(client)["ann"]
    response = client.patch(
        f"/api/users/{ann_id}", json={"disabled": True}, headers={CSRF_HEADER: csrf}
    )
    assert response.json()["disabled"] is True
    assert ann.get("/api/session").status_code == 401
    assert ann.post("/api/login", json={"username": "ann", "password": PASSWORD}).status_code == 401
    client.patch(f"/api/users/{ann_id}", json={"disabled": False}, headers={CSRF_HEADER: csrf})
    login(ann, "ann")


def test_the_last_enabled_admin_cannot_be_demoted_or_disabled(client: TestClient) -> None:
    csrf = login(client, "ada")
    ids = user_ids(client)
    headers = {CSRF_HEADER: csrf}
    for change in ({"role": "analyst"}, {"disabled": True}):
        refused = client.patch(f"/api/users/{ids['ada']}", json=change, headers=headers)
        assert refused.status_code == 409, change
        assert "last enabled admin" in refused.json()["detail"]
    # PHI access of the last admin may change: it does not lock anyone out.
    assert (
        client.patch(
            f"/api/users/{ids['ada']}", json={"can_view_phi": False}, headers=headers
        ).status_code
        == 200
    )
    # With a second enabled admin, the first may step down.
    client.patch(f"/api/users/{ids['ann']}", json={"role": "admin"}, headers=headers)
    stepped = client.patch(f"/api/users/{ids['ada']}", json={"role": "viewer"}, headers=headers)
    assert stepped.json()["role"] == "viewer"
    assert client.get("/api/users").status_code == 403  # ada is a viewer now
    ann = other_client(client)
    csrf = login(ann, "ann")
    disable_self = ann.patch(
        f"/api/users/{ids['ann']}", json={"disabled": True}, headers={CSRF_HEADER: csrf}
    )
    assert disable_self.status_code == 409


def test_admin_sets_a_password_and_the_users_sessions_end(
    client: TestClient, store: FakeServices
) -> None:
    vic = other_client(client)
    login(vic, "vic")
    csrf = login(client, "ada")
    vic_id = user_ids(client)["vic"]
    short = client.post(
        f"/api/users/{vic_id}/password", json={"password": "short"}, headers={CSRF_HEADER: csrf}
    )
    assert short.status_code == 422
    response = client.post(
        f"/api/users/{vic_id}/password",
        json={"password": NEW_PASSWORD},
        headers={CSRF_HEADER: csrf},
    )
    assert response.status_code == 204
    assert vic.get("/api/session").status_code == 401
    assert vic.post("/api/login", json={"username": "vic", "password": PASSWORD}).status_code == 401
    login(vic, "vic", NEW_PASSWORD)
    missing = client.post(
        "/api/users/999/password", json={"password": NEW_PASSWORD}, headers={CSRF_HEADER: csrf}
    )
    assert missing.status_code == 404
    assert client.get("/api/session").status_code == 200  # the admin's own session is untouched


def test_users_change_their_own_password(client: TestClient, store: FakeServices) -> None:
    elsewhere = other_client(client)
    login(elsewhere, "ann")
    csrf = login(client, "ann")
    wrong = client.post(
        "/api/session/password",
        json={"current_password": "not-my-password", "new_password": NEW_PASSWORD},
        headers={CSRF_HEADER: csrf},
    )
    assert wrong.status_code == 403
    assert elsewhere.get("/api/session").status_code == 200
    done = client.post(
        "/api/session/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers={CSRF_HEADER: csrf},
    )
    assert done.status_code == 204
    # This session stays; the one in the other browser ends.
    assert client.get("/api/session").status_code == 200
    assert elsewhere.get("/api/session").status_code == 401
    assert sessions(store) == 1
    login(elsewhere, "ann", NEW_PASSWORD)
    too_short = client.post(
        "/api/session/password",
        json={"current_password": NEW_PASSWORD, "new_password": "short"},
        headers={CSRF_HEADER: csrf},
    )
    assert too_short.status_code == 422
    no_csrf = client.post(
        "/api/session/password", json={"current_password": NEW_PASSWORD, "new_password": PASSWORD}
    )
    assert no_csrf.status_code == 403


# -- login throttling ----------------------------------------------------------------------


def attempt(client: TestClient, username: str, password: str) -> int:
    return client.post("/api/login", json={"username": username, "password": password}).status_code


def test_repeated_failures_for_a_username_get_429_even_with_the_right_password(
    client: TestClient,
) -> None:
    assert [attempt(client, "ann", "wrong-password") for _ in range(5)] == [401] * 5
    locked = client.post("/api/login", json={"username": "ann", "password": PASSWORD})
    assert locked.status_code == 429
    assert 0 < int(locked.headers["retry-after"]) <= 300


def test_repeated_failures_from_one_address_lock_every_username_from_it(
    client: TestClient,
) -> None:
    # Four usernames, five guesses each: no username reaches its quota, the address does.
    for n in range(MAX_ADDRESS_FAILURES):
        assert attempt(client, f"zed{n % 4}", "guess-guess") == 401
    # TestClient always comes from the same address.
    assert attempt(client, "vic", PASSWORD) == 429


def test_a_successful_login_clears_the_usernames_failures(client: TestClient) -> None:
    for _ in range(4):
        attempt(client, "ann", "wrong-password")
    assert attempt(client, "ann", PASSWORD) == 200
    # ann's own count started again: four more failures still do not lock her out.
    for _ in range(4):
        assert attempt(client, "ann", "wrong-password") == 401
    assert attempt(client, "ann", PASSWORD) == 200


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_lock_ends_with_the_window_and_refused_attempts_do_not_extend_it() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window_seconds=60, clock=clock)
    keys = ["user:ada"]
    for step in range(3):
        clock.now = 1000.0 + step * 10  # failures at 1000, 1010, 1020
        throttle.failed(keys)
    assert throttle.retry_after(keys) == 40  # until the first failure leaves the window
    clock.now = 1059.0
    assert throttle.retry_after(keys) == 1
    clock.now = 1060.5
    # Unlocked; one more failure locks again only until the second failure ages out.
    assert throttle.retry_after(keys) is None
    throttle.failed(keys)
    assert throttle.retry_after(keys) == 10
    clock.now = 1200.0
    assert throttle.retry_after(keys) is None
    throttle.failed(["user:other"])
    throttle.succeeded("user:other")
    assert throttle.retry_after(["user:other"]) is None


def test_an_address_has_a_larger_quota_than_a_username() -> None:
    throttle = LoginThrottle(max_failures=2, max_address_failures=4, clock=Clock())
    for _ in range(3):
        throttle.failed(["ip:10.0.0.1"])
    assert throttle.retry_after(["ip:10.0.0.1"]) is None
    throttle.failed(["ip:10.0.0.1"])
    assert throttle.retry_after(["user:ada", "ip:10.0.0.1"]) == 300
