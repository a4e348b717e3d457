"""Property-based tests (hypothesis) of the HL7 inbound path: MLLP framing, read, ACK.

What a sender on the wire can do to us, the hub must survive: any byte stream, cut
anywhere by TCP, gives the same frames; any frame is read or refused with our own
MessageError; every refusal is answered with a valid HL7 ACK (AR/AE or their enhanced
mode twins) that echoes MSH-10 when MSH could be read. Derandomized, so CI runs the
same examples every time; tests/fuzz/hl7_fuzz.py explores further with 100k inputs.
"""

from __future__ import annotations

import contextlib
import logging

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.mllp import oversize_reply
from connectors.mllp_framing import HEAD_BYTES, MLLPFrameReader, encode_frame
from engine.errors import MessageError
from engine.formats.hl7 import decode, parse_header
from engine.hl7_inbound import best_effort_header
from tests.fuzz.hl7_fuzz import ORIGIN, answer, check_ack, make_datatype, sample_messages

PROPERTY = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SAMPLES = sample_messages()
DATATYPE = make_datatype(["ORM^O01", "OMI^O23"])
NEGATIVE = {"AE", "AR", "CE", "CR"}


def unframed(data: bytes) -> bytes:
    """``data`` without the MLLP block characters, which no frame's payload can hold."""
    return data.replace(b"\x0b", b"").replace(b"\x1c", b"")


# Payloads a sender can frame: anything but the two MLLP block characters.
payloads = st.binary(max_size=300).map(unframed)
# Bytes biased towards what matters to MLLP and HL7.
special = st.sampled_from([b"\x0b", b"\x1c", b"\r", b"\n", b"\x1c\r", b"|", b"^", b"\\", b"\xff"])
streams = st.lists(st.one_of(st.binary(max_size=40), special), max_size=30).map(b"".join)


def feed_in_pieces(reader: MLLPFrameReader, data: bytes, cuts: list[int]) -> list[object]:
    """Feed ``data`` cut at ``cuts`` (positions, any order, duplicates allowed)."""
    points = sorted({min(cut, len(data)) for cut in cuts})
    frames: list[object] = []
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        frames += reader.feed(data[start:end])
    return frames


# -- MLLP framing -----------------------------------------------------------------------------


@PROPERTY
@given(
    messages=st.lists(payloads, max_size=5),
    trailer=st.sampled_from([b"", b"\r", b"\n", b"\r\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
)
def test_frames_survive_any_split(messages: list[bytes], trailer: bytes, cuts: list[int]) -> None:
    stream = b"".join(encode_frame(message) + trailer for message in messages)
    reader = MLLPFrameReader(1_000_000)
    frames = feed_in_pieces(reader, stream, cuts)
    assert [frame.payload for frame in frames] == messages  # type: ignore[attr-defined]
    assert reader.violation is None
    assert not reader.in_frame


@PROPERTY
@given(stream=streams, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=20))
def test_any_byte_stream_split_anywhere_gives_the_same_frames(
    stream: bytes, cuts: list[int]
) -> None:
    whole = MLLPFrameReader(64)
    expected = whole.feed(stream)
    pieces = MLLPFrameReader(64)
    assert feed_in_pieces(pieces, stream, cuts) == expected  # and nothing raised
    assert (pieces.violation is None) == (whole.violation is None)
    for frame in expected:
        assert b"\x0b" not in frame.payload and b"\x1c" not in frame.payload
        assert frame.oversize == (frame.size > 64)


@PROPERTY
@given(
    size=st.integers(min_value=0, max_value=3 * HEAD_BYTES),
    limit=st.integers(min_value=1, max_value=2 * HEAD_BYTES),
    chunk=st.integers(min_value=1, max_value=HEAD_BYTES),
)
def test_oversize_frames_keep_only_their_head(size: int, limit: int, chunk: int) -> None:
    payload = bytes(n % 251 for n in range(size)).replace(b"\x0b", b"a").replace(b"\x1c", b"b")
    stream = encode_frame(payload)
    reader = MLLPFrameReader(limit)
    frames = feed_in_pieces(reader, stream, list(range(chunk, len(stream), chunk)))
    [frame] = frames
    assert frame.size == size  # type: ignore[attr-defined]
    assert frame.oversize == (size > limit)  # type: ignore[attr-defined]
    expected = payload[:HEAD_BYTES] if size > limit else payload
    assert frame.payload == expected  # type: ignore[attr-defined]


@PROPERTY
@given(head=st.binary(max_size=400), limit=st.integers(min_value=1, max_value=10**9))
def test_oversize_reply_is_always_a_valid_ar(head: bytes, limit: int) -> None:
    reply = oversize_reply(head, limit, "UNICODE UTF-8")
    msh = head.split(b"\r", 1)[0].split(b"\n", 1)[0]
    header = None
    with contextlib.suppress(MessageError):  # undecodable or no MSH: nothing to echo
        header = parse_header(decode(msh, "UNICODE UTF-8"))
    assert check_ack(reply, header) == "AR"


# -- HL7 read and ACK -------------------------------------------------------------------------


def assert_answered(raw: bytes) -> str | None:
    """Read ``raw`` as the pipeline does; the ACK (if one is due) must be valid HL7.

    Returns MSA-1. Only MessageError may come out of ``read``: ``answer`` lets
    anything else propagate and fail the test.
    """
    ack, header = answer(DATATYPE, raw)
    if ack is None:  # MSH-15 asked for no ACK in this case: the sender chose it
        assert header is not None and header.accept_ack_type.upper() in ("NE", "ER", "SU")
        return None
    return check_ack(ack, header)


@PROPERTY
@given(raw=st.binary(max_size=600).map(unframed))
def test_arbitrary_bytes_are_read_or_refused_with_a_valid_nak(raw: bytes) -> None:
    code = assert_answered(raw)
    assert code in NEGATIVE | {None}  # random bytes are never a valid message


@st.composite
def mutated_samples(draw: st.DrawFn) -> bytes:
    """A real sample message with up to 8 random edits (replace, insert, delete)."""
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        position = draw(st.integers(min_value=0, max_value=len(data)))
        removed = draw(st.integers(min_value=0, max_value=8))
        inserted = draw(st.one_of(st.binary(max_size=8), special))
        data[position : position + removed] = inserted
    return unframed(bytes(data))


@PROPERTY
@given(raw=mutated_samples())
def test_mutated_messages_are_read_or_refused_with_a_valid_ack(raw: bytes) -> None:
    assert_answered(raw)


field_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n|\x0b\x1c"),
    max_size=12,
)


@PROPERTY
@given(
    encoding=st.sampled_from(["^~\\&", "^~\\&#", "^~\\", "^^\\&", "abcd", ""]),
    fields=st.lists(field_text, min_size=0, max_size=18),
    charset=st.sampled_from(["", "UNICODE UTF-8", "8859/1", "ISO IR87", "KLINGON", "~ISO IR87"]),
    body=st.lists(st.sampled_from(["PID|1||123^^^H", "OBR|1", "X", "ZZ1|\\H\\", ""]), max_size=4),
)
def test_any_msh_gets_an_ack_echoing_its_control_id(
    encoding: str, fields: list[str], charset: str, body: list[str]
) -> None:
    fields = fields + [""] * (18 - len(fields))
    fields[0], fields[16] = encoding, charset
    text = "\r".join(["MSH|" + "|".join(fields), *body])
    raw = text.encode("utf-8")
    code = assert_answered(raw)  # checks MSA-2 against MSH-10 when MSH is readable
    if best_effort_header(raw) is None:
        assert code == "AR"  # nothing readable: original mode, rejected


@settings(max_examples=100, derandomize=True, database=None, deadline=None)
@given(
    escape_junk=st.sampled_from(["\\", "\\X", "\\XZZ\\", "\\C2842\\", "\\M\\", "\\Zabc"]),
    where=st.sampled_from(["PID|1||SECRET-{}^^^H^MR||DOE", "OBR|1|||CT|||||||||||||||SECRET-{}"]),
)
def test_reading_never_logs_message_content(escape_junk: str, where: str) -> None:
    segment = where.format(escape_junk)
    raw = f"MSH|^~\\&|A|B|C|D|20240101||ORM^O01|1|P|2.5.1\r{segment}\r".encode()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        DATATYPE.read(raw, ORIGIN)
        DATATYPE.reply(None, raw, "rejected", "x", "100")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert not [r for r in records if "SECRET" in r.getMessage()]
