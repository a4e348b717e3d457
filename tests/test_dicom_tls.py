"""DICOM over TLS against real peers: dcmtk findscu/storescp and pynetdicom.

The hub's listener (MWL SCP) serves TLS only when configured; its C-STORE SCU
associates over TLS with a ``tls:`` client block. Certificates are throw-away
self-signed ones (each is its own CA).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread
from pynetdicom import AE

from connectors.dicom_mwl import VERIFICATION, DicomListenerConfig, MWLServer
from connectors.dicom_send import DicomSendConfig, DicomSendDestination
from connectors.dicom_tls import tls_args
from connectors.prefetch import PrefetchConfig, PrefetchDestination
from connectors.tls_config import ClientTLSConfig
from engine.config import validate_settings
from engine.errors import ConfigError, PermanentError, RecoverableError
from engine.worklist import WorklistStore
from tests.support.batches import batch_json
from tests.support.dicom_files import write_study
from tests.support.hub_process import REPO, free_port, prepare_channels, wait_for_port
from tests.support.mllp_client import msa, send
from tests.support.orders import orm
from tests.support.storescp import StoreSCP
from tests.support.tls import self_signed_certificate
from tests.test_mwl_scp import ORDERS, _engine, _populate

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("findscu") is None, reason="dcmtk not installed"),
]

HOST = "127.0.0.1"


class Certs:
    """The server's certificate/key and a client's (for mutual TLS)."""

    def __init__(self, folder: Path) -> None:
        (folder / "server").mkdir()
        (folder / "client").mkdir()
        self.server_cert, self.server_key = self_signed_certificate(folder / "server")
        self.client_cert, self.client_key = self_signed_certificate(folder / "client")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[WorklistStore]:
    engine = _engine(tmp_path / "mwl.db")
    store = WorklistStore(engine)
    _populate(store, engine, ORDERS)
    yield store
    engine.dispose()


def _listener(store: WorklistStore, certs: Certs, **tls: Any) -> MWLServer:
    config = DicomListenerConfig.model_validate(
        {
            "host": HOST,
            "port": 0,
            "acse_timeout": 5,
            "tls": {"certfile": str(certs.server_cert), "keyfile": str(certs.server_key), **tls},
        }
    )
    return MWLServer(config, store)


@pytest.fixture
def mutual_tls_server(store: WorklistStore, certs: Certs) -> Iterator[MWLServer]:
    """The listener requiring a client certificate signed by the client's (self-signed) CA."""
    server = _listener(store, certs, cafile=str(certs.client_cert), require_client_cert=True)
    server.start()
    yield server
    server.stop()


def findscu(port: int, out: Path, *tls: str) -> subprocess.CompletedProcess[bytes]:
    """dcmtk findscu -W for every CT step; ``tls`` are its TLS options (none: plain TCP)."""
    out.mkdir(parents=True, exist_ok=True)
    command = ["findscu", "-W", "-aet", "MODALITY1", "-aec", "MERIDIAN", *tls, "-X", "-od"]
    command += [str(out), "-k", "ScheduledProcedureStepSequence[0].Modality=CT"]
    command += ["-k", "PatientID", HOST, str(port)]
    return subprocess.run(command, capture_output=True, timeout=30, check=False)


def _client_tls(certs: Certs) -> list[str]:
    """findscu's options: our key and certificate, and trust the server's certificate."""
    return ["+tls", str(certs.client_key), str(certs.client_cert), "+cf", str(certs.server_cert)]


def _patient_ids(out: Path) -> set[str]:
    return {str(dcmread(path).PatientID) for path in out.glob("*.dcm")}


def test_findscu_over_mutual_tls_gets_the_worklist(
    mutual_tls_server: MWLServer, certs: Certs, tmp_path: Path
) -> None:
    result = findscu(mutual_tls_server.bound_port, tmp_path / "out", *_client_tls(certs))
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert _patient_ids(tmp_path / "out") == {"P1", "P2", "P4"}


def test_plain_connection_to_the_tls_listener_fails(
    mutual_tls_server: MWLServer, certs: Certs, tmp_path: Path
) -> None:
    plain = findscu(mutual_tls_server.bound_port, tmp_path / "plain")
    assert plain.returncode != 0
    assert not list((tmp_path / "plain").glob("*.dcm"))
    # The listener is still up for TLS clients.
    secure = findscu(mutual_tls_server.bound_port, tmp_path / "tls", *_client_tls(certs))
    assert secure.returncode == 0


def test_client_without_certificate_is_refused_when_one_is_required(
    mutual_tls_server: MWLServer, certs: Certs, tmp_path: Path
) -> None:
    anonymous = ["+tla", "+cf", str(certs.server_cert)]  # TLS, but no client certificate
    result = findscu(mutual_tls_server.bound_port, tmp_path / "out", *anonymous)
    assert result.returncode != 0
    assert not list((tmp_path / "out").glob("*.dcm"))


def test_client_that_does_not_trust_the_server_fails(
    mutual_tls_server: MWLServer, certs: Certs, tmp_path: Path
) -> None:
    # Trusting the client's own certificate instead of the server's: verification fails.
    wrong_ca = ["+tls", str(certs.client_key), str(certs.client_cert)]
    wrong_ca += ["+cf", str(certs.client_cert)]
    result = findscu(mutual_tls_server.bound_port, tmp_path / "out", *wrong_ca)
    assert result.returncode != 0


def test_silent_client_does_not_block_other_handshakes(
    mutual_tls_server: MWLServer, certs: Certs, tmp_path: Path
) -> None:
    """A peer that connects and never starts the handshake stalls only its own thread."""
    with socket.create_connection((HOST, mutual_tls_server.bound_port)):
        result = findscu(mutual_tls_server.bound_port, tmp_path / "out", *_client_tls(certs))
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert _patient_ids(tmp_path / "out") == {"P1", "P2", "P4"}


def test_pynetdicom_echo_with_server_verification_only(store: WorklistStore, certs: Certs) -> None:
    server = _listener(store, certs)  # no client certificates asked for
    server.start()
    try:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(VERIFICATION)
        client = ClientTLSConfig(cafile=str(certs.server_cert), server_hostname="localhost")
        assoc = ae.associate(
            HOST, server.bound_port, ae_title="MERIDIAN", tls_args=tls_args(client, HOST)
        )
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        server.stop()


# -- the hub's C-STORE SCU to a TLS storescp ------------------------------------------------


@pytest.fixture
def tls_storescp(tmp_path: Path, certs: Certs) -> Iterator[StoreSCP]:
    """dcmtk storescp over TLS, requiring our client certificate."""
    args = ["+tls", str(certs.server_key), str(certs.server_cert), "+cf", str(certs.client_cert)]
    with StoreSCP(tmp_path / "pacs", aet="TLS_PACS", extra_args=args) as scp:
        yield scp


def _sender(port: int, tls: ClientTLSConfig | None) -> DicomSendDestination:
    config = DicomSendConfig(
        type="dicom", host=HOST, port=port, ae_title="TLS_PACS", timeout_seconds=10, tls=tls
    )
    return DicomSendDestination(config)


def test_c_store_scu_over_mutual_tls(tmp_path: Path, certs: Certs, tls_storescp: StoreSCP) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=3)
    tls = ClientTLSConfig(
        cafile=str(certs.server_cert),
        certfile=str(certs.client_cert),
        keyfile=str(certs.client_key),
    )
    delivery = asyncio.run(_sender(tls_storescp.port, tls).send(batch_json(study.paths)))
    assert delivery.response == "stored 3 instances"
    assert "(TLS)" in delivery.detail
    assert tls_storescp.received_sop_uids() == set(study.sop_uids)


def test_c_store_scu_refuses_an_untrusted_server(
    tmp_path: Path, certs: Certs, tls_storescp: StoreSCP
) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=1)
    untrusting = ClientTLSConfig(
        cafile=str(certs.client_cert),  # not the server's issuer
        certfile=str(certs.client_cert),
        keyfile=str(certs.client_key),
    )
    with pytest.raises(RecoverableError):
        asyncio.run(_sender(tls_storescp.port, untrusting).send(batch_json(study.paths)))
    assert tls_storescp.received_sop_uids() == set()


def test_plain_c_store_to_a_tls_peer_fails(tmp_path: Path, tls_storescp: StoreSCP) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=1)
    with pytest.raises(RecoverableError):
        asyncio.run(_sender(tls_storescp.port, None).send(batch_json(study.paths)))


# -- configuration ----------------------------------------------------------------------------


def test_hub_settings_take_the_dicom_tls_block(certs: Certs) -> None:
    tls = {"certfile": "c.pem", "keyfile": "k.pem", "cafile": "ca.pem", "require_client_cert": True}
    settings = validate_settings({"dicom": {"tls": tls}})
    assert settings.dicom.tls is not None and settings.dicom.tls.require_client_cert
    with pytest.raises(ConfigError, match="cafile"):
        validate_settings({"dicom": {"tls": {**tls, "cafile": None}}})


def test_missing_certificate_files_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DICOM"):
        DicomSendDestination(
            DicomSendConfig(
                type="dicom",
                host=HOST,
                port=104,
                ae_title="PACS",
                tls=ClientTLSConfig(cafile=str(tmp_path / "missing.pem")),
            )
        )


# -- a real hub configured from its settings file -------------------------------------------


def test_hub_serves_the_worklist_over_tls_from_its_settings_file(
    tmp_path: Path, certs: Certs
) -> None:
    """``dicom: tls:`` in the hub settings: findscu over TLS gets the order, plain TCP fails."""
    mllp_port, dicom_port, admin_port = free_port(), free_port(), free_port()
    channels = prepare_channels(tmp_path / "channels", mllp_port)
    tls = {
        "certfile": str(certs.server_cert),
        "keyfile": str(certs.server_key),
        "cafile": str(certs.client_cert),
        "require_client_cert": True,
    }
    settings = tmp_path / "meridian.yaml"
    settings.write_text(yaml.safe_dump({"dicom": {"tls": tls, "acse_timeout": 5}}))
    meridian = shutil.which("meridian", path=str(Path(sys.executable).parent)) or "meridian"
    command = [
        meridian, "serve", "--config", str(settings), "--channels", str(channels),
        "--transforms", str(REPO / "transforms"), "--data", str(tmp_path / "var"),
        "--dicom-port", str(dicom_port), "--admin-port", str(admin_port),
    ]  # fmt: skip
    with (tmp_path / "hub.log").open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(mllp_port, proc=proc)
        wait_for_port(dicom_port, proc=proc)
        ack = send(mllp_port, orm(patient_id="TLS1", name="TLS^PATIENT").encode())
        assert msa(ack)[1] == "AA"
        found: set[str] = set()
        for attempt in range(50):  # the order reaches the worklist asynchronously
            out = tmp_path / f"tls{attempt}"
            result = findscu(dicom_port, out, *_client_tls(certs))
            assert result.returncode == 0, result.stderr.decode(errors="replace")
            found = _patient_ids(out)
            if found:
                break
            time.sleep(0.2)
        assert found == {"TLS1"}
        plain = findscu(dicom_port, tmp_path / "plain")
        assert plain.returncode != 0
        assert not list((tmp_path / "plain").glob("*.dcm"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log = (tmp_path / "hub.log").read_text(errors="replace")
    assert "tls=True" in log and "DICOM TLS handshake with 127.0.0.1 failed" in log


# -- prefetch (C-FIND/C-MOVE SCU) shares the TLS association code ---------------------------


def _prefetch(port: int, tls: ClientTLSConfig | None) -> PrefetchDestination:
    config = PrefetchConfig(
        type="prefetch", host=HOST, port=port, ae_title="MERIDIAN",
        move_destination="WORKSTATION", timeout_seconds=5, tls=tls,
    )  # fmt: skip
    return PrefetchDestination(config)


ORDER = json.dumps(
    {
        "action": "create",
        "key": "RIS|1",
        "attributes": {"PatientID": "P1", "ScheduledProcedureStepSequence": [{"Modality": "CT"}]},
    }
)


def test_prefetch_associates_over_tls(mutual_tls_server: MWLServer, certs: Certs) -> None:
    """Our listener is no PACS: over TLS the association is negotiated and the study-root
    contexts refused (permanent); without TLS it never gets that far (recoverable)."""
    tls = ClientTLSConfig(
        cafile=str(certs.server_cert),
        certfile=str(certs.client_cert),
        keyfile=str(certs.client_key),
    )
    port = mutual_tls_server.bound_port
    with pytest.raises(PermanentError, match="accepted none of the proposed SOP classes"):
        asyncio.run(_prefetch(port, tls).send(ORDER))
    with pytest.raises(RecoverableError):
        asyncio.run(_prefetch(port, None).send(ORDER))
