"""Run the admin app under uvicorn inside the hub's own asyncio loop.

The hub owns SIGINT/SIGTERM (``loop.add_signal_handler``); uvicorn's
``Server.serve`` would replace those handlers with its own, so
:class:`AdminServer` turns that off and is stopped by the hub instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator
from typing import TYPE_CHECKING

import uvicorn

from admin.api import create_app
from admin.settings import AdminSettings
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.hub import Hub
    from engine.services import Services

__all__ = ["AdminServer"]

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The hub handles signals and stops us; do not touch its handlers.
        yield


class AdminServer:
    """The admin API's HTTP(S) listener as a task of the running loop."""

    def __init__(self, services: Services, hub: Hub | None, settings: AdminSettings) -> None:
        tls = settings.tls
        config = uvicorn.Config(
            create_app(services, hub, settings),
            host=settings.host,
            port=settings.port,
            # Request lines carry search parameters (patient IDs): no access log.
            access_log=False,
            # Allowlists and the login throttle use the peer address: never take it from
            # an X-Forwarded-For header a local process could forge.
            proxy_headers=False,
            log_config=None,
            lifespan="off",
            ssl_certfile=str(tls.certfile) if tls else None,
            ssl_keyfile=str(tls.keyfile) if tls else None,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with ``port: 0`` in tests)."""
        port: int = self._server.servers[0].sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Start listening; returns once the socket is bound (ConfigError if it cannot be)."""
        self._task = asyncio.create_task(self._server.serve(), name="admin-api")
        while not self._server.started:
            if self._task.done():
                # uvicorn exits (SystemExit) when it cannot bind; say so in our terms.
                with contextlib.suppress(BaseException):
                    self._task.result()
                raise ConfigError("admin API: cannot listen (port in use or bad TLS files?)")
            await asyncio.sleep(0.02)
        log.info("admin API listening on port %d", self.bound_port)

    async def stop(self) -> None:
        """Finish in-flight requests and close the listener."""
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None
