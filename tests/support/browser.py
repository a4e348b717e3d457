"""Headless Chromium for UI tests: the system's /usr/bin/chromium driven by Playwright.

The browser is Debian's package (``.ci/run`` installs it), never a download by
``playwright install``: CI machines, like the hospitals' hubs, may be offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_chromium() -> None:
    """Fail in CI (the suite must not silently lose its UI tests), else skip with the reason."""
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright  # noqa: F401
        except ImportError:
            problem = "the playwright package is missing (pip install -e '.[dev]')"
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run in CI: {problem}")
    pytest.skip(problem)


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium for the duration of the block."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def add_user(data_dir: Path, name: str, password: str, role: str, *, phi: bool) -> None:
    """Create a user with the ``meridian user add`` command, as an operator would."""
    meridian = Path(sys.executable).parent / "meridian"
    command = [str(meridian), "user", "add", name, "--role", role, "--password-stdin"]
    command += ["--phi" if phi else "--no-phi", "--data", str(data_dir)]
    done = subprocess.run(
        command, input=password + "\n", capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
