"""An in-process MLLP source on a free port and a raw client that talks to it frame by frame.

Shared by the MLLP source tests and the backpressure tests: the raw client keeps
frames that arrived together (so pipelining shows) and can watch for the
server closing the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import hl7

from connectors.base import InboundHandler, Origin
from connectors.mllp import MLLPSource, MLLPSourceConfig, OversizeHandler
from connectors.mllp_framing import MLLPFrameReader, encode_frame
from engine.formats.hl7 import build_ack, decode, encode, parse

LOCALHOST = "127.0.0.1"


def message(control_id: str, name: str = "DOE^JANE") -> bytes:
    """A small ORM^O01 with MSH-10 ``control_id``."""
    return (
        f"MSH|^~\\&|RIS|HOSP|PACS|RAD|20240101120000||ORM^O01|{control_id}|P|2.5.1\r"
        f"PID|1||12345^^^HOSP^MR||{name}\rOBR|1|ORD1||CT^CT HEAD\r"
    ).encode()


async def ack_handler(raw: bytes, origin: Origin) -> bytes | None:
    """Answer every message AA."""
    parsed = parse(decode(raw))
    return encode(build_ack(parsed.header, "AA"), parsed.header)


def msa(ack: bytes) -> tuple[str, str, str]:
    """MSA-1, MSA-2 and MSA-3 of an ACK payload."""
    segment = hl7.parse(ack.decode()).segment("MSA")
    reason = str(segment[3]) if len(segment) > 3 else ""
    return str(segment[1]), str(segment[2]), reason


@contextlib.asynccontextmanager
async def serving(
    handler: InboundHandler = ack_handler,
    on_oversize: OversizeHandler | None = None,
    **settings: Any,
) -> AsyncIterator[MLLPSource]:
    """An MLLP source on a free localhost port with ``settings``, stopped afterwards."""
    source = MLLPSource(MLLPSourceConfig(type="mllp", host=LOCALHOST, port=0, **settings))
    await source.start(handler, on_oversize)
    try:
        yield source
    finally:
        await source.stop()


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 3) -> bool:
    """True when the server closes the connection (EOF or reset) within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


class Peer:
    """A raw test client: keeps frames that arrived together, so pipelining can be tested."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._frames = MLLPFrameReader(10_000_000)
        self._pending: list[bytes] = []

    @classmethod
    async def connect(cls, port: int) -> Peer:
        """A new connection to ``port`` on localhost."""
        return cls(*await asyncio.open_connection(LOCALHOST, port))

    def send(self, *payloads: bytes) -> None:
        """Frame and write ``payloads`` at once."""
        self.writer.write(b"".join(encode_frame(payload) for payload in payloads))

    async def read_frame(self, timeout: float = 3) -> bytes:
        """The next frame's payload (one that arrived earlier first)."""
        async with asyncio.timeout(timeout):
            while not self._pending:
                data = await self.reader.read(65536)
                assert data, "server closed the connection instead of answering"
                self._pending += [frame.payload for frame in self._frames.feed(data)]
        return self._pending.pop(0)

    async def exchange(self, payload: bytes, timeout: float = 3) -> bytes:
        """Send one message and read its answer."""
        self.send(payload)
        return await self.read_frame(timeout)

    async def acknowledged(self, control_id: str, timeout: float = 3) -> tuple[str, str]:
        """Send :func:`message` ``control_id``; MSA-1 and MSA-2 of the answer."""
        return msa(await self.exchange(message(control_id), timeout))[:2]

    async def closed_by_server(self, timeout: float = 3) -> bool:
        """True when the server closes the connection within ``timeout`` (then closed here)."""
        closed = await closed_by_server(self.reader, timeout)
        self.close()
        return closed

    def close(self) -> None:
        """Close this side."""
        self.writer.close()
