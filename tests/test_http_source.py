"""The HTTP source over real localhost sockets, with a real HTTP client (httpx)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest

from connectors.base import InboundHandler, Origin
from connectors.http_source import HttpSource, HttpSourceConfig, HttpTLSConfig
from engine.datatypes.ai_results import AIResultsDataType
from engine.errors import ConnectorError
from tests.support.tls import self_signed_certificate

LOCALHOST = "127.0.0.1"
RESULT = b'{"model": "bleed-detect", "findings": []}'


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Each test runs its own event loop, bounded so a hang fails instead of stalling."""
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


class Recorder:
    """A handler that records what it was given and answers ``reply``."""

    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply
        self.received: list[tuple[bytes, Origin]] = []

    async def __call__(self, raw: bytes, origin: Origin) -> bytes | None:
        self.received.append((raw, origin))
        return self.reply


@contextlib.asynccontextmanager
async def serving(handler: InboundHandler, **config: Any) -> AsyncIterator[HttpSource]:
    source = HttpSource(HttpSourceConfig(type="http", host=LOCALHOST, port=0, **config))
    await source.start(handler)
    try:
        yield source
    finally:
        await source.stop()


def url(source: HttpSource, path: str = "/results") -> str:
    return f"http://{LOCALHOST}:{source.bound_port}{path}"


async def raw_exchange(source: HttpSource, *chunks: bytes) -> bytes:
    """Send ``chunks`` on a plain socket and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection(LOCALHOST, source.bound_port)
    for chunk in chunks:
        writer.write(chunk)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


# -- accepted ---------------------------------------------------------------------------


def test_202_only_after_the_handler_returned() -> None:
    release = asyncio.Event()
    received: list[tuple[bytes, Origin]] = []

    async def slow(raw: bytes, origin: Origin) -> bytes | None:
        received.append((raw, origin))
        await release.wait()  # the engine is storing the message
        return None

    async def scenario() -> None:
        async with serving(slow) as source, httpx.AsyncClient() as client:
            posting = asyncio.create_task(client.post(url(source), content=RESULT))
            while not received:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            assert not posting.done()  # nothing answered while the handler runs
            release.set()
            response = await posting
            assert response.status_code == 202
            assert response.json() == {"status": "accepted"}
            assert response.headers["content-type"] == "application/json"

    run(scenario())
    [(raw, origin)] = received
    assert raw == RESULT
    assert (origin.protocol, origin.tls) == ("http", False)
    assert origin.peer.startswith(f"{LOCALHOST}:")
    assert origin.local.startswith(f"{LOCALHOST}:")


def test_keep_alive_and_query_strings() -> None:
    record = Recorder()

    async def scenario() -> list[int]:
        async with serving(record) as source, httpx.AsyncClient() as client:
            first = await client.post(url(source, "/results?attempt=1"), content=b"{}")
            second = await client.post(url(source), content=b"{}")
            return [first.status_code, second.status_code]

    assert run(scenario()) == [202, 202]
    assert len({origin.peer for _, origin in record.received}) == 1  # one connection


def test_a_bearer_token_is_required_when_configured() -> None:
    record = Recorder()

    async def scenario() -> list[int]:
        async with serving(record, auth_token="s3cret") as source, httpx.AsyncClient() as c:
            missing = await c.post(url(source), content=RESULT)
            assert missing.headers["www-authenticate"].startswith("Bearer")
            wrong = await c.post(url(source), content=RESULT, headers=bearer("s3cre7"))
            basic = await c.post(url(source), content=RESULT, auth=("user", "s3cret"))
            right = await c.post(url(source), content=RESULT, headers=bearer("s3cret"))
            return [r.status_code for r in (missing, wrong, basic, right)]

    assert run(scenario()) == [401, 401, 401, 202]
    assert len(record.received) == 1


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- refused ----------------------------------------------------------------------------


def test_wrong_path_method_and_size_are_refused_before_the_handler() -> None:
    record = Recorder()

    async def scenario() -> list[httpx.Response]:
        async with serving(record, max_body_bytes=16) as source, httpx.AsyncClient() as c:
            return [
                await c.post(url(source, "/other"), content=b"{}"),
                await c.get(url(source)),
                await c.put(url(source), content=b"{}"),
                await c.post(url(source), content=b"x" * 17),
                await c.post(url(source), content=b"x" * 16),
            ]

    not_found, get, put, too_large, at_limit = run(scenario())
    assert [r.status_code for r in (not_found, get, put, too_large, at_limit)] == [
        404,
        405,
        405,
        413,
        202,
    ]
    assert get.headers["allow"] == "POST"
    assert too_large.headers["connection"] == "close"
    assert too_large.json() == {"status": "request entity too large"}
    assert [raw for raw, _ in record.received] == [b"x" * 16]


def test_a_failing_handler_is_a_500_without_details(caplog: pytest.LogCaptureFixture) -> None:
    async def failing(raw: bytes, origin: Origin) -> bytes | None:
        raise RuntimeError("patient DOE^JANE broke it")

    async def scenario() -> list[httpx.Response]:
        async with serving(failing) as source, httpx.AsyncClient() as client:
            # The listener outlives the failure: the next request is served too.
            return [await client.post(url(source), content=RESULT) for _ in range(2)]

    with caplog.at_level(logging.DEBUG):
        responses = run(scenario())
    assert [r.status_code for r in responses] == [500, 500]
    assert responses[0].json() == {"status": "error"}
    assert "DOE" not in caplog.text
    assert "RuntimeError" in caplog.text


def test_a_data_type_refusal_is_answered_422_with_its_reason(tmp_path: Path) -> None:
    types = AIResultsDataType("ai", deid=None, reidentify_scopes=[], output_root=tmp_path)

    async def pipeline(raw: bytes, origin: Origin) -> bytes | None:
        # What ChannelRuntime does with an unreadable message: store it, answer the refusal.
        return types.reply(None, raw, "rejected", "not JSON: JSONDecodeError", "100").data

    async def scenario() -> httpx.Response:
        async with serving(pipeline) as source, httpx.AsyncClient() as client:
            return await client.post(url(source), content=b"<xml/>")

    response = run(scenario())
    assert response.status_code == 422
    assert response.json() == {"status": "rejected", "reason": "not JSON: JSONDecodeError"}


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /results HTTP/1.1\r\nHost: x\r\n\r\n", 411),  # no Content-Length
        (b"POST /results HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 411),
        (b"POST /results HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /results HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
        (b"POST /results HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (b"POST /results SPDY/3\r\n\r\n", 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /results HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    ],
)
def test_malformed_requests_are_refused(request_bytes: bytes, status: int) -> None:
    record = Recorder()

    async def scenario() -> bytes:
        async with serving(record) as source:
            return await raw_exchange(source, request_bytes)

    answer = run(scenario())
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"Connection: close" in answer
    assert record.received == []


def test_expect_100_continue() -> None:
    record = Recorder()

    async def scenario() -> tuple[bytes, bytes]:
        async with serving(record) as source:
            reader, writer = await asyncio.open_connection(LOCALHOST, source.bound_port)
            writer.write(
                b"POST /results HTTP/1.1\r\nContent-Length: 2\r\n"
                b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            interim = await reader.readuntil(b"\r\n\r\n")
            writer.write(b"{}")
            final = await reader.read()
            writer.close()
            return interim, final

    interim, final = run(scenario())
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert final.endswith(b'{"status": "accepted"}')


# -- lifecycle --------------------------------------------------------------------------


def test_stop_lets_a_request_in_progress_finish() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(raw: bytes, origin: Origin) -> bytes | None:
        started.set()
        await release.wait()
        return None

    async def scenario() -> int:
        source = HttpSource(HttpSourceConfig(type="http", host=LOCALHOST, port=0))
        await source.start(slow)
        port = source.bound_port
        async with httpx.AsyncClient() as client:
            posting = asyncio.create_task(client.post(url(source), content=RESULT))
            await started.wait()
            stopping = asyncio.create_task(source.stop())
            await asyncio.sleep(0.1)
            release.set()
            response = await posting
            await stopping
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as client:
                await client.post(f"http://{LOCALHOST}:{port}/results", content=b"{}")
        return response.status_code

    assert run(scenario()) == 202


def test_bound_port_and_double_start() -> None:
    source = HttpSource(HttpSourceConfig(type="http", host=LOCALHOST, port=0))
    with pytest.raises(ConnectorError, match="not listening"):
        _ = source.bound_port

    async def scenario() -> None:
        await source.start(Recorder())
        try:
            assert source.bound_port > 0
            with pytest.raises(ConnectorError, match="already started"):
                await source.start(Recorder())
        finally:
            await source.stop()
        await source.stop()  # twice is harmless

    run(scenario())


def test_config_is_strict_and_keeps_the_token_secret() -> None:
    config = HttpSourceConfig.model_validate({"type": "http", "auth_token": "s3cret"})
    assert (config.host, config.port, config.path, config.max_body_bytes) == (
        "0.0.0.0",
        8088,
        "/results",
        10_000_000,
    )
    assert "s3cret" not in repr(config)
    with pytest.raises(pydantic.ValidationError):
        HttpSourceConfig(type="http", path="results")
    with pytest.raises(pydantic.ValidationError):
        HttpSourceConfig.model_validate({"type": "http", "prot": 80})


# -- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def test_tls(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    record = Recorder()
    tls = HttpTLSConfig(certfile=str(cert), keyfile=str(key))

    async def scenario() -> int:
        async with serving(record, tls=tls) as source:
            trusted = ssl.create_default_context(cafile=str(cert))
            address = f"https://{LOCALHOST}:{source.bound_port}/results"
            async with httpx.AsyncClient(verify=trusted) as client:
                response = await client.post(address, content=RESULT)
            with pytest.raises(httpx.ConnectError):
                async with httpx.AsyncClient() as untrusting:
                    await untrusting.post(address, content=RESULT)
            return response.status_code

    assert run(scenario()) == 202
    assert [origin.tls for _, origin in record.received] == [True]
    assert json.loads(record.received[0][0]) == json.loads(RESULT)
