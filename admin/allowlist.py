"""IP allowlist of the admin API (``admin.allowed_networks``): other peers get 403.

Every route is filtered, /healthz and /metrics included: a load balancer or
Prometheus outside the allowed networks must be added to them. Without an
allowlist (the default) every peer is served.

The peer is the address uvicorn reports: the TCP peer, or the
``X-Forwarded-For`` client when the connection comes from an address uvicorn
trusts as a proxy (``FORWARDED_ALLOW_IPS``, 127.0.0.1 by default).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import Request, status
from fastapi.responses import JSONResponse, Response

from admin.context import AdminContext
from connectors.allowlist import is_allowed

__all__ = ["enforce_allowlist"]

log = logging.getLogger(__name__)


async def enforce_allowlist(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """403 for a peer outside ``allowed_networks`` before any route runs (logged, counted)."""
    admin: AdminContext = request.app.state.admin
    networks = admin.settings.allowed_networks
    if networks is None:
        return await call_next(request)
    peer = request.client.host if request.client is not None else None
    if is_allowed(networks, peer):
        return await call_next(request)
    request.app.state.refused_by_allowlist = (
        getattr(request.app.state, "refused_by_allowlist", 0) + 1
    )
    log.warning("admin request from %s refused: not in allowed_networks", peer or "unknown")
    return JSONResponse(
        {"detail": "forbidden"},
        status.HTTP_403_FORBIDDEN,
        headers={"Cache-Control": "no-store", "Connection": "close"},
    )
