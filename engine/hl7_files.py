"""Read HL7 messages from files as analysts keep them (one or several per file, LF or CR)."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["read_messages", "split_messages"]

_MESSAGE_START = re.compile(rb"(?:^|[\r\n])(?=MSH)")


def split_messages(data: bytes) -> list[bytes]:
    """Split a file's bytes into messages at each line starting with MSH; CR separators."""
    data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    parts = [p.strip(b"\r") for p in _MESSAGE_START.split(data)]
    return [p + b"\r" for p in parts if p.startswith(b"MSH")]


def read_messages(path: Path) -> list[bytes]:
    """The messages of one file, as bytes ready to frame."""
    return split_messages(path.read_bytes())
