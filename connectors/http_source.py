"""HTTP source: AI services POST their results (JSON) to the hub; each body is one message.

Why a small HTTP/1.1 server on :func:`asyncio.start_server` rather than a framework or
:mod:`http.server`: the source lives on the hub's event loop like the MLLP source (no
thread hop to reach the engine's async handler), takes one kind of request, and needs
exact control of *when* it answers: ``202 Accepted`` is written only after the handler
returned, that is after the engine stored the message durably.

What it speaks: ``POST <path>`` with a ``Content-Length`` body (no chunked uploads:
411), optional ``Expect: 100-continue``, persistent connections (HTTP/1.1 keep-alive;
any refusal before the body was read closes the connection, since the unread body
would otherwise be taken for the next request). Answers, all JSON:

* 202 ``{"status": "accepted"}`` when the handler returns None; when it returns bytes
  (a data type's refusal, ``{"status": "rejected"|"error", "reason": ...}``) they are the
  body, and the status follows: rejected 422, error 500 (other statuses 200);
* 403 a peer outside ``allowed_networks`` (after the request head; nothing else is read),
* 404 another path, 405 another method, 401 a missing or wrong bearer token,
  413 a body over ``max_body_bytes`` (refused before it is read), 400 a malformed
  request, 431 a header block over 16 KiB, 503 too many connections;
* 500 ``{"status": "error"}`` when the handler raised: no details leave the hub.

Logs name the peer and the status, never the content (results carry PHI).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import ssl
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.allowlist import AllowedNetworks, is_allowed
from connectors.base import InboundHandler, Origin
from connectors.server_stop import CLOSE_TIMEOUT, stop_gracefully
from engine.errors import ConfigError, ConnectorError

__all__ = ["HttpSource", "HttpSourceConfig", "HttpTLSConfig"]

logger = logging.getLogger(__name__)

_MAX_HEAD_BYTES = 16 * 1024
_STATUS_OF_REPLY = {"accepted": 202, "rejected": 422, "error": 500}


class HttpTLSConfig(BaseModel):
    """Server TLS: our certificate chain and its key (PEM files)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    certfile: str
    keyfile: str


class HttpSourceConfig(BaseModel):
    """Configuration of an ``http`` source in a channel file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["http"]
    host: str = "0.0.0.0"  # all interfaces: AI services are other hosts
    port: int = Field(default=8088, ge=0, le=65535)  # 0 = any free port (tests)
    path: str = Field(default="/results", pattern=r"^/")
    max_body_bytes: int = Field(default=10_000_000, gt=0)
    auth_token: SecretStr | None = Field(
        default=None, description="when set, requests need 'Authorization: Bearer <token>'"
    )
    tls: HttpTLSConfig | None = None
    read_timeout_seconds: float = Field(
        default=30, gt=0, description="for a request's head or body, and between requests"
    )
    max_connections: int = Field(default=100, gt=0)
    stop_timeout_seconds: float = Field(default=10, ge=0)
    allowed_networks: AllowedNetworks = None


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    version: str
    headers: dict[str, str]


class _Refusal(Exception):  # noqa: N818 - an answer, not a failure
    """An answer given before the body was read (the connection is closed after it)."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers or {}


@dataclass(eq=False)
class _Connection:
    task: asyncio.Task[Any] | None
    busy: bool = False  # between a complete request and its answer: stop() waits
    allowed: bool = True  # False: the peer is outside allowed_networks, every request gets 403


class HttpSource:
    """Listens for result POSTs and feeds each body to the engine (see module doc)."""

    def __init__(self, config: HttpSourceConfig) -> None:
        self.config = config
        self._server: asyncio.Server | None = None
        self._handler: InboundHandler | None = None
        self._connections: set[_Connection] = set()
        self._stopping = False
        self.refused_by_allowlist = 0  # connections answered 403: peer outside allowed_networks
        token = config.auth_token
        self._token = token.get_secret_value().encode() if token is not None else None

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with ``port: 0``)."""
        if self._server is None or not self._server.sockets:
            raise ConnectorError("HTTP source is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, handler: InboundHandler) -> None:
        """Bind and begin serving; returns once listening."""
        if self._server is not None:
            raise ConnectorError("HTTP source already started")
        context = _ssl_context(self.config.tls) if self.config.tls else None
        self._handler, self._stopping = handler, False
        host, port = self.config.host, self.config.port
        try:
            self._server = await asyncio.start_server(
                self._serve, host, port, ssl=context, limit=_MAX_HEAD_BYTES
            )
        except OSError as exc:
            raise ConnectorError(
                f"cannot listen for HTTP on {host}:{port}: {exc.strerror}"
            ) from exc
        logger.info("HTTP listening on port %d (tls=%s)", self.bound_port, context is not None)

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish (bounded), close connections."""
        if self._server is None:
            return
        self._stopping = True
        await stop_gracefully(
            self._server,
            self._connections,
            timeout=self.config.stop_timeout_seconds,
            what="HTTP",
        )
        self._server = None

    # -- one connection ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        origin = Origin(
            protocol="http",
            peer=_address(writer.get_extra_info("peername")),
            local=_address(writer.get_extra_info("sockname")),
            tls=writer.get_extra_info("ssl_object") is not None,
        )
        conn = _Connection(asyncio.current_task())
        try:
            if not is_allowed(self.config.allowed_networks, _peer_ip(writer)):
                self.refused_by_allowlist += 1
                logger.warning(
                    "HTTP connection from %s refused: not in allowed_networks", origin.peer
                )
                conn.allowed = False
            if self._stopping or len(self._connections) >= self.config.max_connections:
                logger.warning("HTTP connection from %s refused: busy", origin.peer)
                await _respond(writer, 503, {"status": "busy"}, keep_alive=False)
                return
            self._connections.add(conn)
            while not self._stopping and await self._exchange(reader, writer, origin, conn):
                pass
        except (ConnectionError, OSError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the peer went away or went quiet: nothing was accepted on its behalf
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            if conn.task is not None:
                conn.task.uncancel()  # stop() cancelled us: end normally (see mllp.py)
        finally:
            self._connections.discard(conn)
            await _close(writer)

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        origin: Origin,
        conn: _Connection,
    ) -> bool:
        """Serve one request; False ends the connection."""
        try:
            async with asyncio.timeout(self.config.read_timeout_seconds):
                request = await _read_head(reader)
            if request is None:
                return False
            if not conn.allowed:
                # Answered after the head is read: closing on unread bytes would reset the
                # connection and the client would see no answer at all.
                raise _Refusal(403)
            length = self._admit(request)
            if request.headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
            async with asyncio.timeout(self.config.read_timeout_seconds):
                body = await reader.readexactly(length)
        except _Refusal as refusal:
            logger.info("HTTP %d for %s", refusal.status, origin.peer)
            answer = {"status": HTTPStatus(refusal.status).phrase.lower()}
            await _respond(writer, refusal.status, answer, refusal.headers, keep_alive=False)
            return False
        conn.busy = True
        try:
            status, reply = await self._dispatch(body, origin)
            keep_alive = _keep_alive(request)
            await _respond_bytes(writer, status, reply, {}, keep_alive=keep_alive)
        finally:
            conn.busy = False
        return keep_alive

    def _admit(self, request: _Request) -> int:
        """The body length to read, or the refusal of the request."""
        if request.path != self.config.path:
            raise _Refusal(404)
        if request.method != "POST":
            raise _Refusal(405, {"Allow": "POST"})
        if self._token is not None and not _bearer_matches(request.headers, self._token):
            raise _Refusal(401, {"WWW-Authenticate": 'Bearer realm="meridian"'})
        if "transfer-encoding" in request.headers or "content-length" not in request.headers:
            raise _Refusal(411)
        declared = request.headers["content-length"]
        if not declared.isdigit():
            raise _Refusal(400)
        if int(declared) > self.config.max_body_bytes:
            raise _Refusal(413)
        return int(declared)

    async def _dispatch(self, body: bytes, origin: Origin) -> tuple[int, bytes]:
        if self._handler is None:
            raise ConnectorError("HTTP source has no handler")
        try:
            reply = await self._handler(body, origin)
        except Exception as exc:
            # Like pynetdicom's attempt boundary: the listener outlives any handler bug.
            logger.error("HTTP handler failed for %s: %s", origin.peer, type(exc).__name__)
            return 500, json.dumps({"status": "error"}).encode()
        if reply is None:
            return 202, json.dumps({"status": "accepted"}).encode()
        status = _STATUS_OF_REPLY.get(_reply_status(reply), 200)
        logger.info("HTTP %d for %s", status, origin.peer)
        return status, reply


# -- wire helpers --------------------------------------------------------------------------


async def _read_head(reader: asyncio.StreamReader) -> _Request | None:
    """The next request's line and headers; None when the peer closed between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise _Refusal(400) from exc
    except asyncio.LimitOverrunError as exc:
        raise _Refusal(431) from exc
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Refusal(400)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        key = name.strip().lower()
        if not colon or not key or name != name.rstrip():
            raise _Refusal(400)
        if key == "content-length" and key in headers and headers[key] != value.strip():
            raise _Refusal(400)  # conflicting lengths: request smuggling, refuse
        headers[key] = value.strip()
    return _Request(parts[0], parts[1].split("?", 1)[0], parts[2], headers)


def _bearer_matches(headers: dict[str, str], token: bytes) -> bool:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    # Constant time: the comparison must not tell how much of a guess was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)


def _keep_alive(request: _Request) -> bool:
    connection = request.headers.get("connection", "").lower()
    return request.version == "HTTP/1.1" and "close" not in connection


def _reply_status(reply: bytes) -> str:
    """The ``status`` of a JSON reply ('' when there is none)."""
    try:
        document = json.loads(reply)
    except (UnicodeDecodeError, ValueError):
        return ""
    status = document.get("status") if isinstance(document, dict) else None
    return status if isinstance(status, str) else ""


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: dict[str, str],
    headers: dict[str, str] | None = None,
    *,
    keep_alive: bool,
) -> None:
    await _respond_bytes(
        writer, status, json.dumps(body).encode(), headers or {}, keep_alive=keep_alive
    )


async def _respond_bytes(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    headers: dict[str, str],
    *,
    keep_alive: bool,
) -> None:
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


def _ssl_context(tls: HttpTLSConfig) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.certfile, tls.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"HTTP TLS certificate or key cannot be loaded: {exc}") from exc
    return context


def _peer_ip(writer: asyncio.StreamWriter) -> str | None:
    peername = writer.get_extra_info("peername")
    return str(peername[0]) if isinstance(peername, tuple) and peername else None


def _address(sockname: object) -> str:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host, port = sockname[0], sockname[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(sockname)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
