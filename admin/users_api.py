"""``/api/users``: list, create and change users, set their passwords (admin role only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from admin.context import AdminContext, context
from admin.security import Session, require_role
from admin.user_admin import LastAdminError, UserChange, set_password_op, update_user_op
from admin.users import MIN_PASSWORD, Role, User, add_user_op, list_users
from engine.errors import ConfigError

__all__ = ["router"]

router = APIRouter(prefix="/api/users", tags=["users"])
Ctx = Annotated[AdminContext, Depends(context)]
Admin = Annotated[Session, Depends(require_role("admin"))]


class NewUser(BaseModel):
    """Body of ``POST /api/users``."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=MIN_PASSWORD, max_length=1024)
    role: Role
    can_view_phi: bool | None = Field(default=None, description="default: false for viewers")


def _public(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "can_view_phi": user.can_view_phi,
        "disabled": user.disabled,
        "created_at": user.created_at,
    }


@router.get("")
def get_users(_: Admin, ctx: Ctx) -> list[dict[str, Any]]:
    """Every user (never a password hash)."""
    return [_public(user) for user in list_users(ctx.services.engine)]


@router.post("", status_code=status.HTTP_201_CREATED)
def create_user(body: NewUser, _: Admin, ctx: Ctx) -> dict[str, Any]:
    """Create a user; 409 if the username is taken."""
    try:
        op = add_user_op(body.username, body.password, body.role, body.can_view_phi)
    except ConfigError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    try:
        user: User = ctx.run_write(op)
    except ConfigError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return _public(user)


class UserPatch(BaseModel):
    """Body of ``PATCH /api/users/{id}``: the values to change (others stay)."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    can_view_phi: bool | None = None
    disabled: bool | None = Field(default=None, description="true also ends their sessions")


class NewPassword(BaseModel):
    """Body of ``POST /api/users/{id}/password``."""

    model_config = ConfigDict(extra="forbid")

    password: str = Field(min_length=MIN_PASSWORD, max_length=1024)


@router.patch("/{user_id}")
def change_user(user_id: int, body: UserPatch, _: Admin, ctx: Ctx) -> dict[str, Any]:
    """Change role, PHI access or disabled; 409 if it would leave no enabled admin."""
    change = UserChange(role=body.role, can_view_phi=body.can_view_phi, disabled=body.disabled)
    try:
        user: User | None = ctx.run_write(update_user_op(user_id, change))
    except LastAdminError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such user")
    return _public(user)


@router.post("/{user_id}/password", status_code=status.HTTP_204_NO_CONTENT)
def reset_password(user_id: int, body: NewPassword, _: Admin, ctx: Ctx) -> None:
    """Set a user's password (e.g. they forgot it); ends every session of that user."""
    if not ctx.run_write(set_password_op(user_id, body.password)):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such user")
