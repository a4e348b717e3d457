"""MLLP client: send a message over a persistent connection and wait for its ACK.

Every failure the caller can act on is a :class:`RecoverableError` (the peer is down,
slow or hung up: keep the message and retry later); socket and TLS exceptions are
mapped here, where they enter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Self

from connectors.mllp_framing import MLLPFrameReader, encode_frame
from connectors.server_stop import CLOSE_TIMEOUT
from connectors.tls_config import ClientTLSConfig
from connectors.tls_config import client_ssl_context as tls_client_context
from engine.errors import RecoverableError

__all__ = ["MLLPClient", "client_ssl_context", "send_messages"]

logger = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024


def client_ssl_context(
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    *,
    verify: bool = True,
) -> ssl.SSLContext:
    """A TLS context for :class:`MLLPClient`: trust ``cafile`` (else the system store),
    present ``certfile``/``keyfile`` when the server wants a client certificate.
    ``verify=False`` disables server verification (test setups only)."""
    tls = ClientTLSConfig(cafile=cafile, certfile=certfile, keyfile=keyfile, verify=verify)
    return tls_client_context(tls, "MLLP")


class MLLPClient:
    """One persistent MLLP connection; :meth:`send` one message at a time, get its ACK.

    Connects lazily on the first :meth:`send`, and again when the peer has closed the
    idle connection in the meantime. After a timeout or a broken exchange the
    connection is dropped (a late ACK must never be taken for the next message's).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = 10.0,
        max_message_bytes: int = 1_048_576,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self._ssl_context = ssl_context
        self._server_hostname = server_hostname
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """True when a connection is open and the peer has not closed it."""
        return self._writer is not None and self._reader is not None and not self._reader.at_eof()

    async def connect(self) -> None:
        """Open the connection (a no-op when already connected)."""
        if self.connected:
            return
        await self.close()
        hostname = self._server_hostname if self._ssl_context is not None else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self._ssl_context, server_hostname=hostname
                )
        except TimeoutError as exc:
            raise RecoverableError(
                f"MLLP connect to {self.address} timed out after {self.connect_timeout:g}s"
            ) from exc
        except OSError as exc:  # includes ssl.SSLError and ConnectionRefusedError
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise RecoverableError(f"MLLP connect to {self.address} failed: {reason}") from exc

    async def send(self, message: bytes, timeout: float) -> bytes:
        """Send one message and return the payload of the response frame (the ACK).

        ``timeout`` bounds the whole exchange, connecting included.
        """
        async with self._lock:
            try:
                async with asyncio.timeout(timeout):
                    await self.connect()
                    return await self._exchange(message)
            except TimeoutError as exc:
                await self.close()
                raise RecoverableError(
                    f"no MLLP response from {self.address} within {timeout:g}s"
                ) from exc
            except OSError as exc:
                await self.close()
                reason = exc.strerror or type(exc).__name__
                raise RecoverableError(f"MLLP connection to {self.address} lost: {reason}") from exc
            except RecoverableError:
                await self.close()
                raise

    async def _exchange(self, message: bytes) -> bytes:
        if self._reader is None or self._writer is None:
            raise RecoverableError(f"MLLP connection to {self.address} is not open")
        self._writer.write(encode_frame(message))
        await self._writer.drain()
        frames = MLLPFrameReader(self.max_message_bytes)
        while True:
            data = await self._reader.read(_READ_CHUNK)
            if not data:
                raise RecoverableError(f"MLLP peer {self.address} closed without answering")
            completed = frames.feed(data)
            if completed:
                if len(completed) > 1:
                    logger.warning("MLLP peer %s sent extra frames; ignored", self.address)
                if completed[0].oversize:
                    raise RecoverableError(
                        f"MLLP response from {self.address} exceeds {self.max_message_bytes} bytes"
                    )
                return completed[0].payload
            if frames.violation:
                raise RecoverableError(
                    f"invalid MLLP response from {self.address}: {frames.violation}"
                )

    async def close(self) -> None:
        """Close the connection, if any. The client can connect again afterwards."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await writer.wait_closed()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _send_all(client: MLLPClient, messages: list[bytes], timeout: float) -> list[bytes]:
    async with client:
        return [await client.send(message, timeout) for message in messages]


def send_messages(
    host: str,
    port: int,
    messages: list[bytes],
    timeout: float,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> list[bytes]:
    """Send ``messages`` in order over one connection; return their ACK payloads.

    Synchronous (it runs its own event loop), for the ``meridian send`` CLI; do not
    call it from inside a running loop. Raises :class:`RecoverableError` on failure.
    """
    client = MLLPClient(host, port, ssl_context=ssl_context, connect_timeout=timeout)
    return asyncio.run(_send_all(client, messages, timeout))
