"""Test MLLP receivers (stand-ins for an EHR): real asyncio servers on localhost.

Deliberately independent of the hub's own MLLP and HL7 code (plain framing, ACKs
written by hand), so a bug there cannot hide itself in the tests. Each receiver
records the messages it got and counts connections; start one with ``async with``::

    async with AckReceiver() as ehr:
        destination = MLLPDestination(config(port=ehr.port))
        ...
        assert len(ehr.received) == 1

* :class:`AckReceiver`     answers AA (or any code, e.g. AE/AR with a reason)
* :class:`NakReceiver`     answers AE or AR with an MSA-3 text and an ERR segment
* :class:`SilentReceiver`  reads the message and never answers
* :class:`BadAckReceiver`  answers garbage, or a well-formed ACK for another message
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Literal, Self

__all__ = ["AckReceiver", "BadAckReceiver", "NakReceiver", "Receiver", "SilentReceiver"]

START, END = b"\x0b", b"\x1c\x0d"
LOCALHOST = "127.0.0.1"


def frame(payload: bytes) -> bytes:
    """Wrap ``payload`` in MLLP framing."""
    return START + payload + END


def msh_fields(message: bytes) -> list[str]:
    """The MSH fields of ``message`` (``fields[n]`` is MSH-n)."""
    msh = message.split(b"\r", 1)[0].decode("ascii", errors="replace")
    return ["MSH", "|", *msh[4:].split("|")]


def ack(message: bytes, code: str, reason: str = "", control_id: str | None = None) -> bytes:
    """A v2.5.1 ACK for ``message``; MSA-2 is its MSH-10 unless ``control_id`` is given."""
    fields = msh_fields(message)
    echoed = fields[10] if control_id is None and len(fields) > 10 else control_id or ""
    segments = [
        f"MSH|^~\\&|EHR|HOSP|{fields[3]}|{fields[4]}|20240101120000||ACK^R01^ACK|ACK{echoed}|P|2.5.1",
        f"MSA|{code}|{echoed}|{reason}",
    ]
    if code not in ("AA", "CA"):
        segments.append(f"ERR|||207^Application internal error^HL70357|E||||{reason}")
    return ("\r".join(segments) + "\r").encode("utf-8")


class Receiver:
    """An MLLP server on a free port that records messages; subclasses decide the answer."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[bytes] = []
        self.connections = 0
        self._port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.message_arrived = asyncio.Event()
        self.ssl_context: ssl.SSLContext | None = None  # set before start() to serve TLS

    @property
    def port(self) -> int:
        """The port listened on (still known after :meth:`stop`, to restart on it)."""
        if not self._port:
            raise RuntimeError("receiver was never started")
        return self._port

    async def reply(self, message: bytes) -> bytes | None:
        """The framed payload to answer ``message`` with; None: say nothing."""
        raise NotImplementedError

    async def start(self) -> Self:
        """Listen on localhost (a free port unless one was given)."""
        self._server = await asyncio.start_server(
            self._serve, LOCALHOST, self._port, ssl=self.ssl_context
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Stop listening and drop every open connection (as a crashing receiver would)."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        buffer = b""
        try:
            while data := await reader.read(65536):
                buffer += data
                while END in buffer:
                    raw, buffer = buffer.split(END, 1)
                    message = raw[raw.index(START) + 1 :]
                    self.received.append(message)
                    self.message_arrived.set()
                    answer = await self.reply(message)
                    if answer is not None:
                        writer.write(frame(answer))
                        await writer.drain()
        except (ConnectionError, OSError):
            pass  # the sender hung up: nothing to clean beyond the writer
        finally:
            self._writers.discard(writer)
            writer.close()


class AckReceiver(Receiver):
    """Answers every message with ``code`` (AA by default), echoing its MSH-10."""

    def __init__(self, port: int = 0, code: str = "AA", reason: str = "") -> None:
        super().__init__(port)
        self.code = code
        self.reason = reason

    async def reply(self, message: bytes) -> bytes | None:
        return ack(message, self.code, self.reason)


class NakReceiver(AckReceiver):
    """Refuses every message: AE (application error) or AR (rejected), with a reason."""

    def __init__(
        self, code: Literal["AE", "AR", "CE", "CR"] = "AE", reason: str = "refused", port: int = 0
    ) -> None:
        super().__init__(port, code, reason)


class SilentReceiver(Receiver):
    """Takes every message and never answers (a hung interface engine)."""

    async def reply(self, message: bytes) -> bytes | None:
        return None


class BadAckReceiver(Receiver):
    """Answers something that must not be trusted as the ACK of the message sent.

    ``garbage``: bytes that are not HL7 at all; ``wrong-control-id``: a valid AA whose
    MSA-2 names another message (a late ACK, or a peer mixing up its connections).
    """

    def __init__(self, mode: Literal["garbage", "wrong-control-id"], port: int = 0) -> None:
        super().__init__(port)
        self.mode = mode

    async def reply(self, message: bytes) -> bytes | None:
        if self.mode == "garbage":
            return b"\x00this is not HL7\xff"
        return ack(message, "AA", control_id="SOMEONE-ELSE")
