"""Read-only views: channels, the modality worklist, the reading worklist, the audit trail."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import func, select

from admin.context import AdminContext, context
from admin.security import CurrentSession, Session
from engine import audit
from engine.store.tables import messages

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["views"])
Ctx = Annotated[AdminContext, Depends(context)]
Limit = Annotated[int, Query(ge=1, le=1000)]

# Worklist columns that identify a patient; dropped for users without PHI access.
_WORKLIST_PHI = ("patient_id", "patient_name", "patient_name_match", "attributes")


@router.get("/channels")
def channels(_: CurrentSession, ctx: Ctx) -> list[dict[str, Any]]:
    """Deployed channels (when the hub runs) and every channel in the store, with counts."""
    counts: dict[str, dict[str, int]] = {}
    with ctx.services.engine.connect() as conn:
        rows = conn.execute(
            select(messages.c.channel, messages.c.status, func.count()).group_by(
                messages.c.channel, messages.c.status
            )
        ).all()
    for channel, state, count in rows:
        counts.setdefault(channel, {})[state] = int(count)
    described = _deployed(ctx)
    for name in counts.keys() - described.keys():
        # Messages of a channel no longer deployed stay browsable.
        described[name] = {"name": name, "enabled": False, "source_type": None, "destinations": []}
    return [{**described[name], "counts": counts.get(name, {})} for name in sorted(described)]


def _deployed(ctx: AdminContext) -> dict[str, dict[str, Any]]:
    if ctx.hub is None:
        return {}
    return {
        channel.name: {
            "name": channel.name,
            "enabled": channel.file.enabled,
            "source_type": channel.file.source.get("type"),
            "destinations": [
                {"name": d.spec.name, "type": d.spec.type, "enabled": d.spec.enabled}
                for d in channel.destinations
            ],
        }
        for channel in ctx.hub.channels
    }


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
