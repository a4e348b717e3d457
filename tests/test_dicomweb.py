"""STOW-RS destination against Orthanc's DICOMweb plugin and a scripted HTTP server."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydicom import Dataset

from connectors.base import Delivery
from connectors.dicom_send import PrepareInstance
from connectors.dicomweb import DicomWebConfig, DicomWebDestination
from engine.errors import PermanentError, RecoverableError
from tests.support.batches import batch_json, batch_json_unchecked
from tests.support.dicom_files import write_study
from tests.support.orthanc import OrthancProcess, orthanc_available, running_orthanc
from tests.support.storescp import free_port

USERS = {"meridian": "s3cret"}


def run(coro: Coroutine[Any, Any, Delivery]) -> Delivery:
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def destination(
    url: str, *, auth: dict[str, str] | None = None, prepare: PrepareInstance | None = None
) -> DicomWebDestination:
    config = DicomWebConfig.model_validate(
        {"type": "dicomweb", "url": url, "auth": auth or {"type": "none"}, "timeout_seconds": 10}
    )
    return DicomWebDestination(config, prepare_instance=prepare)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    if not orthanc_available():
        pytest.skip("Orthanc is not installed")
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        if not server.has_dicomweb:
            pytest.skip("Orthanc's DICOMweb plugin is not installed")
        yield server


@pytest.fixture(scope="module")
def secured_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    if not orthanc_available():
        pytest.skip("Orthanc is not installed")
    with running_orthanc(tmp_path_factory.mktemp("secured"), users=USERS) as server:
        if not server.has_dicomweb:
            pytest.skip("Orthanc's DICOMweb plugin is not installed")
        yield server


# -- Orthanc ------------------------------------------------------------------------------


def test_stow_stores_the_study(tmp_path: Path, orthanc: OrthancProcess) -> None:
    orthanc.clear()
    study = write_study(tmp_path / "study", series=2, per_series=3)
    delivery = run(destination(orthanc.dicomweb_url).send(batch_json(study.paths)))
    assert delivery.response == "stored 6 instances"
    assert orthanc.sop_instance_uids() == set(study.sop_uids)


def test_stow_applies_prepare_instance(tmp_path: Path, orthanc: OrthancProcess) -> None:
    orthanc.clear()
    study = write_study(tmp_path / "study", series=1, per_series=2)

    def prepare(ds: Dataset) -> Dataset:
        ds.StudyDescription = "PREPARED BY MERIDIAN"
        return ds

    run(destination(orthanc.dicomweb_url, prepare=prepare).send(batch_json(study.paths)))
    tags = orthanc.tags_by_sop_uid()
    assert set(tags) == set(study.sop_uids)
    assert {t["StudyDescription"] for t in tags.values()} == {"PREPARED BY MERIDIAN"}


def test_stow_with_basic_auth(tmp_path: Path, secured_orthanc: OrthancProcess) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=2)
    auth = {"type": "basic", "username": "meridian", "password": "s3cret"}
    delivery = run(
        destination(secured_orthanc.dicomweb_url, auth=auth).send(batch_json(study.paths))
    )
    assert delivery.response == "stored 2 instances"
    assert set(study.sop_uids) <= secured_orthanc.sop_instance_uids()


def test_wrong_credentials_are_permanent(tmp_path: Path, secured_orthanc: OrthancProcess) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=1)
    auth = {"type": "basic", "username": "meridian", "password": "wrong"}
    with pytest.raises(PermanentError, match="HTTP 401") as caught:
        run(destination(secured_orthanc.dicomweb_url, auth=auth).send(batch_json(study.paths)))
    assert "wrong" not in str(caught.value)


def test_not_dicom_is_refused_permanently(tmp_path: Path, orthanc: OrthancProcess) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=1)
    study.paths[0].write_bytes(b"not a DICOM file" * 8)
    payload = batch_json_unchecked(study.sop_uids, study.paths)
    with pytest.raises(PermanentError, match="HTTP 400"):
        run(destination(orthanc.dicomweb_url).send(payload))


def test_missing_file_is_permanent_and_names_the_instance(
    tmp_path: Path, orthanc: OrthancProcess
) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=2)
    payload = batch_json(study.paths)
    study.paths[1].unlink()
    with pytest.raises(PermanentError, match=f"cannot read instance {study.sop_uids[1]}"):
        run(destination(orthanc.dicomweb_url).send(payload))


def test_unknown_path_is_permanent(tmp_path: Path, orthanc: OrthancProcess) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=1)
    with pytest.raises(PermanentError, match="HTTP 404"):
        run(destination(f"{orthanc.url}/no-such-root").send(batch_json(study.paths)))


def test_server_down_is_recoverable(tmp_path: Path) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=1)
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(RecoverableError, match="ConnectError"):
        run(destination(url).send(batch_json(study.paths)))


# -- a scripted STOW-RS server: statuses and responses Orthanc does not produce --------------


class Scripted:
    """An HTTP server answering every POST with ``status`` and ``body``; records requests."""

    def __init__(self, status: int, body: object = None) -> None:
        self.status = status
        self.body = body
        self.requests: list[tuple[dict[str, str], bytes]] = []
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                script.requests.append((dict(self.headers), _read_body(self)))
                payload = b"" if script.body is None else json.dumps(script.body).encode()
                self.send_response(script.status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/dicom-web"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, chunked (as httpx streams it) or with a Content-Length."""
    if handler.headers.get("Transfer-Encoding", "").lower() != "chunked":
        return handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
    body = b""
    while size := int(handler.rfile.readline().strip(), 16):
        body += handler.rfile.read(size)
        handler.rfile.readline()
    handler.rfile.readline()
    return body


@pytest.fixture
def study_payload(tmp_path: Path) -> tuple[str, list[str]]:
    study = write_study(tmp_path / "study", series=1, per_series=2)
    return batch_json(study.paths), study.sop_uids


def failed(uid: str, reason: int) -> dict[str, Any]:
    return {
        "00081155": {"vr": "UI", "Value": [uid]},
        "00081197": {"vr": "US", "Value": [reason]},
    }


def referenced(uid: str) -> dict[str, Any]:
    return {"00081155": {"vr": "UI", "Value": [uid]}}


def scripted_send(status: int, body: object, payload: str) -> tuple[Scripted, Delivery]:
    server = Scripted(status, body)
    try:
        return server, run(destination(server.url).send(payload))
    finally:
        server.close()


def test_request_is_multipart_related_with_every_instance(
    study_payload: tuple[str, list[str]],
) -> None:
    payload, uids = study_payload
    body = {"00081199": {"vr": "SQ", "Value": [referenced(uid) for uid in uids]}}
    server, delivery = scripted_send(200, body, payload)
    assert delivery.response == "stored 2 instances"
    headers, raw = server.requests[0]
    content_type = headers["Content-Type"]
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    boundary = content_type.rsplit("boundary=", 1)[1].encode()
    parts = raw.split(b"--" + boundary)
    assert parts[-1] == b"--\r\n"
    assert len(parts) == 4  # preamble, two instances, closing
    assert headers["Accept"] == "application/dicom+json"


@pytest.mark.parametrize("status", [500, 503, 429, 408])
def test_busy_or_broken_server_is_recoverable(
    status: int, study_payload: tuple[str, list[str]]
) -> None:
    with pytest.raises(RecoverableError, match=f"HTTP {status}"):
        scripted_send(status, None, study_payload[0])


def test_conflict_is_permanent_and_names_failures(study_payload: tuple[str, list[str]]) -> None:
    payload, uids = study_payload
    body = {"00081198": {"vr": "SQ", "Value": [failed(uid, 0xA900) for uid in uids]}}
    with pytest.raises(PermanentError, match=f"HTTP 409; {uids[0]} \\(reason 0xA900\\)"):
        scripted_send(409, body, payload)


def test_partial_failure_is_permanent(study_payload: tuple[str, list[str]]) -> None:
    payload, uids = study_payload
    body = {
        "00081199": {"vr": "SQ", "Value": [referenced(uids[0])]},
        "00081198": {"vr": "SQ", "Value": [failed(uids[1], 0xC000)]},
    }
    with pytest.raises(PermanentError, match=f"1 of 2 instances failed: {uids[1]}"):
        scripted_send(202, body, payload)


def test_out_of_resources_failures_are_recoverable(study_payload: tuple[str, list[str]]) -> None:
    payload, uids = study_payload
    body = {"00081198": {"vr": "SQ", "Value": [failed(uid, 0xA700) for uid in uids]}}
    with pytest.raises(RecoverableError, match="0xA700"):
        scripted_send(202, body, payload)


def test_empty_200_counts_the_batch_as_stored(study_payload: tuple[str, list[str]]) -> None:
    _, delivery = scripted_send(200, None, study_payload[0])
    assert delivery.response == "stored 2 instances"


def test_bearer_token_is_sent(study_payload: tuple[str, list[str]]) -> None:
    server = Scripted(200, None)
    try:
        auth = {"type": "bearer", "token": "tok-123"}
        run(destination(server.url, auth=auth).send(study_payload[0]))
    finally:
        server.close()
    assert server.requests[0][0]["Authorization"] == "Bearer tok-123"


# -- configuration --------------------------------------------------------------------------


def test_config_rejects_non_http_urls_and_missing_ca_bundles(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="http"):
        DicomWebConfig.model_validate({"type": "dicomweb", "url": "ftp://pacs/dicom-web"})
    with pytest.raises(ValidationError, match="CA bundle"):
        DicomWebConfig.model_validate(
            {"type": "dicomweb", "url": "https://pacs", "verify_tls": str(tmp_path / "no.pem")}
        )


def test_config_hides_secrets() -> None:
    config = DicomWebConfig.model_validate(
        {
            "type": "dicomweb",
            "url": "https://pacs/dicom-web/",
            "auth": {"type": "basic", "username": "u", "password": "hunter2"},
        }
    )
    assert config.url == "https://pacs/dicom-web"
    assert "hunter2" not in repr(config)
