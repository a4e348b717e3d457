"""``/api/users``: list and create users (admin role only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field

from admin.context import AdminContext, context
from admin.security import Session, require_role
from admin.users import Role, User, add_user_op, list_users
from engine.errors import ConfigError

__all__ = ["router"]

router = APIRouter(prefix="/api/users", tags=["users"])
Ctx = Annotated[AdminContext, Depends(context)]
Admin = Annotated[Session, Depends(require_role("admin"))]


class NewUser(BaseModel):
    """Body of ``POST /api/users``."""

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=8, max_length=1024)
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
