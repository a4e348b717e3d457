"""Fuzz target for the HL7 inbound path: MLLP framing, HL7 v2 read, ACK.

Each generated input is a byte stream (mutated sample messages from tests/messages,
framed or not, or plain random bytes). It is fed to :class:`MLLPFrameReader` cut at
random points and must give the same frames as fed whole; every frame then goes
through the channel's data type exactly as the pipeline drives it (``read``, then
``reply`` for the outcome, or ``unreadable`` + a rejection ``reply``). Allowed: a
framing violation (the listener closes the connection), a :class:`MessageError` from
``read``. Anything else raised, or an ACK that is not valid HL7, is a failure.

Seeded and reproducible: input ``n`` of seed ``s`` is always the same bytes (and the
same cuts), whatever ran before it, so a failure is replayed alone with ``--only n``.

    .venv/bin/python -m tests.fuzz.hl7_fuzz                  # 100,000 inputs, seed 1
    .venv/bin/python -m tests.fuzz.hl7_fuzz --count 5000 --seed 7 --jobs 1
    .venv/bin/python -m tests.fuzz.hl7_fuzz --only 4711   # reproduce one failed input
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import hl7

from connectors.base import Origin
from connectors.mllp_framing import Frame, MLLPFrameReader, encode_frame
from engine.config import InboundConfig
from engine.datatypes.base import Outcome
from engine.datatypes.hl7v2 import HL7v2DataType
from engine.errors import MessageError
from engine.formats.hl7 import ACK_CODES, DEFAULT_CHARSET, HL7Header, decode
from engine.hl7_inbound import best_effort_header

__all__ = [
    "MAX_MESSAGE_BYTES",
    "FuzzStats",
    "check_ack",
    "generate",
    "run_one",
    "sample_messages",
]

REPO = Path(__file__).resolve().parents[2]
MAX_MESSAGE_BYTES = 4096  # small, so some mutations (duplicated ranges) go oversize
ORIGIN = Origin(protocol="mllp", peer="127.0.0.1:1", local="127.0.0.1:2", tls=False)

# Bytes that mean something to MLLP, HL7 or a codec: mutations favour them.
_SPECIAL = [
    b"\x0b", b"\x1c", b"\x0d", b"\x0a", b"\x1c\x0d", b"|", b"^", b"~", b"\\", b"&", b"#",
    b"\x00", b"\xff", b"\xc3", b"\xe9", b"\xef\xbb\xbf", b"\x1b$B", b"MSH|^~\\&|", b"\rMSH|",
    b"FHS|", b"BHS|", b"\\X0D\\", b"\\E\\", b" ", b"\t",
]  # fmt: skip
_CHARSETS = [
    b"", b"UNICODE UTF-8", b"8859/1", b"8859/15", b"ASCII", b"ISO IR87", b"~ISO IR87",
    b"GB 18030-2000", b"KS X 1001", b"BIG-5", b"UTF-16", b"\xff\xfe", b"8859/99",
]  # fmt: skip


def sample_messages() -> list[bytes]:
    """The real sample messages of the test suite (ORM, OMI, ORU; several charsets)."""
    paths = sorted((REPO / "tests" / "messages").rglob("*.hl7"))
    return [path.read_bytes() for path in paths]


# -- mutations ------------------------------------------------------------------------------


def _flip(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    if data:
        data[rng.randrange(len(data))] = rng.randrange(256)


def _insert_special(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    data[rng.randint(0, len(data)) : 0] = rng.choice(_SPECIAL)


def _insert_random(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    data[rng.randint(0, len(data)) : 0] = rng.randbytes(rng.randint(1, 16))


def _delete(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    if data:
        start = rng.randrange(len(data))
        del data[start : start + rng.randint(1, 64)]


def _duplicate(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    if data:
        start = rng.randrange(len(data))
        chunk = data[start : start + rng.randint(1, 512)]
        data[rng.randint(0, len(data)) : 0] = chunk * rng.choice((1, 2, 16))


def _truncate(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    del data[rng.randint(0, len(data)) :]


def _splice(rng: random.Random, data: bytearray, samples: list[bytes]) -> None:
    other = rng.choice(samples)
    cut = rng.randint(0, len(other))
    data[rng.randint(0, len(data)) :] = other[cut:]


def _set_field(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    """Replace one MSH field (delimiters, type, control ID, MSH-15/16/18)."""
    end = data.find(b"\r")
    msh = bytes(data[: end if end != -1 else len(data)])
    fields = msh.split(b"|")
    index = rng.choice((1, 2, 8, 9, 11, 14, 15, 17))
    fields += [b""] * (index + 1 - len(fields))
    if index == 17:
        fields[index] = rng.choice(_CHARSETS)
    elif index in (14, 15):
        fields[index] = rng.choice((b"", b"AL", b"NE", b"ER", b"SU", b"XX"))
    else:
        fields[index] = rng.choice((b"", rng.randbytes(rng.randint(1, 6)), b"^~\\&", b"^^^^"))
    data[: len(msh)] = b"|".join(fields)


def _swap_lines(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    """Reorder or change segment separators (CR, LF, CRLF, blank lines)."""
    segments = bytes(data).split(b"\r")
    if rng.random() < 0.3:
        rng.shuffle(segments)
    data[:] = rng.choice((b"\r", b"\n", b"\r\n", b"\r\r", b"\r \r")).join(segments)


_MUTATIONS: list[Callable[[random.Random, bytearray, list[bytes]], None]] = [
    _flip, _flip, _insert_special, _insert_special, _insert_random, _delete,
    _duplicate, _truncate, _splice, _set_field, _set_field, _swap_lines,
]  # fmt: skip


def mutate(rng: random.Random, sample: bytes, samples: list[bytes]) -> bytes:
    """One to four random mutations of ``sample``."""
    data = bytearray(sample)
    for _ in range(rng.randint(1, 4)):
        rng.choice(_MUTATIONS)(rng, data, samples)
    return bytes(data)


def _stream(rng: random.Random, samples: list[bytes]) -> bytes:
    """What a sender might put on the wire: usually framed messages, sometimes garbage."""
    roll = rng.random()
    if roll < 0.05:
        return rng.randbytes(rng.randint(0, 2048))  # not MLLP at all
    if roll < 0.10:
        return encode_frame(rng.randbytes(rng.randint(0, 2048)))  # framed random bytes
    messages = [mutate(rng, rng.choice(samples), samples) for _ in range(rng.choice((1, 1, 2)))]
    stream = b"".join(encode_frame(message) + rng.choice((b"", b"\r\n")) for message in messages)
    if rng.random() < 0.1:
        stream = bytes(mutate(rng, stream, samples))  # damage the framing itself
    return stream


def generate(seed: int, n: int, samples: list[bytes]) -> tuple[bytes, random.Random]:
    """Input ``n`` of ``seed`` and the generator that then cuts it: always the same."""
    rng = random.Random(f"{seed}/{n}")
    return _stream(rng, samples), rng


# -- checks ---------------------------------------------------------------------------------


class FuzzFailure(AssertionError):  # noqa: N818 - a failed property, like AssertionError
    """An input broke a property; ``stage`` says where."""

    def __init__(self, stage: str, detail: str) -> None:
        super().__init__(f"{stage}: {detail}")
        self.stage = stage


def check_ack(ack: bytes, header: HL7Header | None, default_charset: str = DEFAULT_CHARSET) -> str:
    """Validate an ACK: python-hl7 parses it, MSA-1 is an ACK code, MSA-2 echoes MSH-10.

    Returns MSA-1. ``header`` is what could be read of the inbound MSH (None: nothing).
    """
    if b"\x0b" in ack or b"\x1c" in ack:
        raise FuzzFailure("ack", "ACK holds an MLLP block character")
    text = decode(ack, default_charset)
    message = hl7.parse(text)
    msa = message.segment("MSA")
    code = str(msa[1])
    if code not in ACK_CODES:
        raise FuzzFailure("ack", f"MSA-1 is {code!r}")
    expected = header.control_id if header is not None else ""
    if not _echoes(str(msa[2]), expected):
        raise FuzzFailure("ack", "MSA-2 does not echo MSH-10")
    return code


def _echoes(echoed: str, sent: str) -> bool:
    """MSA-2 is MSH-10 as sent, but for characters the ACK's charset cannot hold (``?``).

    Surrounding whitespace is ignored: :func:`decode` strips the end of a message.
    """
    echoed, sent = echoed.strip(), sent.strip()
    return len(echoed) == len(sent) and all(
        mine in (theirs, "?") for mine, theirs in zip(echoed, sent, strict=True)
    )


@dataclass
class FuzzStats:
    """Counts of what the inputs did (printed by the script)."""

    inputs: int = 0
    frames: int = 0
    violations: int = 0
    oversize: int = 0
    read_ok: int = 0
    no_ack: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    acks: Counter[str] = field(default_factory=Counter)

    def merge(self, other: FuzzStats) -> None:
        """Add ``other``'s counts to these."""
        for name in ("inputs", "frames", "violations", "oversize", "read_ok", "no_ack"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.update(other.errors)
        self.acks.update(other.acks)

    def summary(self) -> str:
        """One line per count, stable order."""
        lines = [
            f"inputs {self.inputs}, frames {self.frames}, framing violations {self.violations}, "
            f"oversize {self.oversize}",
            f"read fine {self.read_ok}; refused: "
            + ", ".join(f"{name} {n}" for name, n in sorted(self.errors.items())),
            "ACK codes: "
            + ", ".join(f"{code} {n}" for code, n in sorted(self.acks.items()))
            + f"; no ACK due (MSH-15) {self.no_ack}",
        ]
        return "\n".join(lines)


def _frames(stream: bytes, rng: random.Random) -> tuple[list[Frame], bool]:
    """Frames of ``stream`` fed whole and fed in random pieces: they must agree."""
    whole = MLLPFrameReader(MAX_MESSAGE_BYTES)
    expected = whole.feed(stream)
    pieces = MLLPFrameReader(MAX_MESSAGE_BYTES)
    got: list[Frame] = []
    cuts = sorted(rng.sample(range(len(stream) + 1), min(len(stream) + 1, rng.randint(1, 8))))
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += pieces.feed(stream[start:end])
    if got != expected or (whole.violation is None) != (pieces.violation is None):
        raise FuzzFailure("framing", "split feed differs from whole feed")
    for frame in expected:
        if not frame.oversize and (len(frame.payload) != frame.size or b"\x0b" in frame.payload):
            raise FuzzFailure("framing", "frame payload inconsistent")
    return expected, whole.violation is not None


def answer(
    datatype: HL7v2DataType, raw: bytes, stats: FuzzStats | None = None
) -> tuple[bytes | None, HL7Header | None]:
    """Read ``raw`` and build its reply the way the pipeline does.

    Returns the ACK bytes (None: MSH-15 asked for none) and the MSH the ACK answers
    (the parsed one, else what :func:`best_effort_header` could read, else None).
    """
    try:
        message = datatype.read(raw, ORIGIN)
    except MessageError as exc:
        if stats is not None:
            stats.errors[type(exc).__name__] += 1
        datatype.unreadable(raw, ORIGIN)
        reply = datatype.reply(None, raw, "rejected", exc.reason, "100")
        return reply.data, best_effort_header(raw)
    if stats is not None:
        stats.read_ok += 1
    outcome: Outcome = "accepted"
    reason, code = None, None
    try:
        datatype.check_accepted(message)
    except MessageError as exc:
        outcome, reason, code = "rejected", exc.reason, "200"
    header: HL7Header = message.native.header
    return datatype.reply(message, raw, outcome, reason, code).data, header


def run_one(datatype: HL7v2DataType, stream: bytes, rng: random.Random, stats: FuzzStats) -> None:
    """Push one stream through framing, read and ACK; raise FuzzFailure on a broken property."""
    stats.inputs += 1
    frames, violated = _frames(stream, rng)
    stats.violations += violated
    for frame in frames:
        stats.frames += 1
        if frame.oversize:
            stats.oversize += 1
            continue  # answered from the head by oversize_reply: tested separately
        ack, header = answer(datatype, frame.payload, stats)
        if ack is None:
            stats.no_ack += 1
            continue
        stats.acks[check_ack(ack, header)] += 1


def make_datatype(accept: list[str] | None = None) -> HL7v2DataType:
    """The HL7 v2 data type of a channel accepting ``accept`` (None: every type)."""
    return HL7v2DataType("fuzz", InboundConfig(accept_message_types=accept))


@dataclass
class FuzzRun:
    """The outcome of a range of inputs: counts, and the indexes of failed inputs."""

    stats: FuzzStats
    failed: list[int]


def run(
    seed: int, start: int, stop: int, budget_seconds: float | None = None, verbose: bool = True
) -> FuzzRun:
    """Inputs ``start`` to ``stop - 1`` (fewer when ``budget_seconds`` runs out)."""
    samples = sample_messages()
    datatype = make_datatype(["ORM^O01", "OMI^O23"])
    result = FuzzRun(FuzzStats(), [])
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    for n in range(start, stop):
        if deadline is not None and time.monotonic() > deadline:
            break
        stream, rng = generate(seed, n, samples)
        try:
            run_one(datatype, stream, rng, result.stats)
        except Exception:
            result.failed.append(n)
            if verbose and len(result.failed) <= 5:
                print(f"--- input {n} of seed {seed}: {stream[:300]!r}", file=sys.stderr)
                traceback.print_exc()
    return result


def _run_chunk(args: tuple[int, int, int, float | None]) -> FuzzRun:
    seed, start, stop, deadline = args
    logging.disable(logging.WARNING)  # python-hl7 warns about odd escapes, with content
    budget = None if deadline is None else deadline - time.monotonic()
    if budget is not None and budget <= 0:
        return FuzzRun(FuzzStats(), [])
    return run(seed, start, stop, budget)


def run_parallel(seed: int, count: int, jobs: int, budget_seconds: float | None = None) -> FuzzRun:
    """``count`` inputs in ``jobs`` processes (chunks of 1,000); same inputs as :func:`run`.

    With ``budget_seconds``, chunks stop when it is spent (the monotonic clock is
    system-wide on Linux, so every worker sees the same deadline).
    """
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    chunks = [(seed, start, min(start + 1000, count), deadline) for start in range(0, count, 1000)]
    total = FuzzRun(FuzzStats(), [])
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        for part in pool.imap_unordered(_run_chunk, chunks):
            total.stats.merge(part.stats)
            total.failed += part.failed
    return total


def main(argv: list[str] | None = None) -> int:
    """Command line: run the fuzz target, print counts, exit 1 on any failure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", type=int, help="run input N alone (to reproduce a failure)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    started = time.monotonic()
    if args.only is not None:
        result = run(args.seed, args.only, args.only + 1)
    elif args.jobs > 1:
        result = run_parallel(args.seed, args.count, args.jobs)
    else:
        result = run(args.seed, 0, args.count)
    print(result.stats.summary())
    print(f"failures {len(result.failed)} {result.failed[:20]}; {time.monotonic() - started:.1f} s")
    return 1 if result.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
