"""The admin API served by uvicorn inside a running asyncio loop, as the hub runs it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import httpx

from admin.server import AdminServer
from admin.settings import AdminSettings
from engine.store.db import open_engine
from engine.store.group_commit import GroupCommitter


class _Services:
    def __init__(self, path: Path) -> None:
        self.engine = open_engine(f"sqlite:///{path}")
        self.committer = GroupCommitter(self.engine)


def test_serves_in_the_running_loop_and_stops(tmp_path: Path) -> None:
    services = _Services(tmp_path / "store.db")

    async def scenario() -> int:
        server = AdminServer(cast(Any, services), None, AdminSettings(port=0))
        await server.start()
        try:
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{server.bound_port}/healthz")
        finally:
            await server.stop()
        return response.status_code

    assert asyncio.run(scenario()) == 200
    services.engine.dispose()
