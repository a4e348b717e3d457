"""The admin web UI: a single-page app served from ``admin/static`` with no build step.

Hospitals run the hub offline, so every file the browser needs ships in the
package (no CDN). ``/login`` and the two files it loads are the only public
resources; every other page and asset needs a valid session (a page without
one redirects to ``/login``, an asset answers 401). UI responses carry a
strict Content-Security-Policy: scripts and styles come only from this
origin and never inline, so an injected string cannot run even if escaping
were missed somewhere.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import FileResponse, RedirectResponse, Response

from admin.context import AdminContext, context
from admin.security import COOKIE, lookup

__all__ = ["CSP", "STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

# What the login page loads; nothing here reveals anything about the hub.
_PUBLIC_ASSETS = frozenset({"base.css", "login.js"})
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
}

router = APIRouter(include_in_schema=False)
Ctx = Annotated[AdminContext, Depends(context)]


def _logged_in(request: Request, ctx: AdminContext) -> bool:
    token = request.cookies.get(COOKIE)
    return bool(token) and lookup(ctx, token or "") is not None


def _file(path: Path) -> FileResponse:
    media_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
    response = FileResponse(path, media_type=media_type or "application/octet-stream")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _to_login() -> RedirectResponse:
    response = RedirectResponse("/login", status.HTTP_302_FOUND)
    response.headers["Content-Security-Policy"] = CSP
    return response


@router.get("/login")
def login_page() -> Response:
    """The login form (public)."""
    return _file(STATIC_DIR / "login.html")


@router.get("/")
def app_page(request: Request, ctx: Ctx) -> Response:
    """The single-page app; without a session, the login page."""
    if not _logged_in(request, ctx):
        return _to_login()
    return _file(STATIC_DIR / "index.html")


@router.get("/static/{path:path}")
def static_file(path: str, request: Request, ctx: Ctx) -> Response:
    """A file of the UI: public for the login page's two files, else only with a session."""
    if path not in _PUBLIC_ASSETS and not _logged_in(request, ctx):
        # Checked before the file lookup: no probing which files exist without a session.
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "login required")
    return _file(_resolve(path))


def _resolve(path: str) -> Path:
    """``path`` inside the static folder, or 404 (no ``..`` escapes, no folders)."""
    target = (STATIC_DIR / path).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
    return target
