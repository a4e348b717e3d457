"""MLLP framing: ``0x0B payload 0x1C 0x0D``, read incrementally from a byte stream.

No I/O here: the reader is fed whatever the socket delivered and hands back the
frames completed so far, so the server and the client share one implementation and
tests can feed it byte by byte.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "END_BLOCK",
    "HEAD_BYTES",
    "START_BLOCK",
    "Frame",
    "MLLPFrameReader",
    "encode_frame",
]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
HEAD_BYTES = 64 * 1024  # kept of an oversize frame: enough to read MSH and store a head

_VT = 0x0B
_FS = 0x1C
_CR = 0x0D
_LF = 0x0A


def encode_frame(payload: bytes) -> bytes:
    """Wrap one message in MLLP start and end blocks."""
    return START_BLOCK + payload + END_BLOCK


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete MLLP frame.

    ``payload`` is the whole message, or only its first :data:`HEAD_BYTES` when
    ``oversize`` (the rest was discarded as it arrived); ``size`` is always the full
    payload size in bytes.
    """

    payload: bytes
    size: int
    oversize: bool = False


class MLLPFrameReader:
    """Incremental MLLP decoder: :meth:`feed` bytes, get back the frames they complete.

    A framing violation (bytes outside a frame other than stray CR/LF, a start block
    inside a frame, 0x1C not followed by 0x0D) sets :attr:`violation` to a description
    without any content; the reader then ignores further input and the connection
    should be closed. Frames completed before the violation are still returned.
    """

    def __init__(self, max_message_bytes: int) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self.max_message_bytes = max_message_bytes
        self.violation: str | None = None
        # Memory per connection is bounded by this, whatever the sender does.
        self._keep_limit = max(max_message_bytes, HEAD_BYTES)
        self._buffer = bytearray()
        self._size = 0
        self._in_frame = False
        self._after_fs = False

    @property
    def in_frame(self) -> bool:
        """True while a frame has started but not ended (a peer closing now truncates it)."""
        return self._in_frame

    @property
    def pending_bytes(self) -> int:
        """Payload bytes received for the unfinished frame."""
        return self._size

    def feed(self, data: bytes) -> list[Frame]:
        """Consume ``data``; return every frame it completes, in order."""
        frames: list[Frame] = []
        pos, end = 0, len(data)
        while pos < end and self.violation is None:
            if not self._in_frame:
                pos = self._skip_to_start(data, pos)
            elif self._after_fs:
                pos = self._expect_cr(data, pos, frames)
            else:
                pos = self._take_payload(data, pos)
        return frames

    def _skip_to_start(self, data: bytes, pos: int) -> int:
        byte = data[pos]
        if byte == _VT:
            self._in_frame = True
        elif byte not in (_CR, _LF):  # senders often add a newline after the end block
            self.violation = "data outside an MLLP frame (expected start block 0x0B)"
        return pos + 1

    def _expect_cr(self, data: bytes, pos: int, frames: list[Frame]) -> int:
        self._after_fs = False
        if data[pos] != _CR:
            self.violation = "end block 0x1C not followed by 0x0D"
            return pos
        frames.append(self._finish_frame())
        return pos + 1

    def _take_payload(self, data: bytes, pos: int) -> int:
        fs = data.find(_FS, pos)
        stop = len(data) if fs == -1 else fs
        if data.find(_VT, pos, stop) != -1:
            self.violation = "start block 0x0B inside a frame"
            return stop
        self._append(memoryview(data)[pos:stop])
        if fs == -1:
            return stop
        self._after_fs = True
        return fs + 1

    def _append(self, chunk: memoryview) -> None:
        self._size += len(chunk)
        room = self._keep_limit - len(self._buffer)
        if room > 0:
            self._buffer += chunk[:room]

    def _finish_frame(self) -> Frame:
        size = self._size
        oversize = size > self.max_message_bytes
        payload = bytes(self._buffer[:HEAD_BYTES] if oversize else self._buffer)
        self._buffer.clear()
        self._size = 0
        self._in_frame = False
        return Frame(payload=payload, size=size, oversize=oversize)
