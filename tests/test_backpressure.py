"""Backpressure on real listeners: a slow, silent or greedy client cannot stall the others.

Covered elsewhere and not repeated here (tests/test_mllp.py): oversize frame → AR with
the connection kept (test_oversize_frame_gets_ar_and_the_connection_stays_usable), a
silent connection closed after idle_timeout_seconds (test_idle_connection_is_closed),
connections over max_connections closed (test_connections_over_the_limit_are_refused),
twenty concurrent connections (test_twenty_connections_are_served_concurrently);
tests/test_http_source.py: 413 for a body over max_body_bytes. The DICOM listener's
limits (max_associations, acse_timeout, network_timeout) had no test: they are here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

from pynetdicom import AE

from connectors.base import Origin
from connectors.dicom_mwl import VERIFICATION, DicomListener, DicomListenerConfig
from connectors.http_source import HttpSource, HttpSourceConfig
from connectors.mllp_framing import encode_frame
from tests.support.mllp_peer import (
    LOCALHOST,
    Peer,
    ack_handler,
    closed_by_server,
    message,
    msa,
    serving,
)

PROMPT = 1.0  # seconds: "answered promptly" on a loaded 2-core CI runner


def run(coro: Coroutine[Any, Any, Any], timeout: float = 20) -> Any:
    """Each test runs its own event loop, bounded so a hang fails instead of stalling."""
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


async def prompt_exchanges(port: int, clients: int, tag: str) -> float:
    """``clients`` fresh connections exchange a message each, at once; the slowest time."""

    async def one(n: int) -> float:
        started = time.monotonic()
        client = await Peer.connect(port)
        try:
            assert await client.acknowledged(f"{tag}{n}", timeout=5) == ("AA", f"{tag}{n}")
        finally:
            client.close()
        return time.monotonic() - started

    return max(await asyncio.gather(*(one(n) for n in range(clients))))


# -- MLLP -------------------------------------------------------------------------------------


def test_mllp_a_client_sending_byte_by_byte_does_not_stall_others() -> None:
    async def scenario() -> None:
        async with serving() as source:
            slow = await Peer.connect(source.bound_port)
            data = encode_frame(message("SLOW"))

            async def trickle() -> None:
                for byte in data:
                    slow.writer.write(bytes([byte]))
                    await slow.writer.drain()
                    await asyncio.sleep(0.01)

            trickling = asyncio.create_task(trickle())
            await asyncio.sleep(0.2)  # the slow frame is well under way
            assert not trickling.done()
            assert await prompt_exchanges(source.bound_port, 10, "FAST") < PROMPT
            assert not trickling.done()  # the others really were served meanwhile
            await trickling
            assert msa(await slow.read_frame(timeout=5))[:2] == ("AA", "SLOW")
            slow.close()

    run(scenario())


def test_mllp_silent_and_half_frame_clients_do_not_stall_others_and_are_cut_off() -> None:
    async def scenario() -> None:
        async with serving(idle_timeout_seconds=1.0) as source:
            silent = await Peer.connect(source.bound_port)
            half = await Peer.connect(source.bound_port)
            half.writer.write(encode_frame(message("HALF"))[:40])  # then nothing more
            await asyncio.sleep(0.1)
            assert await prompt_exchanges(source.bound_port, 5, "OTHER") < PROMPT
            started = time.monotonic()
            assert await silent.closed_by_server(timeout=3)
            assert await half.closed_by_server(timeout=3)
            assert time.monotonic() - started < 2.0
            await asyncio.sleep(0.05)
            assert source.open_connections == 0  # their slots are free again

    run(scenario())


def test_mllp_a_trickling_client_is_cut_off_when_its_frame_takes_longer_than_the_timeout() -> None:
    async def scenario() -> None:
        async with serving(idle_timeout_seconds=1.0) as source:
            trickler = await Peer.connect(source.bound_port)

            async def trickle() -> None:  # a byte every 0.1 s: never idle for 1 s
                with contextlib.suppress(ConnectionError):
                    for byte in encode_frame(message("TRICKLE")):
                        trickler.writer.write(bytes([byte]))
                        await trickler.writer.drain()
                        await asyncio.sleep(0.1)

            trickling = asyncio.create_task(trickle())
            started = time.monotonic()
            assert await trickler.closed_by_server(timeout=4)
            assert time.monotonic() - started < 2.0  # the whole frame had 1 s, not each byte
            trickling.cancel()
            assert await prompt_exchanges(source.bound_port, 3, "AFTER") < PROMPT

    run(scenario())


def test_mllp_connection_limit_refuses_extra_clients_while_the_admitted_ones_work() -> None:
    async def scenario() -> None:
        async with serving(max_connections=3) as source:
            admitted = [await Peer.connect(source.bound_port) for _ in range(3)]
            for n, client in enumerate(admitted):  # all three are being served
                assert await client.acknowledged(f"IN{n}", timeout=5) == ("AA", f"IN{n}")
            extra = await Peer.connect(source.bound_port)
            extra.writer.write(encode_frame(message("EXTRA")))
            assert await extra.closed_by_server(timeout=3)  # closed, never answered
            for n, client in enumerate(admitted):  # and go on working
                assert await client.acknowledged(f"AGAIN{n}", timeout=5) == ("AA", f"AGAIN{n}")
            assert source.open_connections == 3
            admitted.pop().close()
            await asyncio.sleep(0.1)
            late = await Peer.connect(source.bound_port)  # a slot was freed
            assert await late.acknowledged("LATE", timeout=5) == ("AA", "LATE")
            for client in [*admitted, late]:
                client.close()

    run(scenario())


def test_mllp_a_client_that_never_reads_its_acks_is_cut_off_not_held_forever() -> None:
    reply = b"MSH|^~\\&|A|B|C|D|1||ACK|1|P|2.5.1\rMSA|AA|1\r" + b"NTE|" + b"x" * 200_000 + b"\r"

    async def big_replies(raw: bytes, origin: Origin) -> bytes | None:
        return reply if b"GREEDY" in raw else await ack_handler(raw, origin)

    async def scenario() -> None:
        async with serving(big_replies, idle_timeout_seconds=1.0) as source:
            greedy = socket.socket()
            greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            greedy.setblocking(False)
            await asyncio.get_running_loop().sock_connect(greedy, (LOCALHOST, source.bound_port))
            # 100 messages whose 20 MB of replies it never reads: the server's writes block.
            burst = encode_frame(message("GREEDY")) * 100
            await asyncio.get_running_loop().sock_sendall(greedy, burst)
            await asyncio.sleep(0.5)
            assert source.open_connections == 1
            assert await prompt_exchanges(source.bound_port, 5, "OTHER") < PROMPT
            deadline = time.monotonic() + 4
            while source.open_connections and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert source.open_connections == 0, "a client that never reads holds its slot"
            greedy.close()

    run(scenario())


# -- HTTP source ------------------------------------------------------------------------------

RESULT = b'{"model": "bleed-detect", "findings": []}'


def post(body: bytes = RESULT) -> bytes:
    head = f"POST /results HTTP/1.1\r\nHost: hub\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def accept_all(raw: bytes, origin: Origin) -> bytes | None:
    return None  # 202


@contextlib.asynccontextmanager
async def http(**settings: Any) -> AsyncIterator[HttpSource]:
    source = HttpSource(HttpSourceConfig(type="http", host=LOCALHOST, port=0, **settings))
    await source.start(accept_all)
    try:
        yield source
    finally:
        await source.stop()


class HttpClient:
    """A raw keep-alive HTTP/1.1 client: one request at a time, answers read by length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> HttpClient:
        return cls(*await asyncio.open_connection(LOCALHOST, port))

    async def status(self, timeout: float = 5) -> int:
        """The status of the next answer (its body is read and dropped)."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await self.reader.readexactly(length)
        return int(head.split(b" ", 2)[1])

    async def request(self) -> int:
        self.writer.write(post())
        return await self.status()

    async def closed_by_server(self, timeout: float) -> bool:
        return await closed_by_server(self.reader, timeout)

    def close(self) -> None:
        self.writer.close()


async def prompt_posts(port: int, clients: int) -> float:
    """``clients`` fresh connections POST once each, at once; the slowest time."""

    async def one() -> float:
        started = time.monotonic()
        client = await HttpClient.connect(port)
        try:
            assert await client.request() == 202
        finally:
            client.close()
        return time.monotonic() - started

    return max(await asyncio.gather(*(one() for _ in range(clients))))


def test_http_connection_limit_answers_503_while_the_admitted_clients_work() -> None:
    async def scenario() -> None:
        async with http(max_connections=2) as source:
            admitted = [await HttpClient.connect(source.bound_port) for _ in range(2)]
            for client in admitted:
                assert await client.request() == 202
            extra = await HttpClient.connect(source.bound_port)
            assert await extra.status() == 503
            assert await extra.closed_by_server(timeout=3)
            for client in admitted:  # keep-alive connections go on working
                assert await client.request() == 202
            admitted.pop().close()
            await asyncio.sleep(0.1)
            assert await prompt_posts(source.bound_port, 1) < PROMPT  # a slot was freed
            admitted[0].close()

    run(scenario())


def test_http_silent_and_trickling_clients_are_cut_off_without_stalling_others() -> None:
    async def scenario() -> None:
        async with http(read_timeout_seconds=1.0, max_connections=12) as source:
            silent = await HttpClient.connect(source.bound_port)
            trickler = await HttpClient.connect(source.bound_port)
            request = post()

            async def trickle() -> None:  # slowloris: a byte every 50 ms, forever
                with contextlib.suppress(ConnectionError):
                    for byte in request * 10:
                        trickler.writer.write(bytes([byte]))
                        await trickler.writer.drain()
                        await asyncio.sleep(0.05)

            trickling = asyncio.create_task(trickle())
            started = time.monotonic()
            await asyncio.sleep(0.2)
            assert await prompt_posts(source.bound_port, 10) < PROMPT
            assert await silent.closed_by_server(timeout=3)
            # The timeout bounds the whole head, so steady trickling does not extend it.
            assert await trickler.closed_by_server(timeout=3)
            assert time.monotonic() - started < 2.5
            trickling.cancel()
            await asyncio.sleep(0.05)
            assert await prompt_posts(source.bound_port, 12) < PROMPT  # both slots are free

    run(scenario())


def test_http_a_slow_body_does_not_stall_others_and_is_accepted_when_complete() -> None:
    async def scenario() -> None:
        async with http(read_timeout_seconds=5.0) as source:
            slow = await HttpClient.connect(source.bound_port)
            request = post()
            slow.writer.write(request[:-20])
            for byte in request[-20:-1]:
                await asyncio.sleep(0.02)
                slow.writer.write(bytes([byte]))
                assert await prompt_posts(source.bound_port, 2) < PROMPT
            slow.writer.write(request[-1:])
            assert await slow.status() == 202
            slow.close()

    run(scenario())


# -- DICOM listener ---------------------------------------------------------------------------


@contextlib.contextmanager
def dicom_listener(**settings: Any) -> Iterator[int]:
    listener = DicomListener(DicomListenerConfig(host=LOCALHOST, port=0, **settings))
    listener.start()
    try:
        yield listener.bound_port
    finally:
        listener.stop()


def scu() -> AE:
    ae = AE(ae_title="BACKPRESSURE")
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    return ae


def timed_echo(port: int) -> float:
    """Seconds for a new association to C-ECHO and release; fails if it could not."""
    started = time.monotonic()
    assoc = scu().associate(LOCALHOST, port)
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    assert status.Status == 0x0000
    return time.monotonic() - started


def test_dicom_association_limit_rejects_extras_while_the_admitted_work() -> None:
    with dicom_listener(max_associations=2) as port:
        held = [scu().associate(LOCALHOST, port) for _ in range(2)]
        assert all(assoc.is_established for assoc in held)
        extra = scu().associate(LOCALHOST, port)
        assert extra.is_rejected  # A-ASSOCIATE-RJ: local limit exceeded
        for assoc in held:
            assert assoc.send_c_echo().Status == 0x0000
        held.pop().release()
        time.sleep(0.2)
        assert timed_echo(port) < PROMPT  # the released slot is usable again
        held[0].release()


def test_dicom_silent_socket_and_idle_association_are_dropped_without_stalling_others() -> None:
    with dicom_listener(max_associations=4, acse_timeout=1.0, network_timeout=1.5) as port:
        silent = socket.create_connection((LOCALHOST, port))  # never sends A-ASSOCIATE-RQ
        idle = scu().associate(LOCALHOST, port)  # associates, then says nothing
        assert idle.is_established
        started = time.monotonic()
        assert timed_echo(port) < PROMPT
        silent.settimeout(3)
        assert silent.recv(100) == b""  # ARTIM (acse_timeout) closed it
        assert time.monotonic() - started < 2.0
        silent.close()
        deadline = time.monotonic() + 3
        while idle.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert idle.is_aborted  # network_timeout ended the idle association
        assert timed_echo(port) < PROMPT
