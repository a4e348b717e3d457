"""What every route needs: the hub's services, the hub itself (if running) and the settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request

from admin.settings import AdminSettings

if TYPE_CHECKING:
    from engine.hub import Hub
    from engine.services import Services

__all__ = ["AdminContext", "context"]


@dataclass(frozen=True, slots=True)
class AdminContext:
    """Held on ``app.state.admin``; routes get it through :func:`context`."""

    services: Services
    hub: Hub | None
    settings: AdminSettings

    def run_write(self, op: Any) -> Any:
        """Run a write op through the store's single writer and wait for its commit."""
        return self.services.committer.run(op)


def context(request: Request) -> AdminContext:
    """FastAPI dependency: the app's :class:`AdminContext`."""
    ctx: AdminContext = request.app.state.admin
    return ctx
