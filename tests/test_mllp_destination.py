"""The MLLP destination against real receivers on localhost (tests/support/mllp_receivers.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pydantic
import pytest

from connectors.mllp_destination import MLLPDestination, MLLPDestinationConfig
from engine.errors import PermanentError, RecoverableError
from tests.support.mllp_receivers import (
    AckReceiver,
    BadAckReceiver,
    NakReceiver,
    Receiver,
    SilentReceiver,
)
from tests.support.tls import self_signed_certificate

LOCALHOST = "127.0.0.1"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Each test runs its own event loop, bounded so a hang fails instead of stalling."""
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def oru(control_id: str, name: str = "DOE^JANE", charset: str = "UNICODE UTF-8") -> str:
    return (
        f"MSH|^~\\&|MERIDIAN|MERIDIAN|EHR|HOSP|20240101120000||ORU^R01^ORU_R01|{control_id}|P|"
        f"2.5.1||||||{charset}\r"
        f"PID|1||MRN1^^^HOSP^MR||{name}\r"
        "OBR|1|PLC1|FIL1|CTHEAD^CT HEAD^L|||||||||||||||ACC1||||20240101120000|||F\r"
        "OBX|1|TX|18782-3^Radiology Study observation^LN||No acute findings.||||||F\r"
    )


def destination(port: int, timeout: float = 2, **settings: Any) -> MLLPDestination:
    config = MLLPDestinationConfig(
        type="mllp", host=LOCALHOST, port=port, timeout_seconds=timeout, **settings
    )
    return MLLPDestination(config)


async def _send(receiver: Receiver, *payloads: str, timeout: float = 2) -> list[Any]:
    """Send each payload over one destination; results are Deliveries or the exceptions."""
    sender = destination(receiver.port, timeout)
    results: list[Any] = []
    try:
        for payload in payloads:
            try:
                results.append(await sender.send(payload))
            except (PermanentError, RecoverableError) as exc:
                results.append(exc)
    finally:
        await sender.close()
    return results


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


# --- positive ACK ----------------------------------------------------------------------


def test_aa_is_delivered_with_the_ack_as_response() -> None:
    async def scenario() -> tuple[list[Any], list[bytes]]:
        async with AckReceiver() as ehr:
            return await _send(ehr, oru("MSG1")), ehr.received

    (delivery,), received = run(scenario())
    assert received == [oru("MSG1").encode()]
    assert delivery.response.startswith("MSH|")
    assert "MSA|AA|MSG1" in delivery.response
    assert delivery.detail.startswith("AA from 127.0.0.1:")


def test_commit_accept_ca_counts_as_delivered() -> None:
    async def scenario() -> list[Any]:
        async with AckReceiver(code="CA") as ehr:
            return await _send(ehr, oru("MSG-CA"))

    (delivery,) = run(scenario())
    assert "MSA|CA|MSG-CA" in delivery.response


def test_one_connection_is_reused_for_several_messages() -> None:
    async def scenario() -> tuple[list[Any], AckReceiver]:
        async with AckReceiver() as ehr:
            return await _send(ehr, oru("P1"), oru("P2"), oru("P3")), ehr

    results, ehr = run(scenario())
    assert [f"MSA|AA|P{n}" in r.response for n, r in enumerate(results, 1)] == [True] * 3
    assert len(ehr.received) == 3
    assert ehr.connections == 1


def test_lf_separated_payload_is_sent_with_cr() -> None:
    async def scenario() -> list[bytes]:
        async with AckReceiver() as ehr:
            await _send(ehr, oru("LF1").replace("\r", "\n"))
            return ehr.received

    (message,) = run(scenario())
    assert b"\n" not in message
    assert message.count(b"\r") == 4


# --- refusals: permanent ---------------------------------------------------------------


@pytest.mark.parametrize("code", ["AE", "AR", "CE", "CR"])
def test_negative_ack_is_permanent_with_the_reason(code: str) -> None:
    async def scenario() -> list[Any]:
        async with NakReceiver(code, reason="Unknown patient \\T\\ order") as ehr:  # type: ignore[arg-type]
            return await _send(ehr, oru("NAK1"))

    (error,) = run(scenario())
    assert isinstance(error, PermanentError)
    assert f"answered {code}: Unknown patient & order" in str(error)


def test_negative_ack_reason_from_err_when_msa3_is_empty() -> None:
    async def scenario() -> list[Any]:
        async with NakReceiver("AE", reason="") as ehr:
            return await _send(ehr, oru("NAK2"))

    (error,) = run(scenario())
    assert isinstance(error, PermanentError)
    assert str(error).endswith("answered AE: Application internal error")


# --- no answer, broken answers: recoverable ---------------------------------------------


def test_silent_receiver_times_out_then_a_recovered_receiver_gets_the_message() -> None:
    async def scenario() -> tuple[list[bytes], Any, AckReceiver]:
        silent = await SilentReceiver().start()
        sender = destination(silent.port, timeout=0.3)
        try:
            with pytest.raises(RecoverableError, match=r"no MLLP response .* within 0.3s"):
                await sender.send(oru("RETRY1"))
            first = silent.received
            await silent.stop()
            # The receiver comes back on the same port; the queue retries the same message.
            async with AckReceiver(port=silent.port) as recovered:
                delivery = await sender.send(oru("RETRY1"))
                return first, delivery, recovered
        finally:
            await sender.close()

    first, delivery, recovered = run(scenario())
    assert first == [oru("RETRY1").encode()]
    assert "MSA|AA|RETRY1" in delivery.response
    assert recovered.received == [oru("RETRY1").encode()]


def test_wrong_msa2_is_recoverable_and_the_connection_is_dropped() -> None:
    async def scenario() -> tuple[list[Any], BadAckReceiver]:
        async with BadAckReceiver("wrong-control-id") as ehr:
            return await _send(ehr, oru("MINE1"), oru("MINE2")), ehr

    results, ehr = run(scenario())
    assert all(isinstance(result, RecoverableError) for result in results)
    assert "MSA-2 of the response does not echo MSH-10 MINE1" in str(results[0])
    assert ehr.connections == 2  # each untrusted ACK closed the connection


def test_garbage_answer_is_recoverable() -> None:
    async def scenario() -> tuple[list[Any], BadAckReceiver]:
        async with BadAckReceiver("garbage") as ehr:
            return await _send(ehr, oru("G1"), oru("G2")), ehr

    results, ehr = run(scenario())
    assert all(isinstance(result, RecoverableError) for result in results)
    assert "not an HL7 ACK" in str(results[0])
    assert ehr.connections == 2


def test_connection_refused_is_recoverable() -> None:
    sender = destination(free_port(), timeout=1)

    async def scenario() -> None:
        try:
            await sender.send(oru("REFUSED"))
        finally:
            await sender.close()

    with pytest.raises(RecoverableError, match=r"connect to 127\.0\.0\.1:\d+ failed"):
        run(scenario())


def test_receiver_closing_the_connection_is_recoverable() -> None:
    class Hangup(Receiver):
        async def reply(self, message: bytes) -> bytes | None:
            await self.stop()
            return None

    async def scenario() -> list[Any]:
        async with Hangup() as ehr:
            return await _send(ehr, oru("HUP1"))

    (error,) = run(scenario())
    assert isinstance(error, RecoverableError)


# --- what is sent, and what is logged ----------------------------------------------------


def test_bytes_follow_msh18_else_the_configured_charset() -> None:
    async def scenario() -> list[bytes]:
        async with AckReceiver() as ehr:
            sender = destination(ehr.port, charset="8859/1")
            try:
                await sender.send(oru("CS1", name="MÜLLER^JÖRG"))  # MSH-18 UTF-8
                await sender.send(oru("CS2", name="MÜLLER^JÖRG", charset=""))  # configured
            finally:
                await sender.close()
            return ehr.received

    utf8, latin1 = run(scenario())
    assert "MÜLLER^JÖRG".encode() in utf8
    assert "MÜLLER^JÖRG".encode("latin-1") in latin1


def test_unencodable_message_is_permanent_and_not_sent() -> None:
    async def scenario() -> tuple[list[Any], list[bytes]]:
        async with AckReceiver() as ehr:
            return await _send(ehr, oru("ENC1", name="李^小龙", charset="8859/1")), ehr.received

    (error,), received = run(scenario())
    assert isinstance(error, PermanentError)
    assert "cannot be encoded in 8859/1" in str(error)
    assert "李" not in str(error)
    assert received == []


def test_payload_without_control_id_is_permanent() -> None:
    async def scenario() -> list[Any]:
        async with AckReceiver() as ehr:
            return await _send(ehr, oru(""), "not hl7")

    no_id, not_hl7 = run(scenario())
    assert isinstance(no_id, PermanentError)
    assert "MSH-10" in str(no_id)
    assert isinstance(not_hl7, PermanentError)


def test_no_message_content_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with AckReceiver() as ehr:
            await _send(ehr, oru("LOG1", name="SECRET^PATIENT"))
        async with BadAckReceiver("wrong-control-id") as ehr:
            await _send(ehr, oru("LOG2", name="SECRET^PATIENT"))
        async with NakReceiver("AE") as ehr:
            await _send(ehr, oru("LOG3", name="SECRET^PATIENT"))

    run(scenario())
    assert caplog.records  # the exchanges were logged...
    assert "SECRET" not in caplog.text  # ...without their content


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def test_tls_receiver(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)

    async def send(port: int, tls: dict[str, Any]) -> Any:
        sender = destination(port, tls=tls)
        try:
            return await sender.send(oru("TLS1"))
        except RecoverableError as exc:
            return exc
        finally:
            await sender.close()

    async def scenario() -> list[Any]:
        ehr = AckReceiver()
        ehr.ssl_context = server
        async with ehr:
            return [
                await send(ehr.port, {"cafile": str(cert)}),
                await send(ehr.port, {}),  # the system store does not know our test CA
                await send(ehr.port, {"verify": False}),
            ]

    trusted, untrusted, unverified = run(scenario())
    assert "MSA|AA|TLS1" in trusted.response
    assert isinstance(untrusted, RecoverableError)
    assert "MSA|AA|TLS1" in unverified.response


# --- configuration -------------------------------------------------------------------------


def test_config_rejects_unknown_charset_and_key_without_certificate() -> None:
    with pytest.raises(pydantic.ValidationError, match="unsupported character set"):
        MLLPDestinationConfig(type="mllp", host="ehr", charset="EBCDIC")
    with pytest.raises(pydantic.ValidationError, match="keyfile needs certfile"):
        MLLPDestinationConfig(type="mllp", host="ehr", tls={"keyfile": "key.pem"})  # type: ignore[arg-type]
    config = MLLPDestinationConfig(type="mllp", host="ehr")
    assert (config.port, config.timeout_seconds, config.charset) == (2575, 30, "UNICODE UTF-8")
