"""MLLP source: an asyncio TCP (optionally TLS) listener feeding one channel.

Each connection is served by one task that reads frames and hands them to the
engine one at a time, so messages on a connection are answered in the order they
arrived; connections are independent of each other.

Two callbacks, both given to :meth:`MLLPSource.start`:

* ``handler(raw, origin)`` — the :class:`~connectors.base.InboundHandler` every
  source takes: one complete message; the bytes it returns are sent back framed
  (``None``: send nothing, e.g. MSH-15 = NE).
* ``on_oversize(head, origin, size)`` — optional, MLLP specific: a frame larger than
  ``max_message_bytes`` arrived. ``head`` is its first 64 KiB (the rest was discarded
  unread), ``size`` its full length. Return the reply (normally an AR ACK) or None.
  Without it the source answers by itself with :func:`oversize_reply`. The
  connection stays open either way.

The engine never sees a framing violation: the connection is closed and a warning
naming the peer (never the content) is logged. Neither does it see a peer outside
``allowed_networks``: its connection is closed at once, logged and counted
(:attr:`MLLPSource.refused_by_allowlist`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from connectors.allowlist import AllowedNetworks, is_allowed
from connectors.base import InboundHandler, Origin
from connectors.mllp_client import MLLPClient, client_ssl_context, send_messages
from connectors.mllp_framing import Frame, MLLPFrameReader, encode_frame
from connectors.server_stop import CLOSE_TIMEOUT, stop_gracefully
from connectors.tls_config import ServerTLSConfig as TLSConfig
from connectors.tls_config import server_ssl_context
from engine.errors import ConnectorError, DecodeError, ParseError
from engine.formats.hl7 import build_ack, decode, encode, parse_header

__all__ = [
    "MLLPClient",
    "MLLPSource",
    "MLLPSourceConfig",
    "OversizeHandler",
    "TLSConfig",
    "client_ssl_context",
    "oversize_reply",
    "send_messages",
]

logger = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024


class MLLPSourceConfig(BaseModel):
    """Configuration of an ``mllp`` source in a channel file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["mllp"]
    host: str = "0.0.0.0"  # all interfaces: senders are other hosts
    port: int = Field(default=2575, ge=0, le=65535)  # 0 = any free port (tests)
    max_message_bytes: int = Field(default=1_048_576, gt=0)
    idle_timeout_seconds: float = Field(
        default=300, gt=0, description="silence between messages; also the most one may take"
    )
    max_connections: int = Field(default=100, gt=0)
    stop_timeout_seconds: float = Field(default=10, ge=0)
    tls: TLSConfig | None = None
    default_charset: str = "UNICODE UTF-8"
    allowed_networks: AllowedNetworks = None


class OversizeHandler(Protocol):
    """Answers a frame over ``max_message_bytes``; ``head`` is its first 64 KiB."""

    async def __call__(self, head: bytes, origin: Origin, size: int) -> bytes | None: ...


def oversize_reply(head: bytes, limit: int, default_charset: str) -> bytes:
    """An AR ACK "message exceeds N bytes", echoing MSH-10 when the head's MSH is readable."""
    header = None
    with contextlib.suppress(DecodeError, ParseError):
        # Decode the MSH line only: the head may end in the middle of a character.
        msh = head.split(b"\r", 1)[0].split(b"\n", 1)[0]
        header = parse_header(decode(msh, default_charset))
    # Table 0357 has no "message too long"; 104 "Value too long" is the closest meaning.
    ack = build_ack(header, "AR", f"message exceeds {limit} bytes", error_code="104")
    return encode(ack, header, default_charset)


def _address(sockname: object) -> str:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host, port = sockname[0], sockname[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(sockname)


def _peer_ip(writer: asyncio.StreamWriter) -> str | None:
    peername = writer.get_extra_info("peername")
    return str(peername[0]) if isinstance(peername, tuple) and peername else None


def _describe(exc: BaseException) -> str:
    """Exception type and where it was raised, without its message (which may hold PHI)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
    return f"{type(exc).__name__}{where}"


@dataclass(eq=False)
class _Connection:
    origin: Origin
    writer: asyncio.StreamWriter
    reader: MLLPFrameReader
    task: asyncio.Task[Any] | None
    busy: bool = False  # inside a handler call or writing its reply: stop() waits for it


class MLLPSource:
    """Listens for MLLP connections and feeds each message to the engine (see module doc)."""

    def __init__(self, config: MLLPSourceConfig) -> None:
        self.config = config
        self._server: asyncio.Server | None = None
        self._handler: InboundHandler | None = None
        self._on_oversize: OversizeHandler | None = None
        self._connections: set[_Connection] = set()
        self._stopping = False
        self.refused_by_allowlist = 0  # connections closed: peer outside allowed_networks

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with ``port: 0``)."""
        if self._server is None or not self._server.sockets:
            raise ConnectorError("MLLP source is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Client connections open right now (the admin /metrics gauge)."""
        return len(self._connections)

    async def start(
        self, handler: InboundHandler, on_oversize: OversizeHandler | None = None
    ) -> None:
        """Bind and begin serving; returns once listening."""
        if self._server is not None:
            raise ConnectorError("MLLP source already started")
        context = server_ssl_context(self.config.tls, "MLLP") if self.config.tls else None
        self._handler, self._on_oversize, self._stopping = handler, on_oversize, False
        try:
            self._server = await asyncio.start_server(
                self._serve, self.config.host, self.config.port, ssl=context
            )
        except OSError as exc:
            where = f"{self.config.host}:{self.config.port}"
            raise ConnectorError(f"cannot listen for MLLP on {where}: {exc.strerror}") from exc
        logger.info("MLLP listening on %s (tls=%s)", self._local_address(), context is not None)

    async def stop(self) -> None:
        """Stop accepting, let in-flight messages finish (bounded), close connections."""
        if self._server is None:
            return
        self._stopping = True
        await stop_gracefully(
            self._server,
            self._connections,
            timeout=self.config.stop_timeout_seconds,
            what="MLLP",
        )
        self._server = None

    def _local_address(self) -> str:
        if self._server is None or not self._server.sockets:
            return "?"
        return _address(self._server.sockets[0].getsockname())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        origin = Origin(
            protocol="mllp",
            peer=_address(writer.get_extra_info("peername")),
            local=_address(writer.get_extra_info("sockname")),
            tls=writer.get_extra_info("ssl_object") is not None,
        )
        if not is_allowed(self.config.allowed_networks, _peer_ip(writer)):
            self.refused_by_allowlist += 1
            logger.warning("MLLP connection from %s refused: not in allowed_networks", origin.peer)
            await _close(writer)
            return
        if self._stopping or len(self._connections) >= self.config.max_connections:
            why = "stopping" if self._stopping else f"{self.config.max_connections} connections"
            logger.warning("MLLP connection from %s refused: %s", origin.peer, why)
            await _close(writer)
            return
        conn = _Connection(
            origin=origin,
            writer=writer,
            reader=MLLPFrameReader(self.config.max_message_bytes),
            task=asyncio.current_task(),
        )
        self._connections.add(conn)
        try:
            await self._converse(conn, reader)
        except (ConnectionError, OSError) as exc:
            logger.info("MLLP connection from %s lost: %s", origin.peer, type(exc).__name__)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # stop() cancelled us. End normally: asyncio 3.11's start_server callback
            # logs a spurious traceback for a connection task that ends cancelled.
            if conn.task is not None:
                conn.task.uncancel()
        finally:
            self._connections.discard(conn)
            await _close(writer)

    async def _converse(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        peer = conn.origin.peer
        loop, idle = asyncio.get_running_loop(), self.config.idle_timeout_seconds
        frame_deadline = 0.0
        while not self._stopping:
            # Between messages: idle_timeout_seconds of silence. A started frame must be
            # complete within it, so trickling bytes cannot hold a slot forever (slowloris).
            deadline = frame_deadline if conn.reader.in_frame else loop.time() + idle
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(_READ_CHUNK)
            except TimeoutError:
                logger.info("MLLP connection from %s closed: idle timeout", peer)
                return
            if not data:
                if conn.reader.in_frame:
                    logger.warning(
                        "MLLP peer %s closed mid-frame; %d bytes discarded",
                        peer,
                        conn.reader.pending_bytes,
                    )
                return
            was_in_frame = conn.reader.in_frame
            frames = conn.reader.feed(data)
            if conn.reader.in_frame and (frames or not was_in_frame):  # a new frame began
                frame_deadline = loop.time() + idle
            for frame in frames:
                if not await self._answer(conn, frame) or self._stopping:
                    return
            if conn.reader.violation:
                logger.warning("MLLP framing violation from %s: %s", peer, conn.reader.violation)
                return

    async def _answer(self, conn: _Connection, frame: Frame) -> bool:
        """Hand one frame to the engine and write its reply; False closes the connection."""
        conn.busy = True
        try:
            try:
                reply = await self._dispatch(frame, conn.origin)
            except Exception as exc:
                # Like pynetdicom's attempt boundary: the listener outlives any handler bug.
                # No reply: the sender times out and resends, nothing is lost.
                logger.error("MLLP handler failed for %s: %s", conn.origin.peer, _describe(exc))
                return False
            if reply is not None:
                conn.writer.write(encode_frame(reply))
                try:
                    # A peer that never reads its ACKs would hold this slot forever.
                    async with asyncio.timeout(self.config.idle_timeout_seconds):
                        await conn.writer.drain()
                except TimeoutError:
                    logger.info("MLLP connection from %s closed: ACKs not read", conn.origin.peer)
                    return False
        finally:
            conn.busy = False
        return True

    async def _dispatch(self, frame: Frame, origin: Origin) -> bytes | None:
        if frame.oversize:
            logger.warning(
                "MLLP message of %d bytes from %s exceeds %d bytes",
                frame.size,
                origin.peer,
                self.config.max_message_bytes,
            )
            if self._on_oversize is None:
                limit = self.config.max_message_bytes
                return oversize_reply(frame.payload, limit, self.config.default_charset)
            return await self._on_oversize(frame.payload, origin, frame.size)
        if self._handler is None:
            raise ConnectorError("MLLP source has no handler")
        return await self._handler(frame.payload, origin)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
