"""``GET /api/cluster``: the nodes sharing the store, the leader, and their queue claims.

No patient data (node ids, connection counts, claim counts), so any logged-in
user may see it. On SQLite there is one node and the lists are empty.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from sqlalchemy.exc import SQLAlchemyError

from admin.context import AdminContext, context
from admin.security import CurrentSession
from engine.cluster_nodes import cluster_view

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["dashboard"])
Ctx = Annotated[AdminContext, Depends(context)]


@router.get("/cluster")
def cluster(_: CurrentSession, ctx: Ctx) -> dict[str, Any]:
    """Live nodes (from PostgreSQL's own connection list), which leads, and claims per node."""
    this_node = ctx.hub.node_id if ctx.hub is not None else None
    try:
        view = cluster_view(ctx.services.engine, this_node)
    except SQLAlchemyError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "store unavailable") from exc
    if ctx.services.claimer is not None:
        view["lease_seconds"] = ctx.services.claimer.lease_seconds
    return view
