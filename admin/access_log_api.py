"""``GET /api/access-log``: who viewed, reprocessed or exported which message (admin only).

The rows never hold message content; they name users, message ids and channels.
Every column of ``admin_access_log`` is returned, so columns added later show
up without a change here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from admin.context import AdminContext, context
from admin.security import Session, require_role
from admin.tables import admin_access_log

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["access log"])
Ctx = Annotated[AdminContext, Depends(context)]
Admin = Annotated[Session, Depends(require_role("admin"))]


class AccessQuery(BaseModel):
    """Filters of ``GET /api/access-log`` (all optional, combined with AND)."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=500, ge=1, le=10_000)
    username: str | None = None
    action: str | None = Field(default=None, description="view, reprocess, export, channel.*")
    message_id: int | None = None
    channel: str | None = None


@router.get("/access-log")
def access_log(_: Admin, ctx: Ctx, q: Annotated[AccessQuery, Query()]) -> list[dict[str, Any]]:
    """Accesses, newest first, optionally of one user, action, message or channel."""
    filters = {
        "username": q.username,
        "action": q.action,
        "message_id": q.message_id,
        "channel": q.channel,
    }
    conditions = [admin_access_log.c[k] == v for k, v in filters.items() if v is not None]
    query = (
        select(admin_access_log)
        .where(*conditions)
        .order_by(admin_access_log.c.id.desc())
        .limit(q.limit)
    )
    with ctx.services.engine.connect() as conn:
        return [_utc(dict(row)) for row in conn.execute(query).mappings()]


def _utc(row: dict[str, Any]) -> dict[str, Any]:
    at = row["at"]
    if isinstance(at, datetime) and at.tzinfo is None:
        # SQLite gives naive datetimes back; everything stored is UTC.
        row["at"] = at.replace(tzinfo=UTC)
    return row
