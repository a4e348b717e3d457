"""``GET /api/access-log``: who viewed, reprocessed or exported which message (admin only).

The rows never hold message content; they name users and message ids. Every
column of ``admin_access_log`` is returned, so columns added later (a channel
for channel actions, say) show up without a change here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from admin.context import AdminContext, context
from admin.security import Session, require_role
from admin.tables import admin_access_log

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["access log"])
Ctx = Annotated[AdminContext, Depends(context)]
Admin = Annotated[Session, Depends(require_role("admin"))]


@router.get("/access-log")
def access_log(
    _: Admin,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
    username: str | None = None,
    action: str | None = None,
    message_id: int | None = None,
) -> list[dict[str, Any]]:
    """Accesses, newest first, optionally of one user, one action or one message."""
    query = select(admin_access_log).order_by(admin_access_log.c.id.desc()).limit(limit)
    if username is not None:
        query = query.where(admin_access_log.c.username == username)
    if action is not None:
        query = query.where(admin_access_log.c.action == action)
    if message_id is not None:
        query = query.where(admin_access_log.c.message_id == message_id)
    with ctx.services.engine.connect() as conn:
        return [_utc(dict(row)) for row in conn.execute(query).mappings()]


def _utc(row: dict[str, Any]) -> dict[str, Any]:
    at = row["at"]
    if isinstance(at, datetime) and at.tzinfo is None:
        # SQLite gives naive datetimes back; everything stored is UTC.
        row["at"] = at.replace(tzinfo=UTC)
    return row
