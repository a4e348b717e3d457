"""The demo's processes: the hub, the reference AI node, the EHR stand-ins and the PACS.

As the end-to-end tests do (tests/support/hub_process.py), the shipped
channels are copied into the work folder with their ports and destinations
pointed at what the demo started on free localhost ports, and the hub runs
as a real ``meridian serve`` process with its own settings file. Everything
started is registered on an :class:`~contextlib.ExitStack`: closing it sends
SIGTERM to the AI node, the hub and the PACS together, waits for them, then
stops the EHR stand-ins.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from engine.config import load_settings_file
from engine.demo.console import Console, StepError
from engine.demo.peers import FhirReceiver, MllpReceiver
from engine.errors import ConfigError

__all__ = [
    "Pacs",
    "Site",
    "SiteOptions",
    "free_port",
    "meridian_command",
    "pacs_available",
    "start_site",
    "stop_processes",
]

HUB_AET, RESULTS_AET, AI_AET = "MERIDIAN", "MERIDIAN_AI", "AI_NODE"
#: Quiet periods of the demo (the shipped images channel waits 10 s for more instances).
QUIET_SECONDS = 1
_REQUIRED = ("orders-to-worklist", "images-to-ai", "ai-results-to-triage", "results-to-ehr")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class SiteOptions:
    """Where the shipped files are, where to work, and whether to start Orthanc."""

    channels_dir: Path
    transforms_dir: Path
    config: Path | None
    workdir: Path
    pacs: bool
    timeout: float


@dataclass
class Pacs:
    """Orthanc, started by the demo."""

    process: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int

    @property
    def url(self) -> str:
        """Orthanc Explorer and REST API."""
        return f"http://127.0.0.1:{self.http_port}/"

    def instance_count(self) -> int:
        """How many instances Orthanc holds (0 if it does not answer)."""
        try:
            stats = httpx.get(self.url + "statistics", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return 0
        return int(stats.get("CountInstances", 0))


@dataclass
class Site:
    """What is running and where to reach it."""

    workdir: Path
    hub: subprocess.Popen[bytes]
    hub_log: Path
    data_dir: Path
    orders_port: int
    dicom_port: int
    admin_port: int
    ai_port: int
    ehr_mllp: MllpReceiver
    ehr_fhir: FhirReceiver
    pacs: Pacs | None

    @property
    def db_url(self) -> str:
        """The hub's store (SQLite in the data folder)."""
        return f"sqlite:///{(self.data_dir / 'meridian.db').resolve()}"

    @property
    def admin_url(self) -> str:
        """The admin web UI."""
        return f"http://127.0.0.1:{self.admin_port}/"

    def log_tail(self, lines: int = 15) -> str:
        """The end of the hub's log (it never holds message content)."""
        text = self.hub_log.read_text(errors="replace") if self.hub_log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def meridian_command() -> list[str]:
    """How to run ``meridian`` again: the script next to this Python, else ``python -c``."""
    script = shutil.which("meridian", path=str(Path(sys.executable).parent))
    if script:
        return [script]
    return [sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main())"]


def start_site(options: SiteOptions, stack: ExitStack, console: Console) -> Site:
    """Start everything (registered on ``stack``); returns once every port answers."""
    channels = sorted(options.channels_dir.glob("*.yaml"))
    names = {yaml.safe_load(p.read_text(encoding="utf-8")).get("name") for p in channels}
    missing = [name for name in _REQUIRED if name not in names]
    if missing:
        raise ConfigError(
            f"{options.channels_dir}: shipped channel(s) {', '.join(missing)} not found;"
            " run the demo from the repository root or give --channels"
        )
    workdir = options.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    ehr_mllp = MllpReceiver()
    stack.callback(ehr_mllp.stop)
    ehr_fhir = FhirReceiver()
    stack.callback(ehr_fhir.stop)
    # One callback for every process: they get SIGTERM together, then are waited for.
    processes: list[subprocess.Popen[bytes]] = []
    stack.callback(stop_processes, processes)
    pacs = _start_pacs(workdir / "orthanc", processes) if options.pacs else None

    ports = {"orders": free_port(), "dicom": free_port(), "admin": free_port(), "ai": free_port()}
    routes = _routes(ports["ai"], ehr_mllp, ehr_fhir, pacs)
    channels_dir = workdir / "channels"
    channels_dir.mkdir(exist_ok=True)
    for path in channels:
        data = _channel_copy(path, ports["orders"], routes)
        (channels_dir / path.name).write_text(yaml.safe_dump(data, sort_keys=False))
    settings = workdir / "meridian.yaml"
    settings.write_text(yaml.safe_dump(_settings(options.config, ports), sort_keys=False))

    hub_log = workdir / "hub.log"
    data_dir = workdir / "var"
    hub = _spawn(
        [*meridian_command(), "serve", "--config", str(settings), "--channels",
         str(channels_dir), "--transforms", str(options.transforms_dir), "--data", str(data_dir)],
        hub_log, processes,
    )  # fmt: skip
    ai_node = _spawn(
        [*meridian_command(), "ai-node", "--port", str(ports["ai"]), "--bind", "127.0.0.1",
         "--results-port", str(ports["dicom"]), "--results-ae", RESULTS_AET,
         "--quiet-seconds", str(QUIET_SECONDS)],
        workdir / "ai-node.log", processes,
    )  # fmt: skip
    site = Site(workdir, hub, hub_log, data_dir, ports["orders"], ports["dicom"],
                ports["admin"], ports["ai"], ehr_mllp, ehr_fhir, pacs)  # fmt: skip

    def ready() -> bool:
        for name, process in (("hub", hub), ("AI node", ai_node)):
            if process.poll() is not None:
                raise StepError(f"the {name} exited with code {process.returncode}:\n"
                                 f"{site.log_tail() if name == 'hub' else ''}")  # fmt: skip
        pacs_ports = [pacs.http_port, pacs.dicom_port] if pacs else []
        return all(_listening(port) for port in [*ports.values(), *pacs_ports])

    console.wait("the hub and the AI node to listen", ready, options.timeout)
    return site


def _routes(
    ai_port: int, ehr_mllp: MllpReceiver, ehr_fhir: FhirReceiver, pacs: Pacs | None
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per channel, per destination: the fields the demo changes."""
    fast = {"initial_backoff_seconds": 0.5, "max_backoff_seconds": 2}
    to_pacs: dict[str, Any] = {"enabled": False}
    if pacs is not None:
        to_pacs = {"port": pacs.dicom_port, "retry": fast}
    return {
        "images-to-ai": {
            "pacs": to_pacs,
            "ai-ct-head": {"host": "127.0.0.1", "port": ai_port, "ae_title": AI_AET, "retry": fast},
            "ai-external-chest": {"enabled": False},  # an outside service: not in a demo
        },
        "ai-results-to-triage": {"pacs": to_pacs},
        "results-to-ehr": {
            "ehr-oru": {"host": "127.0.0.1", "port": ehr_mllp.port, "retry": fast},
            "ehr-fhir": {"base_url": ehr_fhir.url, "retry": fast},
        },
        "mpps-to-ehr": {"ehr-order-status": {"host": "127.0.0.1", "port": ehr_mllp.port}},
    }


def _channel_copy(
    path: Path, orders_port: int, routes: dict[str, dict[str, dict[str, Any]]]
) -> dict[str, Any]:
    """A shipped channel with the demo's ports, quiet periods and destinations."""
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    source = data.setdefault("source", {})
    if data.get("name") == "orders-to-worklist":
        source.update(host="127.0.0.1", port=orders_port)
    elif source.get("type") in ("mllp", "http"):
        source.update(host="127.0.0.1", port=free_port())  # never the shipped fixed ports
    if source.get("type") == "dicom":
        source["quiet_period_seconds"] = QUIET_SECONDS
    changes = routes.get(str(data.get("name")), {})
    for destination in data.get("destinations") or []:
        destination.update(changes.get(destination.get("name"), {}))
    return data


def _settings(config: Path | None, ports: dict[str, int]) -> dict[str, Any]:
    """The hub's settings: the reading worklist of ``config``, local plain listeners."""
    base = load_settings_file(config)
    settings: dict[str, Any] = {
        "dicom": {"ae_title": HUB_AET, "port": ports["dicom"]},
        "admin": {"host": "127.0.0.1", "port": ports["admin"]},
        "alerts": {"notifiers": [{"type": "log"}]},
        "ai_timeout_check_seconds": 5,
    }
    if "reading_worklist" in base:
        settings["reading_worklist"] = base["reading_worklist"]
    return settings


def _spawn(
    command: list[str], log_path: Path, processes: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    processes.append(process)
    return process


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    """SIGTERM to each (the last started first), wait; SIGKILL what did not stop in time."""
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in reversed(processes):
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _start_pacs(directory: Path, processes: list[subprocess.Popen[bytes]]) -> Pacs:
    """Orthanc with its storage in ``directory`` (AE ORTHANC, no authentication, localhost)."""
    directory.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "meridian-demo-pacs",
        "StorageDirectory": str(directory / "storage"),
        "IndexDirectory": str(directory / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
    }
    (directory / "orthanc.json").write_text(json.dumps(config, indent=2))
    process = _spawn(
        ["Orthanc", str(directory / "orthanc.json")], directory / "orthanc.log", processes
    )
    return Pacs(process, http_port, dicom_port)


def pacs_available() -> bool:
    """Whether Orthanc is installed."""
    return shutil.which("Orthanc") is not None
