"""Read-only views: the modality worklist, the reading worklist, the audit trail.

(Channels are in :mod:`admin.channels_api`.)
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from admin.context import AdminContext, context
from admin.security import CurrentSession, Session
from engine import audit

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["views"])
Ctx = Annotated[AdminContext, Depends(context)]
Limit = Annotated[int, Query(ge=1, le=1000)]

# Worklist columns that identify a patient; dropped for users without PHI access.
_WORKLIST_PHI = ("patient_id", "patient_name", "patient_name_match", "attributes")


@router.get("/worklist")
def worklist(
    session: CurrentSession,
    ctx: Ctx,
    active_only: bool = True,
    limit: Limit = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    """Modality worklist items in schedule order."""
    items = ctx.services.worklist.list_items(active_only=active_only, limit=limit, offset=offset)
    return [_without_phi(item, session, _WORKLIST_PHI) for item in items]


@router.get("/reading-worklist")
def reading_worklist(session: CurrentSession, ctx: Ctx, limit: Limit = 100) -> list[dict[str, Any]]:
    """Open studies to read, most urgent first."""
    items = ctx.services.reading_worklist.items(limit=limit)
    return [_without_phi(asdict(item), session, ("patient_id",)) for item in items]


@router.get("/audit")
def audit_trail(
    _: CurrentSession,
    ctx: Ctx,
    study: str | None = None,
    kind: audit.AuditKind | None = None,
    model: str | None = None,
    limit: Limit = 500,
) -> list[dict[str, Any]]:
    """Audit events (they never hold patient data), newest first."""
    events = audit.query(
        ctx.services.engine,
        study_instance_uid=study,
        kind=kind,
        model=model,
        limit=limit,
        newest_first=True,
    )
    return [event.model_dump(mode="json") for event in events]


def _without_phi(item: dict[str, Any], session: Session, names: tuple[str, ...]) -> dict[str, Any]:
    if session.user.can_view_phi:
        return item
    return {name: value for name, value in item.items() if name not in names}
