"""The admin web UI in a real browser against a real hub process.

One hub (shipped channels, an ORM^O01 and a refused ADT^A01 sent over MLLP) and
one headless Chromium serve the whole module. The tests walk through what an
interface analyst does: log in, watch the dashboard, open a message stage by
stage, reprocess it, try the transform on the test bench, and edit a channel
file; a viewer must not get write buttons. Full-page screenshots of every main
page land in tests/artifacts/screenshots/ for a human look.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import create_engine, insert

from engine.ai_timeouts import alerts
from tests.support import mllp_client
from tests.support.browser import SCREENSHOTS, add_user, chromium, require_chromium
from tests.support.hub_process import HubProcess, start_hub, wait_for_port
from tests.support.orders import orm

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

with contextlib.suppress(ImportError):  # require_chromium() reports it missing
    from playwright.sync_api import expect

PASSWORD = "correct horse battery"
ACCESSION = "ACCUI1"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    require_chromium()
    process = start_hub(tmp_path_factory.mktemp("ui-hub"))
    try:
        wait_for_port(process.admin_port, proc=process.proc)
        add_user(process.data_dir, "ada", PASSWORD, "admin", phi=True)
        add_user(process.data_dir, "vic", PASSWORD, "viewer", phi=False)
        ack = mllp_client.send(process.mllp_port, orm(accession=ACCESSION).encode())
        assert mllp_client.msa(ack)[1] == "AA"
        refused = orm(accession="ACCUI2").replace("ORM^O01", "ADT^A01")
        mllp_client.send(process.mllp_port, refused.encode())
        raise_alert(process)
        yield process
    finally:
        process.stop()


ALERT = "Model ct-head gave no result within 300 s"


def raise_alert(hub: HubProcess) -> None:
    """An open alert as the AI-timeout check records it (a real timeout takes minutes)."""
    engine = create_engine(f"sqlite:///{hub.db_path}")
    try:
        with engine.begin() as conn:
            row = {"kind": "ai_timeout", "severity": "warning", "message": ALERT}
            conn.execute(insert(alerts).values(at=datetime.now(UTC), acknowledged=False, **row))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def browser(hub: HubProcess) -> Iterator[Browser]:
    with chromium() as instance:
        yield instance


@pytest.fixture(scope="module")
def base(hub: HubProcess) -> str:
    return f"http://127.0.0.1:{hub.admin_port}"


class Console:
    """Script errors and CSP violations a page reported (each one is a bug)."""

    def __init__(self, page: Page) -> None:
        self.problems: list[str] = []
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.problems.append(message.text)


@pytest.fixture(scope="module")
def admin(browser: Browser, base: str) -> Iterator[tuple[Page, Console]]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    console = Console(page)
    log_in(page, base, "ada")
    yield page, console
    context.close()
    assert not console.problems


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    if "#/" in page.url:
        page.wait_for_selector("body[data-loaded]", state="attached")
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def log_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(re.compile(r"/(#.*)?$"))


def message_id(context: BrowserContext, base: str, **filters: str) -> int:
    """The newest stored message matching ``filters`` (through the API, with the page's cookie)."""
    query = "&".join(f"{key}={value}" for key, value in filters.items())
    answer = context.request.get(f"{base}/api/messages?{query}")
    assert answer.ok, answer.text()
    items = answer.json()["items"]
    assert items, f"no stored message for {filters}"
    return int(items[0]["id"])


def test_without_a_session_the_app_redirects_to_login(browser: Browser, base: str) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{base}/")
    assert page.url == f"{base}/login"
    page.fill("#username", "ada")
    page.fill("#password", "wrong password")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_have_text("Wrong username or password.")
    page.fill("#password", "")
    shot(page, "01-login")
    context.close()


def test_login_opens_the_dashboard_with_every_channel(
    admin: tuple[Page, Console], base: str
) -> None:
    page, _ = admin
    page.goto(f"{base}/#/dashboard")
    page.wait_for_selector("text=Signed in as")
    channels = page.locator("section.panel", has_text="Channels").first
    for name in ("orders-to-worklist", "results-to-ehr", "images-to-ai"):
        expect(channels.get_by_role("link", name=name)).to_have_count(1)
    assert "ada" in page.locator("#who").inner_text()
    errors = page.locator("section.panel", has_text="Recent errors")
    expect(errors.locator("tbody tr")).to_contain_text(["ADT^A01"])
    expect(page.locator("#alert-count")).to_have_text("1")
    shot(page, "02-dashboard")


def test_message_detail_shows_stages_side_by_side_with_hl7_field_names(
    admin: tuple[Page, Console], base: str
) -> None:
    page, _ = admin
    page.goto(f"{base}/#/messages")
    page.wait_for_selector("table.grid tbody tr td a")
    shot(page, "05-messages")
    ident = message_id(page.context, base, accession=ACCESSION)
    page.get_by_role("link", name=f"#{ident}", exact=True).click()
    page.wait_for_url(f"**/#/messages/{ident}")
    stages = page.locator(".stages > .stage")
    stages.first.wait_for()
    titles = [t.strip() for t in stages.locator(".stage-head h2").all_inner_texts()]
    assert titles[:3] == ["Raw", "Transformed", "Response"]
    assert "→ worklist" in titles
    pid = page.locator('.stage[data-stage="Raw"] .seg[data-segment="PID"]')
    row = pid.locator("tr", has_text="PID-3")
    assert "Patient Identifier List" in row.inner_text()
    assert "PAT1001" in row.inner_text()
    shot(page, "06-message-detail")


def test_reprocess_from_the_message_page_confirms(admin: tuple[Page, Console], base: str) -> None:
    page, _ = admin
    ident = message_id(page.context, base, accession=ACCESSION)
    page.goto(f"{base}/#/messages/{ident}")
    page.click('[data-role="reprocess"]')
    confirmation = page.locator('[data-role="reprocess-result"] .notice')
    expect(confirmation).to_have_text("Reprocessed: 1 queue entry requeued.")


def test_reprocess_several_messages_from_the_list(admin: tuple[Page, Console], base: str) -> None:
    page, _ = admin
    page.goto(f"{base}/#/messages?channel=orders-to-worklist")
    boxes = page.locator('table.grid tbody input[type="checkbox"]')
    expect(boxes).to_have_count(2)
    for index in range(2):
        boxes.nth(index).check()
    page.click('[data-role="reprocess-selected"]')
    flash = page.locator("#flash")
    expect(flash).to_contain_text("Reprocessed 2 message(s)")
    # The rejected ADT^A01 had nothing queued: it is run through the channel again and,
    # the channel still not accepting its type, reported as failing again.
    expect(flash).to_contain_text("Failed again: #")
    expect(flash).to_contain_text("ADT^A01")


def test_test_bench_runs_the_worklist_transform_on_a_stored_message(
    admin: tuple[Page, Console], base: str
) -> None:
    page, _ = admin
    ident = message_id(page.context, base, accession=ACCESSION)
    page.goto(f"{base}/#/testbench?channel=orders-to-worklist&message_id={ident}")
    output = page.locator('[data-role="transform-output"]')
    page.wait_for_selector("text=Loaded message")
    page.click('[data-role="run"]')
    output.wait_for()
    text = output.inner_text()
    assert "AccessionNumber" in text and ACCESSION in text
    shot(page, "07-testbench")


def test_test_bench_runs_unsaved_channel_yaml_live(admin: tuple[Page, Console], base: str) -> None:
    page, _ = admin
    page.goto(f"{base}/#/testbench?channel=orders-to-worklist")
    page.locator(".editor textarea").first.fill(orm(accession="ACCUI3").replace("\r", "\n"))
    expect(page.locator('[data-role="transform-output"]')).to_contain_text("ACCUI3")
    page.get_by_label("Edit the channel YAML for this run").check()
    yaml_editor = page.get_by_role("textbox", name="Channel YAML", exact=True)
    expect(yaml_editor).to_have_value(re.compile("orm_to_mwl.j2"))
    yaml_editor.fill(yaml_editor.input_value().replace('segs("ORC")', 'segs("ZZZ")'))
    # Live: the run follows the edit without pressing Run.
    expect(page.get_by_text("Filtered: the channel would stop here.")).to_be_visible()
    page.get_by_label("Template to edit for this run").select_option("orm_to_mwl.j2")
    expect(page.get_by_role("textbox", name="Template", exact=True)).to_have_value(
        re.compile("Modality Worklist")
    )


def test_channel_editor_marks_a_validation_error_at_its_line(
    admin: tuple[Page, Console], base: str, hub: HubProcess
) -> None:
    page, _ = admin
    page.goto(f"{base}/#/channels")
    page.wait_for_selector("text=orders-to-worklist")
    shot(page, "03-channels")
    page.goto(f"{base}/#/channels/orders-to-worklist")
    editor = page.locator(".editor textarea")
    editor.wait_for()
    page.wait_for_selector("text=Valid channel file")
    on_disk = (hub.data_dir.parent / "channels" / "orders-to-worklist.yaml").read_text()
    assert editor.input_value() == on_disk
    line = next(n for n, text in enumerate(on_disk.splitlines(), 1) if "max_connections" in text)
    editor.fill(on_disk.replace("max_connections:", "max_conections:"))
    expect(page.locator(".editor-gutter div.err")).to_have_text([str(line)])
    expect(page.locator(".validation")).to_contain_text("max_conections")
    shot(page, "04-channel-editor")
    page.goto(f"{base}/#/dashboard")
    assert (hub.data_dir.parent / "channels" / "orders-to-worklist.yaml").read_text() == on_disk


@pytest.mark.parametrize(
    ("route", "name", "ready"),
    [
        ("worklist", "08-worklist", "text=Active items"),
        ("reading", "09-reading-worklist", "text=Open studies"),
        ("audit", "10-audit", "text=Events"),
        ("users", "12-users", "text=vic"),
    ],
)
def test_other_pages_render(
    admin: tuple[Page, Console], base: str, route: str, name: str, ready: str
) -> None:
    page, _ = admin
    page.goto(f"{base}/#/{route}")
    page.wait_for_selector(ready)
    assert page.locator(".page .notice-error").count() == 0
    shot(page, name)


def test_channel_pause_and_start_from_the_channel_page(
    admin: tuple[Page, Console], base: str
) -> None:
    page, _ = admin
    page.goto(f"{base}/#/channels/reports-from-ris")
    state = page.locator(".facts .badge").first
    expect(state).to_have_text("started")
    page.click('button[data-action="pause"]')
    expect(state).to_have_text("paused")
    page.click('button[data-action="start"]')
    expect(state).to_have_text("started")
    page.get_by_role("button", name="Diff against Git").click()
    expect(page.get_by_text("This file is not tracked in Git.")).to_be_visible()


def test_an_admin_creates_a_user_and_changes_the_role(
    admin: tuple[Page, Console], base: str
) -> None:
    page, _ = admin
    page.goto(f"{base}/#/users")
    form = page.locator("form", has_text="Create user")
    form.locator('input[name="username"]').fill("ann")
    form.locator('input[name="password"]').fill(PASSWORD)
    form.locator('select[name="role"]').select_option("viewer")
    form.get_by_role("button", name="Create user").click()
    row = page.locator('tr[data-user="ann"]')
    expect(row.locator("select")).to_have_value("viewer")
    row.locator("select").select_option("analyst")
    row.get_by_role("button", name="Save").click()
    expect(page.locator("#flash")).to_contain_text("Saved ann")
    page.reload()
    expect(page.locator('tr[data-user="ann"] select')).to_have_value("analyst")


def test_an_analyst_acknowledges_an_alert(admin: tuple[Page, Console], base: str) -> None:
    page, _ = admin
    page.goto(f"{base}/#/alerts")
    row = page.locator("table.grid tbody tr", has_text=ALERT)
    expect(row).to_contain_text("warning")
    shot(page, "11-alerts")
    row.locator('[data-role="acknowledge"]').click()
    expect(page.locator("table.grid tbody")).to_have_text("No open alerts.")
    page.goto(f"{base}/#/alerts?all=1")
    expect(page.locator("table.grid tbody tr", has_text=ALERT)).to_contain_text("by ada")
    expect(page.locator("#alert-count")).to_be_hidden()


def test_worklist_shows_the_order(admin: tuple[Page, Console], base: str) -> None:
    page, _ = admin
    page.goto(f"{base}/#/worklist")
    row = page.locator("table.grid tbody tr", has_text=ACCESSION)
    assert "CT" in row.inner_text()


def test_a_viewer_gets_no_write_buttons_and_no_phi(browser: Browser, base: str) -> None:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    log_in(page, base, "vic")
    ident = message_id(context, base, accession=ACCESSION)
    page.goto(f"{base}/#/messages/{ident}")
    page.wait_for_selector(".stages")
    assert page.locator('[data-role="reprocess"]').count() == 0
    expect(page.locator('.stage[data-stage="Raw"] .hidden-phi')).to_have_text(
        "hidden: no PHI access"
    )
    page.goto(f"{base}/#/messages")
    page.wait_for_selector("table.grid tbody tr")
    assert page.locator('table.grid input[type="checkbox"]').count() == 0
    assert page.locator('[data-role="reprocess-selected"]').count() == 0
    page.goto(f"{base}/#/channels")
    page.wait_for_selector("text=orders-to-worklist")
    assert page.locator("button[data-action]").count() == 0
    assert page.locator('a[data-route="users"]').is_hidden()
    context.close()


def test_an_ended_session_sends_the_page_back_to_login(browser: Browser, base: str) -> None:
    context = browser.new_context()
    page = context.new_page()
    log_in(page, base, "vic")
    page.wait_for_selector("body[data-loaded]", state="attached")
    # The session ends behind the page's back (expiry, logout in another tab, disabled user).
    csrf = context.request.get(f"{base}/api/session").json()["csrf_token"]
    assert context.request.post(f"{base}/api/logout", headers={"X-CSRF-Token": csrf}).ok
    page.click('a[data-route="messages"]')
    page.wait_for_url("**/login?expired=1*")
    expect(page.locator("#login-notice")).to_have_text(
        "Your session expired. Please sign in again."
    )
    page.fill("#username", "vic")
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(f"{base}/#/messages")
    context.close()


def test_logout_returns_to_the_login_page(browser: Browser, base: str) -> None:
    context = browser.new_context()
    page = context.new_page()
    log_in(page, base, "vic")
    page.click("#logout")
    page.wait_for_url("**/login?logged_out=1")
    page.goto(f"{base}/#/alerts")
    assert page.url == f"{base}/login#/alerts"
    page.fill("#username", "vic")
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(f"{base}/#/alerts")
    context.close()
