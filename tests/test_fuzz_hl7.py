"""The HL7 fuzz target in CI: 100,000 inputs in-process, then a part over the wire to a real hub.

The 100,000 inputs take about 100 s of CPU (python-hl7 parses every frame and every
ACK): about 55 s on two idle cores, spread over every core. The issue asks for 100k
inputs with no crash, so CI runs all of them (``python -m tests.fuzz.hl7_fuzz`` runs
the same inputs, or other seeds, by hand; seeds 1, 2 and 3: no failure).
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.mllp_framing import MLLPFrameReader
from engine.formats.hl7 import ACK_CODES
from tests.fuzz.hl7_fuzz import (
    MAX_MESSAGE_BYTES,
    answer,
    check_ack,
    generate,
    make_datatype,
    run_parallel,
    sample_messages,
)
from tests.support.hub_process import HubProcess, start_hub
from tests.support.mllp_client import msa, send

FUZZ_INPUTS = 100_000
WIRE_INPUTS = 300


def test_fuzz_inputs_in_process_never_crash() -> None:
    started = time.monotonic()
    result = run_parallel(seed=1, count=FUZZ_INPUTS, jobs=os.cpu_count() or 1)
    elapsed = time.monotonic() - started
    stats = result.stats
    print(f"\n{stats.summary()}\n{elapsed:.1f} s")  # shown with pytest -s
    assert result.failed == [], f"inputs that failed (replay with --only N): {result.failed}"
    assert stats.inputs == FUZZ_INPUTS
    # The generator reaches every path: refusals of both kinds, violations, oversize, AA.
    assert stats.violations and stats.oversize and stats.errors["DecodeError"]
    assert stats.errors["ParseError"] and stats.acks["AA"] and stats.acks["AR"]


# -- over the wire --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    source = {"max_message_bytes": MAX_MESSAGE_BYTES}  # as in-process: some go oversize
    running = start_hub(
        tmp_path_factory.mktemp("fuzz-hub"), {"orders-to-worklist": {"source": source}}
    )
    yield running
    running.stop()


def wire_inputs() -> Iterator[tuple[bytes, int, bool]]:
    """Fuzz streams (seed 2) with how many ACKs each must get and whether it is then closed.

    Streams where MSH-15 may ask for no ACK (NE, ER, SU) are left out: whether one
    comes depends on the channel's outcome, and waiting for silence would be slow.
    """
    samples, datatype = sample_messages(), make_datatype()
    n = 0
    while True:
        stream, _ = generate(2, n, samples)
        n += 1
        reader = MLLPFrameReader(MAX_MESSAGE_BYTES)
        frames = reader.feed(stream)
        headers = [answer(datatype, f.payload)[1] for f in frames if not f.oversize]
        if any(h is not None and h.accept_ack_type.upper() in {"NE", "ER", "SU"} for h in headers):
            continue
        closes = reader.violation is not None or reader.in_frame
        yield stream, len(frames), closes


def read_frames(sock: socket.socket, count: int) -> list[bytes]:
    """Up to ``count`` frames; fewer when the server closes the connection first."""
    reader = MLLPFrameReader(10_000_000)
    frames: list[bytes] = []
    sock.settimeout(10)
    while len(frames) < count:
        data = sock.recv(65536)
        if not data:
            break
        frames += [f.payload for f in reader.feed(data)]
    return frames


def closed(sock: socket.socket) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within 5 s."""
    sock.settimeout(5)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def valid_order(control_id: str) -> bytes:
    """A real sample order with a fresh MSH-10."""
    text = Path("tests/messages/orm_o01_v251_nw.hl7").read_bytes().decode()
    msh, rest = text.split("\r", 1)
    fields = msh.split("|")
    fields[9] = control_id
    return ("|".join(fields) + "\r" + rest).encode()


def test_fuzzed_frames_over_mllp_get_an_ack_or_a_closed_connection(hub: HubProcess) -> None:
    datatype = make_datatype()
    inputs = wire_inputs()
    answered = closed_count = 0
    for _ in range(WIRE_INPUTS):
        stream, expected_acks, closes = next(inputs)
        with socket.create_connection(("127.0.0.1", hub.mllp_port), timeout=10) as sock:
            sock.sendall(stream)
            if closes:
                sock.shutdown(socket.SHUT_WR)  # ends a truncated frame; a violation ends itself
            acks = read_frames(sock, expected_acks)
            if closes:
                assert closed(sock)
                closed_count += 1
        assert len(acks) == expected_acks
        payloads = [f.payload for f in MLLPFrameReader(MAX_MESSAGE_BYTES).feed(stream)]
        for payload, ack in zip(payloads, acks, strict=True):
            assert check_ack(ack, answer(datatype, payload)[1]) in ACK_CODES
        answered += len(acks)
    assert answered > WIRE_INPUTS / 2 and closed_count > 10
    assert hub.proc.poll() is None, "the hub died"
    assert "handler failed" not in hub.log() and "Traceback" not in hub.log()

    control_id = f"AFTERFUZZ{random.randrange(10**6)}"
    assert msa(send(hub.mllp_port, valid_order(control_id)))[1:3] == ["AA", control_id]
