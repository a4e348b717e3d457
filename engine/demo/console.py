"""What ``meridian demo`` prints: numbered steps, their details, and progress while waiting."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO, TypeVar

__all__ = ["TIMES", "Console", "StepError"]

T = TypeVar("T")

_INDENT = "      "
#: The multiplication sign, for counts ("ACK AA x3" with a proper x).
TIMES = "\u00d7"


class StepError(Exception):
    """A step could not finish: the reason is printed and the demo exits non-zero."""


class Console:
    """Prints steps as ``[n/total] title`` with indented details; waits with a progress line."""

    def __init__(self, total: int, out: TextIO | None = None) -> None:
        self.total = total
        self.out = out or sys.stdout
        if isinstance(self.out, io.TextIOWrapper):
            # A terminal without UTF-8 gets '?' for the arrows rather than a crash.
            self.out.reconfigure(errors="replace")
        self.number = 0
        self._tty = self.out.isatty()

    def say(self, text: str = "") -> None:
        """A line as is."""
        print(text, file=self.out, flush=True)

    def detail(self, text: str) -> None:
        """An indented line under the current step."""
        self.say(_INDENT + text)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Rows under the step, columns aligned to the widest value."""
        cells = [list(header), *[[str(v) for v in row] for row in rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        for index, row in enumerate(cells):
            self.detail("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
            if index == 0:
                self.detail("  ".join("-" * w for w in widths))

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """One numbered step; ``StepError`` inside it is reported with the step's number."""
        self.number += 1
        self.say(f"[{self.number}/{self.total}] {title}")
        started = time.monotonic()
        try:
            yield
        except StepError as exc:
            self.say(f"{_INDENT}FAILED: {exc}")
            raise
        self.detail(f"ok ({time.monotonic() - started:.1f} s)")

    def wait(self, what: str, check: Callable[[], T | None], timeout: float) -> T:
        """Poll ``check`` until it returns something truthy, showing the time spent.

        Raises :class:`StepError` naming ``what`` after ``timeout`` seconds.
        """
        started = time.monotonic()
        shown = 0
        while True:
            value = check()
            elapsed = time.monotonic() - started
            if value:
                self._progress_end(what, elapsed, shown)
                return value
            if elapsed > timeout:
                self._progress_end(what, elapsed, shown, failed=True)
                raise StepError(f"timed out after {timeout:g} s waiting for {what}")
            shown = self._progress(what, elapsed, shown)
            time.sleep(0.2)

    def _progress(self, what: str, elapsed: float, shown: int) -> int:
        """Terminal: a line rewritten in place; otherwise one dot per second."""
        if self._tty:
            self.out.write(f"\r{_INDENT}waiting for {what} ... {elapsed:4.1f} s")
            self.out.flush()
            return shown + 1
        if shown == 0:
            self.out.write(f"{_INDENT}waiting for {what} ")
        while shown < int(elapsed) + 1:
            self.out.write(".")
            shown += 1
        self.out.flush()
        return shown

    def _progress_end(self, what: str, elapsed: float, shown: int, failed: bool = False) -> None:
        if not shown:
            return
        outcome = "gave up" if failed else "done"
        if self._tty:
            self.out.write(f"\r{_INDENT}waiting for {what} ... {outcome} after {elapsed:.1f} s\n")
        else:
            self.out.write(f" {outcome} after {elapsed:.1f} s\n")
        self.out.flush()
