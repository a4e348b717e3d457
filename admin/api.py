"""The admin app: ``create_app`` builds the FastAPI application the hub mounts under uvicorn."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from admin import (
    access_log_api,
    alerts_api,
    channels_api,
    cluster_api,
    dashboard_api,
    export,
    messages_api,
    reports_api,
    security,
    testbench_api,
    ui,
    users_api,
    views_api,
)
from admin.allowlist import enforce_allowlist
from admin.context import AdminContext, context
from admin.metrics import CONTENT_TYPE, render_metrics
from admin.settings import AdminSettings
from admin.users import ensure_tables

if TYPE_CHECKING:
    from engine.hub import Hub
    from engine.services import Services

__all__ = ["create_app"]

Ctx = Annotated[AdminContext, Depends(context)]


def create_app(services: Services, hub: Hub | None, settings: AdminSettings) -> FastAPI:
    """The admin API over ``services`` (``hub``, if given, is woken on reprocess)."""
    ensure_tables(services.engine)
    app = FastAPI(
        title="Meridian admin API",
        # Served by our own route below, behind login. No Swagger page: it loads its
        # scripts from a CDN, which hospital networks block and our CSP forbids.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.admin = AdminContext(services=services, hub=hub, settings=settings)
    for module in (
        security,
        messages_api,
        users_api,
        views_api,
        channels_api,
        testbench_api,
        reports_api,
        alerts_api,
        dashboard_api,
        cluster_api,
        export,
        access_log_api,
        ui,
    ):
        app.include_router(module.router)
    app.middleware("http")(_security_headers)
    app.middleware("http")(enforce_allowlist)  # added last: runs first
    app.add_api_route("/api/openapi.json", openapi_schema, methods=["GET"], include_in_schema=False)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["ops"])
    app.add_api_route(
        "/metrics", metrics, methods=["GET"], tags=["ops"], response_class=PlainTextResponse
    )
    return app


async def _security_headers(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Answers may hold PHI: no caching, no MIME sniffing, no framing."""
    response = await call_next(request)
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def openapi_schema(_: security.CurrentSession, request: Request) -> JSONResponse:
    """The OpenAPI description of ``/api`` (login required like every other API call)."""
    return JSONResponse(request.app.openapi())


def healthz(ctx: Ctx) -> JSONResponse:
    """200 when the store answers, 503 otherwise (no login: load balancers probe it)."""
    try:
        with ctx.services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return JSONResponse({"status": "store unavailable"}, status.HTTP_503_SERVICE_UNAVAILABLE)
    return JSONResponse({"status": "ok"})


def metrics(request: Request, ctx: Ctx) -> PlainTextResponse:
    """Prometheus metrics; a session is required only if ``metrics_require_login`` is set."""
    if ctx.settings.metrics_require_login:
        session_token = request.cookies.get(security.COOKIE)
        if not session_token or security.lookup(ctx, session_token) is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "login required")
    return PlainTextResponse(
        render_metrics(ctx.services.engine, hub=ctx.hub), media_type=CONTENT_TYPE
    )
