"""Login throttling: too many failed logins for a username, or from an address, wait a while.

Failures are counted per key (``user:<name>`` and ``ip:<address>``) in a
sliding window. When a key has its quota of failures within ``window``
(``max_failures`` for a username, ``max_address_failures`` for an address:
higher, since many users may share one address behind a proxy or NAT),
logins for it are refused (HTTP 429, ``Retry-After``) until the oldest of
those failures leaves the window. Refused attempts are not counted, so the
lock always ends at most ``window`` after the last counted failure: an
attacker can delay an admin's login for a window at a time but never lock
the account for good (and the per-address limit slows that attacker down).
A successful login clears its username's failures.

The counts live in this process's memory: each hub node limits on its own,
and a restart forgets them. That is enough to make online password guessing
slow; it is not an audit record.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

__all__ = ["ADDRESS_PREFIX", "LoginThrottle"]

#: Failures allowed per username within the window.
MAX_FAILURES = 5
#: Failures allowed per client address within the window.
MAX_ADDRESS_FAILURES = 20
#: Keys starting with this count against the address quota.
ADDRESS_PREFIX = "ip:"
#: The window, in seconds.
WINDOW_SECONDS = 300.0
#: Keys tracked at most; past this, keys with no failure in the window are dropped.
MAX_KEYS = 10_000


class LoginThrottle:
    """Failed-login counts per key; thread-safe (sync routes run in a thread pool)."""

    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window_seconds: float = WINDOW_SECONDS,
        *,
        max_address_failures: int = MAX_ADDRESS_FAILURES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.max_address_failures = max_address_failures
        self.window = window_seconds
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, keys: Iterable[str]) -> int | None:
        """Seconds until a login for any of ``keys`` may be tried again; None if not locked."""
        now = self._clock()
        waits: list[float] = []
        with self._lock:
            for key in keys:
                recent = self._recent(key, now)
                quota = self._quota(key)
                if recent is not None and len(recent) >= quota:
                    # Unlocks when the failure that filled the quota leaves the window.
                    waits.append(recent[-quota] + self.window - now)
        if not waits:
            return None
        return max(1, math.ceil(max(waits)))

    def failed(self, keys: Iterable[str]) -> None:
        """Count one failed login against each of ``keys``."""
        now = self._clock()
        with self._lock:
            if len(self._failures) >= MAX_KEYS:
                self._prune(now)
            for key in keys:
                recent = self._failures.setdefault(key, deque())
                recent.append(now)
                # Older failures than the quota needs never matter again.
                while len(recent) > self._quota(key):
                    recent.popleft()

    def succeeded(self, key: str) -> None:
        """Forget ``key``'s failures (a correct password for that username)."""
        with self._lock:
            self._failures.pop(key, None)

    def _quota(self, key: str) -> int:
        return self.max_address_failures if key.startswith(ADDRESS_PREFIX) else self.max_failures

    def _recent(self, key: str, now: float) -> deque[float] | None:
        recent = self._failures.get(key)
        if recent is None:
            return None
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        if not recent:
            del self._failures[key]
            return None
        return recent

    def _prune(self, now: float) -> None:
        for key in list(self._failures):
            self._recent(key, now)
        if len(self._failures) >= MAX_KEYS:
            # Still full of live keys (a spray of usernames): drop the oldest half.
            by_age = sorted(self._failures, key=lambda k: self._failures[k][-1])
            for key in by_age[: len(by_age) // 2]:
                del self._failures[key]
