"""The dashboard's Nodes panel in real headless Chromium, for two nodes on one PostgreSQL store."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import SCREENSHOTS, chromium, require_chromium
from tests.support.cluster import relay_channel, start_node
from tests.support.databases import postgres_database
from tests.support.hub_process import free_port

PASSWORD = "correct horse battery staple"


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_database()


def add_admin(db_url: str) -> None:
    meridian = Path(sys.executable).parent / "meridian"
    command = [str(meridian), "user", "add", "ada", "--role", "admin", "--password-stdin"]
    done = subprocess.run(
        [*command, "--db", db_url],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_dashboard_lists_both_nodes_and_the_leader(tmp_path: Path, pg_url: str) -> None:
    from playwright.sync_api import expect

    require_chromium()

    def channel(port: int) -> str:
        return relay_channel(port, {"ehr": (free_port(), 1)})

    nodes = [start_node(tmp_path / f"n{n}", f"node-{n}", pg_url, channel) for n in range(2)]
    try:
        add_admin(pg_url)
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(f"http://127.0.0.1:{nodes[0].admin_port}/login")
            page.fill("#username", "ada")
            page.fill("#password", PASSWORD)
            page.click("#login-submit")
            page.wait_for_url(re.compile(r"/(#.*)?$"))
            panel = page.locator("section", has_text="Nodes")
            expect(panel).to_contain_text("node-0 (this node)", timeout=15_000)
            expect(panel).to_contain_text("node-1")
            # The leader is elected at the first periodic job; the panel polls every 5 s.
            expect(panel.locator(".badge", has_text="leader")).to_have_count(1, timeout=15_000)
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "13-dashboard-nodes.png"), full_page=True)
            assert problems == []
    finally:
        for node in nodes:
            node.stop()
