"""A deliberately plain blocking MLLP client for tests (independent of the hub's own)."""

from __future__ import annotations

import socket

START, END = b"\x0b", b"\x1c\x0d"


def frame(payload: bytes) -> bytes:
    """Wrap ``payload`` in MLLP framing."""
    return START + payload + END


def read_frame(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read one framed reply; raises ConnectionError if the peer closes first."""
    sock.settimeout(timeout)
    buffer = b""
    while END not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buffer += chunk
    start = buffer.index(START) + 1
    return buffer[start : buffer.index(END)]


def send(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send one message on a fresh connection and return the ACK payload."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(frame(payload))
        return read_frame(sock, timeout)


def msa(ack: bytes) -> list[str]:
    """The MSA fields of an ACK: [MSA, code, control id, text...]."""
    for segment in ack.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA"):
            return segment.decode("latin-1").split("|")
    raise AssertionError(f"no MSA segment in {ack!r}")


def segment(ack: bytes, name: str) -> list[str] | None:
    """The fields of the first ``name`` segment, or None."""
    for seg in ack.replace(b"\n", b"\r").split(b"\r"):
        if seg.startswith(name.encode()):
            return seg.decode("latin-1").split("|")
    return None
