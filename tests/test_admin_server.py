"""The admin API served by uvicorn inside a running asyncio loop, as the hub runs it."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any, cast

import httpx

from admin.server import AdminServer
from admin.settings import AdminSettings, TLSConfig
from engine.store.db import open_engine
from engine.store.group_commit import GroupCommitter
from tests.support.tls import self_signed_certificate


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


def test_serves_https_with_the_configured_certificate(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    services = _Services(tmp_path / "store.db")
    tls = TLSConfig(certfile=cert, keyfile=key)
    settings = AdminSettings(port=0, tls=tls, secure_cookies=True)

    async def scenario() -> tuple[int, str]:
        server = AdminServer(cast(Any, services), None, settings)
        await server.start()
        base = f"127.0.0.1:{server.bound_port}"
        try:
            async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=cert)) as client:
                response = await client.get(f"https://{base}/healthz")
            # Plain HTTP on the TLS port gets no answer a browser could use.
            async with httpx.AsyncClient() as plain:
                try:
                    refused = (await plain.get(f"http://{base}/healthz")).status_code
                except httpx.HTTPError as exc:
                    refused = type(exc).__name__
        finally:
            await server.stop()
        return response.status_code, str(refused)

    status, plain_answer = asyncio.run(scenario())
    assert status == 200
    assert plain_answer != "200"
    services.engine.dispose()
