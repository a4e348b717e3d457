"""A real Orthanc (DICOM + REST + DICOMweb) for tests, on free ports in a temporary directory.

Typical use (one Orthanc per test module; see tests/test_dicom_send.py)::

    @pytest.fixture(scope="module")
    def orthanc(tmp_path_factory):
        with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
            yield server

    server.upload(path)                  # POST /instances
    server.sop_instance_uids()           # what it holds
    server.instance_tags(orthanc_id)     # simplified tags
    server.add_modality("AI_NODE", "AI_NODE", port)   # a C-MOVE target
    server.clear()                       # delete everything between tests

DICOM on ``server.dicom_port`` (AE title ORTHANC, any called AE accepted,
store/find/move allowed from anyone); HTTP on ``server.url``; DICOMweb at
``server.dicomweb_url`` when the plugin is installed (``has_dicomweb``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.storescp import free_port

__all__ = [
    "DICOMWEB_PLUGIN",
    "OrthancProcess",
    "orthanc_available",
    "running_orthanc",
    "start_orthanc",
]

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_available() -> bool:
    """Whether the Orthanc binary is installed (tests skip without it)."""
    return shutil.which("Orthanc") is not None


@dataclass
class OrthancProcess:
    """A running Orthanc and REST helpers bound to it."""

    process: subprocess.Popen[bytes]
    directory: Path
    http_port: int
    dicom_port: int
    aet: str
    has_dicomweb: bool
    users: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """DICOMweb root (STOW-RS is ``{dicomweb_url}/studies``)."""
        return f"{self.url}/dicom-web"

    def client(self) -> httpx.Client:
        """A REST client, authenticated as the first registered user if any."""
        auth = next(iter(self.users.items()), None)
        return httpx.Client(base_url=self.url, auth=auth, timeout=30)

    def get(self, path: str) -> Any:
        """GET ``path`` and decode its JSON."""
        with self.client() as client:
            response = client.get(path)
            response.raise_for_status()
            return response.json()

    def instances(self) -> list[str]:
        """Orthanc IDs of every stored instance."""
        ids: list[str] = self.get("/instances")
        return ids

    def instance_tags(self, orthanc_id: str) -> dict[str, Any]:
        """An instance's tags by keyword (``/instances/{id}/simplified-tags``)."""
        tags: dict[str, Any] = self.get(f"/instances/{orthanc_id}/simplified-tags")
        return tags

    def tags_by_sop_uid(self) -> dict[str, dict[str, Any]]:
        """Simplified tags of every instance, keyed by SOP Instance UID."""
        tags = (self.instance_tags(orthanc_id) for orthanc_id in self.instances())
        return {t["SOPInstanceUID"]: t for t in tags}

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every stored instance."""
        return set(self.tags_by_sop_uid())

    def upload(self, path: Path) -> str:
        """Store a Part 10 file through REST; returns its Orthanc ID."""
        with self.client() as client:
            response = client.post("/instances", content=path.read_bytes())
            response.raise_for_status()
            orthanc_id: str = response.json()["ID"]
            return orthanc_id

    def add_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        """Register a DICOM node (a C-MOVE destination) at run time."""
        with self.client() as client:
            response = client.put(
                f"/modalities/{name}", json={"AET": aet, "Host": host, "Port": port}
            )
            response.raise_for_status()

    def clear(self) -> None:
        """Delete every patient (and so every study, series, instance)."""
        with self.client() as client:
            for patient in client.get("/patients").json():
                client.delete(f"/patients/{patient}").raise_for_status()

    def stop(self, *, graceful: bool = False) -> None:
        """Stop Orthanc: killed by default (its storage is throwaway; a clean stop takes ~3 s).

        ``graceful=True`` lets it close its index, for tests restarting on the same storage.
        """
        if self.process.poll() is not None:
            return
        if graceful:
            self.process.terminate()
        else:
            self.process.kill()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _config(
    *,
    directory: Path,
    http_port: int,
    dicom_port: int,
    aet: str,
    modalities: Mapping[str, tuple[str, str, int]],
    users: Mapping[str, str],
) -> dict[str, Any]:
    storage = directory / "storage"
    config: dict[str, Any] = {
        "Name": f"meridian-test-{http_port}",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": dict(users),
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": {name: list(node) for name, node in modalities.items()},
        "DicomScuTimeout": 5,
        "StableAge": 1,
        "HttpCompressionEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    return config


def start_orthanc(
    directory: Path,
    *,
    aet: str = "ORTHANC",
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    users: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> OrthancProcess:
    """Start Orthanc with its storage in ``directory``; returns once ``/system`` answers.

    ``modalities``: ``{"name": (AET, host, port)}`` (C-MOVE targets; more can be
    added with :meth:`OrthancProcess.add_modality`). ``users``: enables HTTP
    basic authentication with these ``{username: password}``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    users = dict(users or {})
    config = _config(
        directory=directory, http_port=http_port, dicom_port=dicom_port, aet=aet,
        modalities=modalities or {}, users=users,
    )  # fmt: skip
    config_path = directory / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = directory / "orthanc.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            ["Orthanc", str(config_path)], stdout=log, stderr=subprocess.STDOUT
        )
    server = OrthancProcess(
        process, directory, http_port, dicom_port, aet, bool(config["Plugins"]), users
    )
    _wait_ready(server, log_path, timeout)
    return server


def _wait_ready(server: OrthancProcess, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {log_path.read_text(errors='replace')[-3000:]}")
        try:
            server.get("/system")
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer on {server.url} within {timeout} s")


@contextmanager
def running_orthanc(
    directory: Path,
    *,
    aet: str = "ORTHANC",
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    users: Mapping[str, str] | None = None,
) -> Iterator[OrthancProcess]:
    """:func:`start_orthanc` as a context manager (stopped on exit)."""
    server = start_orthanc(directory, aet=aet, modalities=modalities, users=users)
    try:
        yield server
    finally:
        server.stop()
