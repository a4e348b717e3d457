"""``meridian demo``: start the site, run the steps, show where to look, stop everything.

Exit status 0 when every step succeeded, 1 when one failed or timed out (its
reason and the end of the hub's log are printed, and the work folder is
kept), 130 after Ctrl-C and 143 after SIGTERM. Every process started is
stopped on the way out, whatever happened.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

import httpx

from engine.demo.console import Console, StepError
from engine.demo.site import Site, SiteOptions, pacs_available, start_site
from engine.demo.steps import (
    Run,
    ai_result,
    find_worklist,
    report_to_ehr,
    routing,
    send_orders,
    store_studies,
)
from engine.demo.synthetic import demo_orders
from engine.errors import ConfigError

__all__ = ["run_demo"]

Step = Callable[[Run, Console], None]


class _TerminatedError(Exception):
    """SIGTERM: unwind like Ctrl-C so that every process is stopped."""


def _steps(run: Run) -> list[tuple[str, Step]]:
    orders = len(run.orders)
    return [
        (f"Sending {orders} ORM^O01 orders over MLLP to port {run.site.orders_port}", send_orders),
        ("C-FIND on the Modality Worklist, as the CT scanner would", find_worklist),
        (f"Storing a synthetic CT head ({run.slices} slices) and a STAT CT chest with C-STORE",
         store_studies),
        ("Study assembled, normalized and routed (from the audit trail)", routing),
        ("AI result back: findings, model, reading worklist re-prioritized", ai_result),
        ("Report to the EHR: ORU^R01 over MLLP and FHIR R4", report_to_ehr),
        ("Where to look", where_to_look),
    ]  # fmt: skip


def run_demo(args: argparse.Namespace) -> int:
    """The command; see the module docstring for the exit status."""
    options = _options(args)
    for name in ("pynetdicom", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)  # the demo prints what matters
    console = Console(total=7)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    keep_folder = args.data is not None
    started: list[Site] = []
    code = 0
    try:
        with ExitStack() as stack:
            console.say(f"Meridian demo: everything runs on this machine, in {options.workdir}")
            console.say("(all patients, orders and images are synthetic)")
            pacs = "Orthanc as the PACS" if options.pacs else "no PACS (--no-pacs or no Orthanc)"
            console.detail(f"starting the hub, the reference AI node, the EHR stand-ins, {pacs}")
            started.append(start_site(options, stack, console))
            code = _run_steps(started[0], options, args, console, stack)
    except StepError as exc:
        code, keep_folder = 1, True
        _report_failure(console, exc, started[0] if started else None, options.workdir)
    except KeyboardInterrupt:
        code = 130
        console.say("\ninterrupted: every process is stopped")
    except _TerminatedError:
        code = 143
        console.say("\nterminated: every process is stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not keep_folder:
            shutil.rmtree(options.workdir, ignore_errors=True)
    return code


def _report_failure(console: Console, exc: StepError, site: Site | None, workdir: Path) -> None:
    """The reason (a failed step has printed its own), the end of the hub's log, the folder."""
    if console.number == 0:
        console.say(f"FAILED while starting: {exc}")
    if site is not None and site.log_tail():
        console.say("The hub's log ends with:")
        for line in site.log_tail().splitlines():
            console.detail(line)
    console.say(f"The demo failed; its work folder is kept: {workdir} (hub.log, ai-node.log)")


def _options(args: argparse.Namespace) -> SiteOptions:
    channels = args.channels.resolve()
    if not channels.is_dir():
        raise ConfigError(f"no channels folder {args.channels}: run the demo from the "
                          "repository root or give --channels")  # fmt: skip
    config = args.config
    if config is None and (channels.parent / "meridian.yaml").is_file():
        config = channels.parent / "meridian.yaml"
    if not 6 <= args.slices <= 64:
        raise ConfigError("--slices: between 6 and 64")
    workdir = args.data.resolve() if args.data else Path(tempfile.mkdtemp(prefix="meridian-demo-"))
    return SiteOptions(
        channels_dir=channels,
        transforms_dir=(args.transforms or channels.parent / "transforms").resolve(),
        config=config,
        workdir=workdir,
        pacs=not args.no_pacs and pacs_available(),
        timeout=args.timeout,
    )


def _run_steps(
    site: Site, options: SiteOptions, args: argparse.Namespace, console: Console, stack: ExitStack
) -> int:
    from engine.store.db import open_engine

    store = open_engine(site.db_url, create_schema=False)
    stack.callback(store.dispose)
    tag = f"{int(time.time()) % 1_000_000:06d}"
    run = Run(site, store, demo_orders(tag), tag, options.timeout, args.slices,
              keep_folder=args.data is not None)  # fmt: skip
    started = time.monotonic()
    for title, step in _steps(run):
        console.say()
        with console.step(title):
            step(run, console)
    console.say(f"\nAll 7 steps succeeded in {time.monotonic() - started:.1f} s.")
    if args.keep:
        console.say("The site keeps running (--keep): explore the admin UI; Ctrl-C stops it.")
        while site.hub.poll() is None:
            time.sleep(0.5)
        console.say(f"the hub stopped by itself (exit code {site.hub.returncode})")
        return 1
    return 0


def where_to_look(run: Run, console: Console) -> None:
    """[7] An admin user, the admin UI, message counts per channel, the PACS, the files."""
    site = run.site
    username, password = _admin_user(run)
    with httpx.Client(base_url=site.admin_url, timeout=run.timeout) as client:
        login = client.post("/api/login", json={"username": username, "password": password})
        if login.status_code != 200:
            raise StepError(f"cannot sign in to the admin API: HTTP {login.status_code}")
        channels = client.get("/api/channels").json()
    console.detail(f"admin UI   {site.admin_url}  user {username}  password {password}")
    console.detail("messages per channel (admin API /api/channels):")
    rows = [(c["name"], c.get("state", "-"), sum(c["counts"].values()),
             ", ".join(f"{status} {n}" for status, n in sorted(c["counts"].items())) or "-")
            for c in channels]  # fmt: skip
    console.table(("channel", "state", "messages", "by status"), rows)
    if site.pacs is not None:
        expected = run.slices + 3 + 2  # both studies' images, the AI's SR and GSPS
        deadline = time.monotonic() + 10
        while site.pacs.instance_count() < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        count = site.pacs.instance_count()
        console.detail(f"PACS       {site.pacs.url} (Orthanc Explorer): {count} instances")
    var = site.data_dir
    console.detail(f"audit      meridian audit --data {var} --accession {run.head.accession}")
    console.detail(f"worklist   meridian reading-worklist --data {var}")
    console.detail(f"logs       {site.workdir}/hub.log, {site.workdir}/ai-node.log")
    if not run.keep_folder:
        console.detail("(the work folder is removed when the demo ends; --data DIR keeps it)")


def _admin_user(run: Run) -> tuple[str, str]:
    """A new admin user with a random password: ``demo``, else ``demo-<tag>`` if taken."""
    from admin.users import add_user, ensure_tables

    password = secrets.token_urlsafe(12)
    ensure_tables(run.store)
    for username in ("demo", f"demo-{run.tag}"):
        try:
            add_user(run.store, username, password, "admin", True)
        except ConfigError:
            continue
        return username, password
    raise StepError("cannot create a demo admin user")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _TerminatedError
