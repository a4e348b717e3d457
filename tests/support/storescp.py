"""dcmtk ``storescp`` as a DICOM node for tests (an AI node, a workstation, a C-MOVE target).

Typical use::

    with StoreSCP(tmp_path / "ai", aet="AI_NODE") as scp:
        ...  # send to 127.0.0.1:scp.port, AE title scp.aet
        assert scp.received_sop_uids() == expected

:meth:`StoreSCP.stop` and :meth:`StoreSCP.start` keep the port, for "the
destination is down, then up again" tests. By default every transfer syntax
dcmtk knows is accepted (``+xa``); ``accept_all=False`` accepts uncompressed
only, to exercise the sender's fallback.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from pydicom import dcmread

__all__ = ["StoreSCP", "free_port"]


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class StoreSCP:
    """A dcmtk storescp process writing what it receives into ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        aet: str = "AI_NODE",
        port: int | None = None,
        accept_all: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.aet = aet
        self.port = port or free_port()
        self._accept_all = accept_all
        self._extra_args = list(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._log = directory.parent / f"storescp-{aet}-{self.port}.log"

    def start(self, timeout: float = 10.0) -> StoreSCP:
        """Start listening; returns once the port accepts connections."""
        if self._process is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        args = ["storescp", "-aet", self.aet, "-od", str(self.directory), "-dhl"]
        if self._accept_all:
            args.append("+xa")
        args += [*self._extra_args, str(self.port)]
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"storescp exited: {self._log.read_text(errors='replace')}")
            # A bare TCP connect: a C-ECHO would fail against --refuse.
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"storescp did not listen on port {self.port}")

    def stop(self) -> None:
        """Stop the process (the port is kept for a later :meth:`start`)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def received(self) -> list[Path]:
        """Files written so far, sorted by name."""
        if not self.directory.exists():
            return []
        return sorted(path for path in self.directory.iterdir() if path.is_file())

    def received_sop_uids(self) -> set[str]:
        """SOP Instance UIDs of the files received so far."""
        return {
            str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in self.received()
        }

    def clear(self) -> None:
        """Delete what was received (between tests sharing one storescp)."""
        for path in self.received():
            path.unlink()

    def __enter__(self) -> StoreSCP:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
