"""Changing users: role, PHI access, disabling, passwords (write ops for the group committer).

Two rules hold whatever the request:

* the hub always keeps an enabled admin: demoting or disabling the last one
  is refused (else nobody could manage users without the CLI);
* disabling a user or setting their password ends their sessions at once
  (a changed password must lock out whoever learnt the old one). A user
  changing their own password keeps the session they did it from.

Each op checks and writes in the one transaction of the store's single
writer, so two admins demoting each other at once cannot both succeed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, select, update

from admin.tables import admin_sessions, admin_users
from admin.users import Role, User, get_user, hash_password
from engine.errors import ConfigError

__all__ = [
    "LastAdminError",
    "UserChange",
    "set_password_op",
    "update_user_op",
]


class LastAdminError(ConfigError):
    """The change would leave the hub without an enabled admin."""


@dataclass(frozen=True, slots=True)
class UserChange:
    """What to change of a user; None leaves a value as it is."""

    role: Role | None = None
    can_view_phi: bool | None = None
    disabled: bool | None = None


def update_user_op(user_id: int, change: UserChange) -> Callable[[Connection], User | None]:
    """A write op applying ``change``; returns the user as changed, None if there is none."""

    def op(conn: Connection) -> User | None:
        user = get_user(conn, user_id)
        if user is None:
            return None
        role = change.role if change.role is not None else user.role
        disabled = change.disabled if change.disabled is not None else user.disabled
        was_active_admin = user.role == "admin" and not user.disabled
        if was_active_admin and (role != "admin" or disabled) and _other_admins(conn, user_id) == 0:
            raise LastAdminError("the last enabled admin cannot be demoted or disabled")
        values: dict[str, object] = {"role": role, "disabled": disabled}
        if change.can_view_phi is not None:
            values["can_view_phi"] = change.can_view_phi
        conn.execute(update(admin_users).where(admin_users.c.id == user_id).values(**values))
        if disabled and not user.disabled:
            _end_sessions(conn, user_id)
        return get_user(conn, user_id)

    return op


def set_password_op(
    user_id: int, password: str, *, keep_session: str | None = None
) -> Callable[[Connection], bool]:
    """A write op setting a new password (hashed now, outside the writer) and ending the
    user's sessions, except the one whose stored token is ``keep_session`` if given.

    Returns False if there is no such user. Raises ConfigError if the password is too short.
    """
    encoded = hash_password(password)

    def op(conn: Connection) -> bool:
        result = conn.execute(
            update(admin_users).where(admin_users.c.id == user_id).values(password_hash=encoded)
        )
        if int(result.rowcount) == 0:
            return False
        _end_sessions(conn, user_id, keep=keep_session)
        return True

    return op


def _other_admins(conn: Connection, user_id: int) -> int:
    count = conn.execute(
        select(func.count()).where(
            admin_users.c.role == "admin",
            admin_users.c.disabled.is_(False),
            admin_users.c.id != user_id,
        )
    ).scalar_one()
    return int(count)


def _end_sessions(conn: Connection, user_id: int, keep: str | None = None) -> None:
    statement = delete(admin_sessions).where(admin_sessions.c.user_id == user_id)
    if keep is not None:
        statement = statement.where(admin_sessions.c.token != keep)
    conn.execute(statement)
