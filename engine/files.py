"""Writing files so that they survive a crash: temp file, fsync, rename, fsync the folder."""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["write_durably"]


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per thread: two threads may write the same file (a resent instance).
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
