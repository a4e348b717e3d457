"""Send many HL7 messages over several MLLP connections, as a busy EHR does.

Each connection sends its share of the messages one at a time and waits for
each ACK before the next (an EHR never pipelines). What came back is recorded
per message, so a test knows exactly which messages were ACKed when the hub
died: those are the ones the hub promised to keep.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

from tests.support.mllp_client import frame, msa, read_frame

__all__ = ["LoadResult", "ParallelSender"]


@dataclass
class LoadResult:
    """The MSA-1 code and MSA-2 control id answered per message index (absent: no answer)."""

    answers: dict[int, tuple[str, str]] = field(default_factory=dict)
    lost_connections: int = 0
    seconds: float = 0.0

    def codes(self, code: str) -> set[int]:
        """Indexes of the messages answered with ``code``."""
        return {i for i, (answered, _) in self.answers.items() if answered == code}


class ParallelSender:
    """Sends ``messages`` (by index) over ``connections`` sockets in background threads.

    A connection that fails (the hub was killed) ends its thread; the
    messages it had not been answered for are simply absent from the result.
    """

    def __init__(
        self, port: int, messages: dict[int, bytes], connections: int, timeout: float = 60.0
    ) -> None:
        self._port = port
        self._timeout = timeout
        indexes = sorted(messages)
        self._shares = [
            [(i, messages[i]) for i in indexes[k::connections]] for k in range(connections)
        ]
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._send_share, args=(share,), daemon=True)
            for share in self._shares
        ]
        self.result = LoadResult()
        self._started = 0.0

    def start(self) -> ParallelSender:
        """Start every connection's thread."""
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def acked(self) -> int:
        """Messages answered so far (any code)."""
        with self._lock:
            return len(self.result.answers)

    def running(self) -> bool:
        """True while some connection still has messages to send."""
        return any(thread.is_alive() for thread in self._threads)

    def join(self, timeout: float = 600.0) -> LoadResult:
        """Wait for every connection to finish (or fail); the answers recorded."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.running():
            raise TimeoutError("the MLLP load did not finish in time")
        self.result.seconds = time.monotonic() - self._started
        return self.result

    def _send_share(self, share: list[tuple[int, bytes]]) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self._port), timeout=self._timeout) as sock:
                for index, payload in share:
                    sock.sendall(frame(payload))
                    fields = msa(read_frame(sock, self._timeout))
                    with self._lock:
                        self.result.answers[index] = (fields[1], fields[2])
        except (ConnectionError, OSError):
            # The hub went away mid-conversation: the unanswered messages are the
            # sender's to resend, exactly as an EHR would.
            with self._lock:
                self.result.lost_connections += 1
