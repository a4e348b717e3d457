"""Admin users: argon2-hashed passwords, a role, and whether they may see patient data.

Roles are ordered: a *viewer* reads, an *analyst* may also reprocess messages,
an *admin* may also manage users. Viewers do not see message content (PHI)
unless ``can_view_phi`` is set; analysts and admins do by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection, Engine, RowMapping, insert, select, update
from sqlalchemy.exc import IntegrityError

from admin.tables import admin_access_log, admin_alert_acks, admin_sessions, admin_users
from engine.errors import ConfigError

__all__ = [
    "MIN_PASSWORD",
    "ROLES",
    "Role",
    "User",
    "add_user",
    "add_user_op",
    "ensure_tables",
    "get_user",
    "has_role",
    "hash_password",
    "list_users",
    "verify",
]

Role = Literal["viewer", "analyst", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)

#: Shortest password accepted.
MIN_PASSWORD = 8

_hasher = PasswordHasher()
# Verifying an unknown user against this hash costs as much as a real check,
# so response time does not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash("meridian-no-such-user")


@dataclass(frozen=True, slots=True)
class User:
    """A user as the API sees it (no password hash)."""

    id: int
    username: str
    role: Role
    can_view_phi: bool
    disabled: bool
    created_at: datetime


def ensure_tables(engine: Engine) -> None:
    """Create the admin tables if missing (the store's schema does not import admin)."""
    from engine.store.schema import metadata

    tables = [admin_users, admin_sessions, admin_access_log, admin_alert_acks]
    metadata.create_all(engine, tables=tables)


def has_role(user: User, minimum: Role) -> bool:
    """True if ``user``'s role is ``minimum`` or above."""
    return ROLES.index(user.role) >= ROLES.index(minimum)


def add_user_op(
    username: str, password: str, role: Role, can_view_phi: bool | None = None
) -> _AddUser:
    """A write op (for the group committer) creating a user; hashes the password now."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if not username or len(username) > 64:
        raise ConfigError("a username has 1 to 64 characters")
    phi = role != "viewer" if can_view_phi is None else can_view_phi
    return _AddUser(username, hash_password(password), role, phi)


def hash_password(password: str) -> str:
    """The argon2id hash to store; ConfigError if the password is shorter than 8 characters."""
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"a password has at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


@dataclass(frozen=True, slots=True)
class _AddUser:
    username: str
    password_hash: str
    role: Role
    can_view_phi: bool

    def __call__(self, conn: Connection) -> User:
        values = {
            "username": self.username,
            "password_hash": self.password_hash,
            "role": self.role,
            "can_view_phi": self.can_view_phi,
            "created_at": datetime.now(UTC),
            "disabled": False,
        }
        try:
            user_id = conn.execute(
                insert(admin_users).values(**values).returning(admin_users.c.id)
            ).scalar_one()
        except IntegrityError as exc:
            raise ConfigError(f"user {self.username!r} already exists") from exc
        return _user({**values, "id": user_id})


def add_user(
    engine: Engine, username: str, password: str, role: Role, can_view_phi: bool | None = None
) -> User:
    """Create a user directly (CLI use, outside a running hub's writer)."""
    op = add_user_op(username, password, role, can_view_phi)
    with engine.begin() as conn:
        return op(conn)


def verify(engine: Engine, username: str, password: str) -> User | None:
    """The enabled user with this username and password, else None."""
    with engine.connect() as conn:
        row = (
            conn.execute(select(admin_users).where(admin_users.c.username == username))
            .mappings()
            .first()
        )
    encoded = row["password_hash"] if row is not None else _DUMMY_HASH
    try:
        _hasher.verify(encoded, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if row is None or row["disabled"]:
        return None
    if _hasher.check_needs_rehash(encoded):
        # Parameters were raised since this hash was made: store a stronger one.
        with engine.begin() as conn:
            conn.execute(
                update(admin_users)
                .where(admin_users.c.id == row["id"])
                .values(password_hash=_hasher.hash(password))
            )
    return _user(row)


def get_user(conn: Connection, user_id: int) -> User | None:
    """One user by id."""
    row = conn.execute(select(admin_users).where(admin_users.c.id == user_id)).mappings().first()
    return _user(row) if row is not None else None


def list_users(engine: Engine) -> list[User]:
    """Every user, by username."""
    with engine.connect() as conn:
        rows = conn.execute(select(admin_users).order_by(admin_users.c.username)).mappings()
        return [_user(row) for row in rows]


def _user(row: RowMapping | dict[str, object]) -> User:
    created = row["created_at"]
    if not isinstance(created, datetime):
        raise ConfigError("stored user has no creation time")
    return User(
        id=int(str(row["id"])),
        username=str(row["username"]),
        role=_role(str(row["role"])),
        can_view_phi=bool(row["can_view_phi"]),
        disabled=bool(row["disabled"]),
        created_at=created if created.tzinfo else created.replace(tzinfo=UTC),
    )


def _role(value: str) -> Role:
    for role in ROLES:
        if role == value:
            return role
    raise ConfigError(f"stored user has an unknown role {value!r}")
