"""Admin users: argon2 hashes, verification, roles, and ``meridian user add``."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import Engine, select, update

from admin import user_cli
from admin.tables import admin_users
from admin.users import add_user, ensure_tables, has_role, verify
from engine.errors import ConfigError
from engine.store.db import open_engine


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    store = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    ensure_tables(store)
    return store


def test_password_is_stored_as_an_argon2_hash(engine: Engine) -> None:
    add_user(engine, "ann", "s3cret-enough", "analyst")
    with engine.connect() as conn:
        stored = conn.execute(select(admin_users.c.password_hash)).scalar_one()
    assert stored != "s3cret-enough"
    assert stored.startswith("$argon2id$")
    assert PasswordHasher().verify(stored, "s3cret-enough")


def test_verify(engine: Engine) -> None:
    add_user(engine, "ann", "s3cret-enough", "analyst")
    user = verify(engine, "ann", "s3cret-enough")
    assert user is not None and user.role == "analyst" and user.can_view_phi
    assert verify(engine, "ann", "wrong-password") is None
    assert verify(engine, "nobody", "s3cret-enough") is None


def test_disabled_user_cannot_log_in(engine: Engine) -> None:
    add_user(engine, "ann", "s3cret-enough", "analyst")
    with engine.begin() as conn:
        conn.execute(update(admin_users).values(disabled=True))
    assert verify(engine, "ann", "s3cret-enough") is None


def test_viewers_do_not_see_phi_by_default_and_roles_are_ordered(engine: Engine) -> None:
    viewer = add_user(engine, "vic", "s3cret-enough", "viewer")
    admin = add_user(engine, "ada", "s3cret-enough", "admin")
    assert not viewer.can_view_phi
    assert has_role(admin, "analyst") and not has_role(viewer, "analyst")


def test_duplicate_user_short_password_and_unknown_role_are_refused(engine: Engine) -> None:
    add_user(engine, "ann", "s3cret-enough", "analyst")
    with pytest.raises(ConfigError, match="already exists"):
        add_user(engine, "ann", "s3cret-enough", "viewer")
    with pytest.raises(ConfigError, match="8 characters"):
        add_user(engine, "bob", "short", "viewer")
    with pytest.raises(ConfigError, match="unknown role"):
        add_user(engine, "bob", "s3cret-enough", "root")  # type: ignore[arg-type]


def test_cli_adds_a_user_with_the_password_from_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    user_cli.add_arguments(parser)
    args = parser.parse_args(
        ["add", "ada", "--role", "admin", "--password-stdin", "--data", str(tmp_path)]
    )
    assert user_cli.run(args, stdin=io.StringIO("from-stdin-pw\n")) == 0
    assert "user ada created: role admin, with PHI access" in capsys.readouterr().out
    store = open_engine(f"sqlite:///{tmp_path / 'meridian.db'}")
    assert verify(store, "ada", "from-stdin-pw") is not None
