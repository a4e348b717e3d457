"""MLLP framing, source and client over real localhost sockets."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pydantic
import pytest

from connectors.base import Origin
from connectors.mllp import (
    MLLPClient,
    MLLPSource,
    MLLPSourceConfig,
    TLSConfig,
    client_ssl_context,
    send_messages,
)
from connectors.mllp_framing import HEAD_BYTES, MLLPFrameReader, encode_frame
from engine.errors import RecoverableError
from tests.support.mllp_peer import (
    LOCALHOST,
    Peer,
    ack_handler,
    message,
    msa,
    serving,
)
from tests.support.tls import self_signed_certificate


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Each test runs its own event loop, bounded so a hang fails instead of stalling."""
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


async def connect(source: MLLPSource) -> Peer:
    return await Peer.connect(source.bound_port)


async def still_serves(source: MLLPSource, control_id: str = "NEXT") -> None:
    peer = await connect(source)
    assert await peer.acknowledged(control_id) == ("AA", control_id)
    peer.close()


# --- framing -----------------------------------------------------------------------------


def test_reader_assembles_frames_fed_byte_by_byte() -> None:
    reader = MLLPFrameReader(1000)
    stream = encode_frame(b"first") + b"\r\n" + encode_frame(b"second")
    frames = [frame for byte in stream for frame in reader.feed(bytes([byte]))]
    assert [f.payload for f in frames] == [b"first", b"second"]
    assert reader.violation is None
    assert not reader.in_frame


def test_reader_returns_every_frame_of_one_chunk() -> None:
    frames = MLLPFrameReader(1000).feed(encode_frame(b"a") + encode_frame(b"b") + b"\x0bpart")
    assert [f.payload for f in frames] == [b"a", b"b"]


@pytest.mark.parametrize(
    "stream",
    [b"GET / HTTP/1.1\r\n", b"\x0bab\x1cX", b"\x0bab\x0bcd\x1c\x0d"],
    ids=["outside-frame", "fs-without-cr", "start-inside-frame"],
)
def test_reader_reports_violations(stream: bytes) -> None:
    reader = MLLPFrameReader(1000)
    assert reader.feed(stream) == []
    assert reader.violation is not None
    assert reader.feed(encode_frame(b"later")) == []  # nothing more after a violation


def test_reader_keeps_only_the_head_of_an_oversize_frame() -> None:
    reader = MLLPFrameReader(1000)
    payload = b"MSH" + b"x" * (3 * HEAD_BYTES)
    frames = reader.feed(encode_frame(payload) + encode_frame(b"small"))
    assert frames[0].oversize and frames[0].size == len(payload)
    assert frames[0].payload == payload[:HEAD_BYTES]
    assert (frames[1].payload, frames[1].oversize) == (b"small", False)


# --- source ------------------------------------------------------------------------------


def test_persistent_connection_answers_each_message_in_order() -> None:
    async def scenario() -> None:
        async with serving() as source:
            peer = await connect(source)
            for n in range(5):
                assert msa(await peer.exchange(message(f"M{n}"))) == ("AA", f"M{n}", "")
            # Pipelined: three frames in one write still get three ordered answers.
            peer.send(*(message(f"P{n}") for n in range(3)))
            answers = [msa(await peer.read_frame())[1] for _ in range(3)]
            assert answers == ["P0", "P1", "P2"]
            peer.close()

    run(scenario())


def test_one_message_at_a_time_per_connection() -> None:
    active: dict[str, int] = {}
    overlaps: list[str] = []

    async def slow(raw: bytes, origin: Origin) -> bytes | None:
        active[origin.peer] = active.get(origin.peer, 0) + 1
        if active[origin.peer] > 1:
            overlaps.append(origin.peer)
        await asyncio.sleep(0.01)
        active[origin.peer] -= 1
        return await ack_handler(raw, origin)

    async def scenario() -> None:
        async with serving(slow) as source:
            peer = await connect(source)
            peer.send(*(message(f"Q{n}") for n in range(5)))
            answers = [msa(await peer.read_frame())[1] for _ in range(5)]
            assert answers == [f"Q{n}" for n in range(5)]
            peer.close()

    run(scenario())
    assert overlaps == []


def test_twenty_connections_are_served_concurrently() -> None:
    async def slow(raw: bytes, origin: Origin) -> bytes | None:
        await asyncio.sleep(0.2)
        return await ack_handler(raw, origin)

    async def client(source: MLLPSource, n: int) -> list[str]:
        peer = await connect(source)
        ids = [msa(await peer.exchange(message(f"C{n}-{i}")))[1] for i in range(2)]
        peer.close()
        return ids

    async def scenario() -> None:
        async with serving(slow) as source:
            started = time.monotonic()
            results = await asyncio.gather(*(client(source, n) for n in range(20)))
            elapsed = time.monotonic() - started
        assert results == [[f"C{n}-0", f"C{n}-1"] for n in range(20)]
        assert elapsed < 2.0  # 40 x 0.2 s one after another would take 8 s

    run(scenario())


def test_garbage_closes_that_connection_only(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serving() as source:
            peer = await connect(source)
            peer.writer.write(b"SMITH^JOHN 19700101 garbage")
            assert await peer.closed_by_server()
            await still_serves(source)

    with caplog.at_level(logging.INFO, logger="connectors.mllp"):
        run(scenario())
    assert "framing violation from 127.0.0.1:" in caplog.text
    assert "SMITH" not in caplog.text


def test_truncated_frame_then_disconnect_does_not_harm_the_server() -> None:
    async def scenario() -> None:
        async with serving() as source:
            peer = await connect(source)
            peer.writer.write(b"\x0b" + message("CUT")[:30])
            await peer.writer.drain()
            peer.close()
            await asyncio.sleep(0.05)
            await still_serves(source)

    run(scenario())


def test_oversize_frame_gets_ar_and_the_connection_stays_usable() -> None:
    big = message("BIG") + b"NTE|1||" + b"x" * 5000 + b"\r"

    async def scenario() -> None:
        async with serving(max_message_bytes=1000) as source:
            peer = await connect(source)
            assert msa(await peer.exchange(big)) == ("AR", "BIG", "message exceeds 1000 bytes")
            assert msa(await peer.exchange(message("SMALL")))[:2] == ("AA", "SMALL")
            peer.close()

    run(scenario())


def test_oversize_callback_gets_the_head_and_full_size() -> None:
    seen: list[tuple[int, int, str]] = []
    big = message("BIG") + b"x" * (HEAD_BYTES * 2)

    async def on_oversize(head: bytes, origin: Origin, size: int) -> bytes | None:
        seen.append((len(head), size, origin.protocol))
        return b"custom"

    async def scenario() -> None:
        async with serving(on_oversize=on_oversize, max_message_bytes=HEAD_BYTES) as source:
            peer = await connect(source)
            assert await peer.exchange(big) == b"custom"
            peer.close()

    run(scenario())
    assert seen == [(HEAD_BYTES, len(big), "mllp")]


def test_idle_connection_is_closed() -> None:
    async def scenario() -> None:
        async with serving(idle_timeout_seconds=0.2) as source:
            peer = await connect(source)
            started = time.monotonic()
            assert await peer.closed_by_server(timeout=2)
            assert 0.15 < time.monotonic() - started < 1.5

    run(scenario())


def test_connections_over_the_limit_are_refused() -> None:
    async def scenario() -> None:
        async with serving(max_connections=2) as source:
            first, second = await connect(source), await connect(source)
            await first.exchange(message("1"))
            await second.exchange(message("2"))
            third = await connect(source)
            assert await third.closed_by_server()
            first.close()
            second.close()
            await asyncio.sleep(0.05)
            await still_serves(source)  # a slot freed up

    run(scenario())


def test_handler_error_closes_that_connection_and_server_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def flaky(raw: bytes, origin: Origin) -> bytes | None:
        if b"|BOOM|" in raw:
            raise ValueError("patient DOE^JANE broke it")
        return await ack_handler(raw, origin)

    async def scenario() -> None:
        async with serving(flaky) as source:
            other = await connect(source)
            failing = await connect(source)
            failing.send(message("BOOM"))
            assert await failing.closed_by_server()
            assert msa(await other.exchange(message("OTHER")))[1] == "OTHER"
            await still_serves(source)
            other.close()

    with caplog.at_level(logging.ERROR, logger="connectors.mllp"):
        run(scenario())
    assert "ValueError" in caplog.text
    assert "DOE" not in caplog.text


def test_none_reply_sends_nothing() -> None:
    async def silent_for_quiet(raw: bytes, origin: Origin) -> bytes | None:
        return None if b"|QUIET|" in raw else await ack_handler(raw, origin)

    async def scenario() -> None:
        async with serving(silent_for_quiet) as source:
            peer = await connect(source)
            peer.send(message("QUIET"))
            # The next answer on the connection belongs to the next message.
            assert msa(await peer.exchange(message("LOUD")))[1] == "LOUD"
            peer.close()

    run(scenario())


def test_stop_waits_for_an_in_flight_message() -> None:
    async def scenario() -> None:
        entered = asyncio.Event()

        async def slow(raw: bytes, origin: Origin) -> bytes | None:
            entered.set()
            await asyncio.sleep(0.3)
            return await ack_handler(raw, origin)

        source = MLLPSource(MLLPSourceConfig(type="mllp", host=LOCALHOST, port=0))
        await source.start(slow)
        port = source.bound_port
        idle = await connect(source)
        busy = await connect(source)
        busy.send(message("INFLIGHT"))
        await entered.wait()
        await source.stop()
        # stop() returned only after the reply was written, then closed everything.
        assert msa(await busy.read_frame())[1] == "INFLIGHT"
        assert await busy.closed_by_server()
        assert await idle.closed_by_server()
        with pytest.raises(OSError):
            await asyncio.open_connection(LOCALHOST, port)

    run(scenario())


def test_stop_gives_up_on_a_hung_handler_after_its_timeout() -> None:
    async def hung(raw: bytes, origin: Origin) -> bytes | None:
        await asyncio.sleep(60)
        return None

    async def scenario() -> None:
        source = MLLPSource(
            MLLPSourceConfig(type="mllp", host=LOCALHOST, port=0, stop_timeout_seconds=0.2)
        )
        await source.start(hung)
        peer = await connect(source)
        peer.send(message("HUNG"))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await source.stop()
        assert time.monotonic() - started < 1.5
        assert await peer.closed_by_server()

    run(scenario())


def test_origin_describes_the_connection() -> None:
    origins: list[Origin] = []

    async def record(raw: bytes, origin: Origin) -> bytes | None:
        origins.append(origin)
        return await ack_handler(raw, origin)

    async def scenario() -> None:
        async with serving(record) as source:
            await still_serves(source)
            assert origins[0].local == f"{LOCALHOST}:{source.bound_port}"

    run(scenario())
    assert origins[0].protocol == "mllp"
    assert origins[0].peer.startswith(f"{LOCALHOST}:")
    assert origins[0].tls is False


def test_config_is_strict() -> None:
    with pytest.raises(pydantic.ValidationError):
        MLLPSourceConfig.model_validate({"type": "mllp", "prot": 2575})
    with pytest.raises(pydantic.ValidationError):
        MLLPSourceConfig.model_validate({"type": "mllp", "port": 70000})
    with pytest.raises(pydantic.ValidationError):
        TLSConfig(certfile="c.pem", keyfile="k.pem", require_client_cert=True)
    assert MLLPSourceConfig.model_validate({"type": "mllp"}).port == 2575


# --- client ------------------------------------------------------------------------------


def test_client_sends_over_one_connection_and_reconnects_after_idle_close() -> None:
    peers: set[str] = set()

    async def record(raw: bytes, origin: Origin) -> bytes | None:
        peers.add(origin.peer)
        return await ack_handler(raw, origin)

    async def scenario() -> None:
        async with serving(record, idle_timeout_seconds=0.2) as source:
            client = MLLPClient(LOCALHOST, source.bound_port)
            for n in range(3):
                assert msa(await client.send(message(f"K{n}"), timeout=2))[1] == f"K{n}"
            assert len(peers) == 1
            await asyncio.sleep(0.4)  # the server drops the idle connection
            assert msa(await client.send(message("AFTER"), timeout=2))[1] == "AFTER"
            assert len(peers) == 2
            await client.close()

    run(scenario())


def test_client_to_a_closed_port_raises_recoverable() -> None:
    async def scenario() -> None:
        async with serving() as source:
            port = source.bound_port
        with pytest.raises(RecoverableError, match=f"{LOCALHOST}:{port}"):
            await MLLPClient(LOCALHOST, port).send(message("X"), timeout=2)

    run(scenario())


def test_client_timeout_is_recoverable_and_the_next_send_works() -> None:
    async def slow_once(raw: bytes, origin: Origin) -> bytes | None:
        if b"|SLOW|" in raw:
            await asyncio.sleep(0.3)
        return await ack_handler(raw, origin)

    async def scenario() -> None:
        async with serving(slow_once) as source:
            client = MLLPClient(LOCALHOST, source.bound_port)
            with pytest.raises(RecoverableError, match=r"within 0\.1s"):
                await client.send(message("SLOW"), timeout=0.1)
            # A fresh connection: the late ACK of SLOW is never taken for FAST's.
            assert msa(await client.send(message("FAST"), timeout=2))[1] == "FAST"
            await client.close()

    run(scenario())


def test_client_reports_a_peer_that_hangs_up() -> None:
    async def hang_up(raw: bytes, origin: Origin) -> bytes | None:
        raise RuntimeError("closes the connection")

    async def scenario() -> None:
        async with serving(hang_up) as source:
            client = MLLPClient(LOCALHOST, source.bound_port)
            with pytest.raises(RecoverableError, match="closed without answering"):
                await client.send(message("X"), timeout=2)

    run(scenario())


def test_send_messages_helper() -> None:
    async def scenario() -> list[bytes]:
        async with serving() as source:
            batch = [message("S1"), message("S2")]
            # send_messages runs its own loop, as the CLI does: call it from a thread.
            return await asyncio.to_thread(send_messages, LOCALHOST, source.bound_port, batch, 2)

    assert [msa(ack)[1] for ack in run(scenario())] == ["S1", "S2"]


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def test_tls_round_trip(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    tls = TLSConfig(certfile=str(cert), keyfile=str(key))
    origins: list[Origin] = []

    async def record(raw: bytes, origin: Origin) -> bytes | None:
        origins.append(origin)
        return await ack_handler(raw, origin)

    async def scenario() -> None:
        async with serving(record, tls=tls) as source:
            context = client_ssl_context(cafile=str(cert))
            client = MLLPClient(LOCALHOST, source.bound_port, ssl_context=context)
            assert msa(await client.send(message("TLS1"), timeout=3))[1] == "TLS1"
            await client.close()
            # A client that does not trust the certificate cannot connect.
            untrusting = MLLPClient(LOCALHOST, source.bound_port, ssl_context=client_ssl_context())
            with pytest.raises(RecoverableError):
                await untrusting.send(message("TLS2"), timeout=3)

    run(scenario())
    assert origins[0].tls is True


def test_tls_client_certificate_required(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    tls = TLSConfig(
        certfile=str(cert), keyfile=str(key), cafile=str(cert), require_client_cert=True
    )

    async def send(context: ssl.SSLContext, port: int) -> bytes:
        client = MLLPClient(LOCALHOST, port, ssl_context=context)
        try:
            return await client.send(message("MTLS"), timeout=3)
        finally:
            await client.close()

    async def scenario() -> None:
        async with serving(tls=tls) as source:
            with_cert = client_ssl_context(cafile=str(cert), certfile=str(cert), keyfile=str(key))
            assert msa(await send(with_cert, source.bound_port))[1] == "MTLS"
            with pytest.raises(RecoverableError):
                await send(client_ssl_context(cafile=str(cert)), source.bound_port)

    run(scenario())
