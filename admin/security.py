"""Sessions, CSRF and roles.

Login puts a random token in an HttpOnly, SameSite=Strict cookie; the session
row (token, user, CSRF token, expiry) lives in the store, so logout and expiry
take effect at once. State-changing requests must also send ``X-CSRF-Token``
equal to the session's CSRF token: a page on another origin cannot read it,
so it cannot forge such a request even if a browser sends the cookie.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, delete, insert, select

from admin.context import AdminContext, context
from admin.rate_limit import ADDRESS_PREFIX, LoginThrottle
from admin.tables import admin_sessions
from admin.user_admin import set_password_op
from admin.users import MIN_PASSWORD, Role, User, get_user, has_role, verify

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "Session",
    "current_session",
    "lookup",
    "require_role",
    "router",
]

COOKIE = "meridian_session"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

router = APIRouter(prefix="/api", tags=["session"])


@dataclass(frozen=True, slots=True)
class Session:
    """The logged-in user of a request and the session's CSRF token."""

    user: User
    csrf_token: str
    expires_at: datetime


class Credentials(BaseModel):
    """Body of ``POST /api/login``."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class SessionInfo(BaseModel):
    """Who is logged in, and the token to send as ``X-CSRF-Token``."""

    username: str
    role: Role
    can_view_phi: bool
    csrf_token: str
    expires_at: datetime


def _info(session: Session) -> SessionInfo:
    user = session.user
    return SessionInfo(
        username=user.username,
        role=user.role,
        can_view_phi=user.can_view_phi,
        csrf_token=session.csrf_token,
        expires_at=session.expires_at,
    )


# -- store operations ----------------------------------------------------------------------


def _create_op(user: User, token: str, minutes: int) -> Callable[[Connection], Session]:
    def op(conn: Connection) -> Session:
        stamp = datetime.now(UTC)
        # Opportunistic clean-up keeps the table small without a scheduler job.
        conn.execute(delete(admin_sessions).where(admin_sessions.c.expires_at < stamp))
        session = Session(user, secrets.token_urlsafe(32), stamp + timedelta(minutes=minutes))
        conn.execute(
            insert(admin_sessions).values(
                token=_digest(token),
                user_id=user.id,
                csrf_token=session.csrf_token,
                created_at=stamp,
                expires_at=session.expires_at,
            )
        )
        return session

    return op


def _delete_op(token: str) -> Callable[[Connection], None]:
    def op(conn: Connection) -> None:
        conn.execute(delete(admin_sessions).where(admin_sessions.c.token == _digest(token)))

    return op


def _digest(token: str) -> str:
    # Only a digest is stored: a copy of the table (a backup) opens no session.
    return hashlib.sha256(token.encode()).hexdigest()


def lookup(ctx: AdminContext, token: str) -> Session | None:
    with ctx.services.engine.connect() as conn:
        row = (
            conn.execute(select(admin_sessions).where(admin_sessions.c.token == _digest(token)))
            .mappings()
            .first()
        )
        if row is None:
            return None
        expires = _utc(row["expires_at"])
        user = get_user(conn, int(row["user_id"]))
    if expires <= datetime.now(UTC) or user is None or user.disabled:
        return None
    return Session(user, str(row["csrf_token"]), expires)


def _utc(value: datetime) -> datetime:
    # SQLite returns naive datetimes; everything stored is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# -- dependencies --------------------------------------------------------------------------

Ctx = Annotated[AdminContext, Depends(context)]


def current_session(request: Request, ctx: Ctx) -> Session:
    """The request's session: 401 without a valid one, 403 on a write without CSRF token."""
    token = request.cookies.get(COOKIE)
    session = lookup(ctx, token) if token else None
    if session is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "login required")
    if request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not secrets.compare_digest(sent.encode(), session.csrf_token.encode()):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
    return session


CurrentSession = Annotated[Session, Depends(current_session)]


def require_role(minimum: Role) -> Callable[[Session], Session]:
    """A dependency allowing ``minimum`` and higher roles (403 otherwise)."""

    def check(session: CurrentSession) -> Session:
        if not has_role(session.user, minimum):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"requires the {minimum} role")
        return session

    return check


# -- routes --------------------------------------------------------------------------------


@router.post("/login", responses={429: {"description": "too many failed logins; see Retry-After"}})
def login(credentials: Credentials, request: Request, response: Response, ctx: Ctx) -> SessionInfo:
    """Check the password and open a session (cookie plus CSRF token in the body).

    Repeated failures for a username or from an address get 429 with ``Retry-After``
    (see :mod:`admin.rate_limit`), even with the right password, until the window passes.
    """
    throttle = _throttle(request)
    # The peer address as the socket saw it: X-Forwarded-For is not trusted (anyone can set it).
    address = request.client.host if request.client else ""
    keys = [f"user:{credentials.username}", ADDRESS_PREFIX + address]
    wait = throttle.retry_after(keys)
    if wait is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "too many failed logins; try again later",
            headers={"Retry-After": str(wait)},
        )
    user = verify(ctx.services.engine, credentials.username, credentials.password)
    if user is None:
        throttle.failed(keys)
        # One answer for unknown user, wrong password and disabled account.
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password")
    throttle.succeeded(keys[0])
    token = secrets.token_urlsafe(32)
    minutes = ctx.settings.session_minutes
    session: Session = ctx.run_write(_create_op(user, token, minutes))
    response.set_cookie(
        COOKIE,
        token,
        max_age=minutes * 60,
        httponly=True,
        samesite="strict",
        secure=ctx.settings.secure_cookies,
        path="/",
    )
    return _info(session)


_throttle_lock = threading.Lock()


def _throttle(request: Request) -> LoginThrottle:
    """The app's login throttle, made on first use (one per app, so tests do not share)."""
    state = request.app.state
    with _throttle_lock:
        throttle: LoginThrottle | None = getattr(state, "login_throttle", None)
        if throttle is None:
            throttle = LoginThrottle()
            state.login_throttle = throttle
    return throttle


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, response: Response, session: CurrentSession, ctx: Ctx) -> None:
    """End the session (the CSRF check applies: a foreign page cannot log you out)."""
    token = request.cookies.get(COOKIE, "")
    ctx.run_write(_delete_op(token))
    response.delete_cookie(
        COOKIE, httponly=True, samesite="strict", secure=ctx.settings.secure_cookies, path="/"
    )


@router.get("/session")
def get_session(session: CurrentSession) -> SessionInfo:
    """Who is logged in, with the CSRF token (the UI calls this after a page reload)."""
    return _info(session)


class PasswordChange(BaseModel):
    """Body of ``POST /api/session/password``."""

    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=MIN_PASSWORD, max_length=1024)


@router.post("/session/password", status_code=status.HTTP_204_NO_CONTENT)
def change_password(
    body: PasswordChange, request: Request, session: CurrentSession, ctx: Ctx
) -> None:
    """Change your own password; your other sessions end, this one stays open.

    403 if the current password is wrong (counted as a failed login for the throttle).
    """
    throttle = _throttle(request)
    key = f"user:{session.user.username}"
    wait = throttle.retry_after([key])
    if wait is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "too many failed attempts; try again later",
            headers={"Retry-After": str(wait)},
        )
    if verify(ctx.services.engine, session.user.username, body.current_password) is None:
        # A stolen session must not be a way to guess the password without limit.
        throttle.failed([key])
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the current password is wrong")
    token = request.cookies.get(COOKIE, "")
    ctx.run_write(set_password_op(session.user.id, body.new_password, keep_session=_digest(token)))
