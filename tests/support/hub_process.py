"""Run a real ``meridian serve`` process for end-to-end tests, on free ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"hub exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


@dataclass
class HubProcess:
    """A running hub and where to reach it."""

    proc: subprocess.Popen[bytes]
    mllp_port: int
    dicom_port: int
    data_dir: Path
    log_path: Path
    admin_port: int = 0

    @property
    def db_path(self) -> Path:
        """The hub's SQLite file."""
        return self.data_dir / "meridian.db"

    def log(self) -> str:
        """Everything the hub wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM the hub and wait for it; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def kill_when_frozen_state(
    hub: HubProcess, observe: Callable[[], T], what: str, *, attempts: int
) -> T:
    """SIGKILL ``hub`` at a moment ``observe()`` (read while it is frozen) is truthy.

    The hub is frozen (SIGSTOP) before each look, so what ``observe`` reads is
    exactly its state at the kill; if it is not yet the wanted one, it is let go
    on briefly. Returns what ``observe`` saw; fails after ``attempts`` looks.
    """
    for _ in range(attempts):
        os.kill(hub.proc.pid, signal.SIGSTOP)
        seen = observe()
        if seen:
            os.kill(hub.proc.pid, signal.SIGKILL)
            hub.proc.wait(10)
            return seen
        os.kill(hub.proc.pid, signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError(f"the hub was never caught {what}")


# A channel's engine-level destination fields, kept when a test replaces its connector.
_ENGINE_FIELDS = {"name", "type", "enabled", "filters", "transform", "retry", "external"}

Overrides = dict[str, dict[str, Any]]


def prepare_channels(target: Path, mllp_port: int, overrides: Overrides | None = None) -> Path:
    """Copy the shipped channels into ``target`` with the MLLP port changed (HTTP: a free one).

    ``overrides`` maps a channel name to ``{"source": {...}, "destinations":
    {name: {...}}}``: fields merged into the source and the named destinations.
    A destination override with a ``type`` replaces its connector's fields.
    """
    target.mkdir(parents=True, exist_ok=True)
    for path in (REPO / "channels").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        source = data.get("source", {})
        if source.get("type") == "mllp" and data["name"] == "orders-to-worklist":
            source.update(port=mllp_port, host="127.0.0.1")
        elif source.get("type") in ("mllp", "http"):
            # Hubs of one test run must not fight over the shipped fixed port.
            source.update(port=free_port(), host="127.0.0.1")
        _apply(data, (overrides or {}).get(data["name"], {}))
        (target / path.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def _apply(channel: dict[str, Any], override: dict[str, Any]) -> None:
    channel["source"].update(override.get("source", {}))
    for destination in channel["destinations"]:
        change = override.get("destinations", {}).get(destination["name"])
        if change is None:
            continue
        if "type" in change:
            for key in [k for k in destination if k not in _ENGINE_FIELDS]:
                del destination[key]
        destination.update(change)


def start_hub(workdir: Path, overrides: Overrides | None = None) -> HubProcess:
    """Start ``meridian serve`` with the shipped channels and templates on free ports."""
    mllp_port = free_port()
    channels = prepare_channels(workdir / "channels", mllp_port, overrides)
    return spawn_serve(workdir, channels, mllp_port)


def spawn_serve(
    workdir: Path,
    channels: Path,
    mllp_port: int,
    extra_args: list[str] | None = None,
    timeout: float = 20.0,
) -> HubProcess:
    """Run ``meridian serve`` on ``channels`` (free DICOM and admin ports) and wait for it.

    Its output goes to ``workdir/hub.log``, its data to ``workdir/var``; it is ready
    when ``mllp_port`` (a port one of its channels listens on) and its DICOM port accept.
    """
    dicom_port, admin_port = free_port(), free_port()
    data_dir = workdir / "var"
    log_path = workdir / "hub.log"
    meridian = shutil.which("meridian", path=str(Path(sys.executable).parent)) or "meridian"
    command = [
        meridian,
        "serve",
        "--channels",
        str(channels),
        "--transforms",
        str(REPO / "transforms"),
        "--data",
        str(data_dir),
        "--dicom-port",
        str(dicom_port),
        "--admin-port",
        str(admin_port),
        *(extra_args or []),
    ]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    hub = HubProcess(proc, mllp_port, dicom_port, data_dir, log_path, admin_port)
    try:
        wait_for_port(mllp_port, timeout, proc=proc)
        wait_for_port(dicom_port, timeout, proc=proc)
    except Exception:
        hub.stop()
        raise RuntimeError(f"hub did not start:\n{hub.log()}") from None
    return hub
