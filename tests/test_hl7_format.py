"""HL7 v2 content: charsets, parse checks, escapes, ACKs, acknowledgement modes."""

from __future__ import annotations

import dataclasses
import re

import hl7
import pytest

from engine.errors import DecodeError, ParseError
from engine.formats.hl7 import (
    HL7Header,
    ack_code_for,
    ack_mode,
    build_ack,
    codec_for,
    decode,
    encode,
    escape,
    parse,
    parse_header,
    unescape,
)


def _message(charset: str = "", version: str = "2.5.1", msh15: str = "", sep: str = "\r") -> str:
    msh = (
        f"MSH|^~\\&|RIS|HOSP|PACS|RAD|20240101120000||ORM^O01^ORM_O01|MSG0001|P|{version}"
        f"|||{msh15}|||{charset}"
    )
    segments = [msh, "PID|1||12345^^^HOSP^MR||{name}^ANNA", "OBR|1|ORD1||CT^CT HEAD"]
    return sep.join(segments)


def _header(**changes: str) -> HL7Header:
    return dataclasses.replace(parse(_message().format(name="DOE")).header, **changes)


# --- decode ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("charset", "codec", "name"),
    [
        ("ASCII", "ascii", "DOE"),
        ("8859/1", "latin-1", "MÜLLER"),
        ("8859/15", "iso8859-15", "SCHNÄBEL€"),
        ("UNICODE UTF-8", "utf-8", "Ωμέγα"),
        ("UTF-8", "utf-8", "MÜLLER"),
    ],
)
def test_decode_uses_the_charset_msh18_declares(charset: str, codec: str, name: str) -> None:
    raw = _message(charset).format(name=name).encode(codec)
    text = decode(raw, default_charset="ASCII")
    assert f"|{name}^ANNA" in text
    assert parse(text).header.charset == charset


def test_iso_2022_code_extension_in_a_msh18_repetition() -> None:
    raw = _message("~ISO IR87").format(name="山田").encode("iso2022_jp")
    assert "|山田^ANNA" in decode(raw)


def test_empty_msh18_uses_the_default_charset() -> None:
    raw = _message().format(name="MÜLLER").encode("latin-1")
    assert "MÜLLER" in decode(raw, default_charset="8859/1")
    with pytest.raises(DecodeError, match="UNICODE UTF-8"):
        decode(raw)  # the default default is UTF-8, and Latin-1 Ü is not UTF-8


def test_same_bytes_read_differently_by_charset() -> None:
    raw = _message("8859/1").format(name="MÜLLER").encode("latin-1")
    assert "MÜLLER" in decode(raw)  # MSH-18 wins over the UTF-8 default


@pytest.mark.parametrize("sep", ["\n", "\r\n", "\r"])
def test_segment_separators_are_normalised_to_cr(sep: str) -> None:
    raw = (_message(sep=sep).format(name="DOE") + sep + sep).encode()
    text = decode(raw)
    assert "\n" not in text
    assert text.count("\r") == 2
    assert not text.endswith("\r")


def test_bom_and_blank_segments_are_dropped() -> None:
    raw = b"\xef\xbb\xbf" + _message(sep="\r\n\r\n").format(name="DOE").encode()
    text = decode(raw)
    assert text.startswith("MSH|")
    assert len(parse(text).message) == 3


def test_unknown_charset_is_a_decode_error() -> None:
    raw = _message("KLINGON").format(name="DOE").encode()
    with pytest.raises(DecodeError, match="unsupported character set in MSH-18: KLINGON"):
        decode(raw)


def test_undecodable_bytes_name_the_charset_and_offset() -> None:
    prefix = _message("UNICODE UTF-8").format(name="M").encode()
    raw = prefix + b"\xff\xfe"
    with pytest.raises(
        DecodeError, match=f"UNICODE UTF-8: undecodable byte at offset {len(prefix)}"
    ):
        decode(raw)


def test_ascii_rejects_8bit_bytes() -> None:
    raw = _message("ASCII").format(name="MÜLLER").encode("latin-1")
    with pytest.raises(DecodeError, match="not valid ASCII"):
        decode(raw)


def test_codec_for_validates_default_charsets() -> None:
    assert codec_for("unicode utf-8") == "utf-8"
    with pytest.raises(DecodeError):
        codec_for("EBCDIC")


# --- parse -------------------------------------------------------------------------------


def test_parse_reads_the_header() -> None:
    parsed = parse(decode(_message("UNICODE UTF-8", msh15="AL").format(name="DOE").encode()))
    header = parsed.header
    assert header.message_type == "ORM^O01"
    assert header.control_id == "MSG0001"
    assert header.sender == "RIS^HOSP"
    assert (header.receiving_application, header.receiving_facility) == ("PACS", "RAD")
    assert (header.processing_id, header.version) == ("P", "2.5.1")
    assert header.accept_ack_type == "AL"
    assert parsed.message["PID.5.1"] == "DOE"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("MSH|^~\\&|A|B|C|D|20240101||ORM^O01||P|2.5", "MSH-10 (message control ID) is empty"),
        ("MSH|^~\\&|A|B|C|D|20240101|||X1|P|2.5", "MSH-9 (message type) is empty"),
        ("PID|1||123", "not an HL7 v2 message: does not start with MSH"),
        ("<xml>not hl7</xml>", "not an HL7 v2 message"),
        ("BHS|^~\\&|A\rMSH|^~\\&|A", "batches"),
        ("MSH|^~\\&|A|B|C|D|1||ORM^O01|X1|P|2.5\rPID|1\rpv1|1", "segment 3 does not start"),
        ("MSH|^~\\&|A|B|C|D|1||ORM^O01|X1|P|2.5\rPIDX|1", "segment 2 does not start"),
        ("MSH|^~\\&|A|B|C|D|1||ORM^O01|X1|P|2.5\rMSH|^~\\&|A", "second MSH"),
        ("MSH|^^\\&|A|B|C|D|1||ORM^O01|X1|P|2.5", "MSH-1/MSH-2"),
    ],
)
def test_parse_errors_explain_the_problem(text: str, reason: str) -> None:
    with pytest.raises(ParseError, match=re.escape(reason)):
        parse(text)


def test_parse_header_is_lenient_so_a_rejection_can_echo_msh10() -> None:
    text = "MSH|^~\\&|A|B|C|D|1||ORM^O01|X1|P|2.3\rbad segment"
    with pytest.raises(ParseError):
        parse(text)
    assert parse_header(text).control_id == "X1"


# --- escapes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        ("A\\F\\B", "A|B"),
        ("A\\S\\B", "A^B"),
        ("A\\T\\B", "A&B"),
        ("A\\R\\B", "A~B"),
        ("A\\E\\B", "A\\B"),
        ("line1\\.br\\line2", "line1\nline2"),
        ("\\F\\\\S\\\\T\\\\R\\\\E\\", "|^&~\\"),
    ],
)
def test_escape_and_unescape_are_inverse(escaped: str, plain: str) -> None:
    assert unescape(escaped) == plain
    assert escape(plain) == escaped
    assert unescape(escape(plain)) == plain


def test_unescape_hex_and_unknown_sequences() -> None:
    assert unescape("A\\X0D0A\\B") == "A\r\nB"
    assert unescape("\\XC39C\\LLER") == "ÜLLER"  # UTF-8 bytes
    assert unescape("\\XDC\\LLER") == "ÜLLER"  # not UTF-8: Latin-1
    assert unescape("\\H\\bold\\N\\") == "\\H\\bold\\N\\"
    assert unescape("dangling \\ escape") == "dangling \\ escape"


def test_escapes_follow_the_message_delimiters() -> None:
    assert unescape("A#F#B#S#C", "$~#@", field_sep="!") == "A!B$C"
    assert escape("A!B$C@D", "$~#@", field_sep="!") == "A#F#B#S#C#T#D"


def test_escape_turns_any_line_break_into_br() -> None:
    assert escape("a\r\nb\rc\nd") == "a\\.br\\b\\.br\\c\\.br\\d"


# --- ACK ---------------------------------------------------------------------------------


def _ack(text: str) -> hl7.Message:
    assert text.endswith("\r")
    return hl7.parse(text)


def test_aa_ack_swaps_sender_and_echoes_control_id() -> None:
    ack = _ack(build_ack(_header(), "AA"))
    msh = ack.segment("MSH")
    assert (str(msh[3]), str(msh[4]), str(msh[5]), str(msh[6])) == ("PACS", "RAD", "RIS", "HOSP")
    assert str(msh[9]) == "ACK^O01^ACK"
    assert str(msh[10]) not in ("", "MSG0001")
    assert (str(msh[11]), str(msh[12])) == ("P", "2.5.1")
    assert str(ack.segment("MSA")[1]) == "AA"
    assert str(ack.segment("MSA")[2]) == "MSG0001"
    with pytest.raises(KeyError):
        ack.segment("ERR")


def test_control_ids_are_unique() -> None:
    ids = {str(_ack(build_ack(_header(), "AA")).segment("MSH")[10]) for _ in range(200)}
    assert len(ids) == 200


@pytest.mark.parametrize(("code", "error_code"), [("AE", "207"), ("AR", "200")])
def test_error_ack_in_2_5_1_uses_err_3_4_8(code: str, error_code: str) -> None:
    ack = _ack(build_ack(_header(), code, "no such procedure"))
    assert str(ack.segment("MSA")[1]) == code
    assert str(ack.segment("MSA")[3]) == "no such procedure"
    err = ack.segment("ERR")
    assert str(err[3][0][0]) == error_code
    assert str(err[3][0][2]) == "HL70357"
    assert str(err[4]) == "E"
    assert str(err[8]) == "no such procedure"


def test_error_ack_in_2_3_uses_err_1() -> None:
    ack = _ack(build_ack(_header(version="2.3"), "AE", "boom", error_code="101"))
    assert str(ack.segment("MSH")[12]) == "2.3"
    assert str(ack.segment("MSA")[1]) == "AE"
    location = ack.segment("ERR")[1][0]
    assert str(location[3]) == "101&Required field missing&HL70357"
    assert len(ack.segment("ERR")) == 2


def test_reason_with_delimiters_cannot_break_the_ack() -> None:
    reason = "bad | field ^ comp & sub ~ rep \\ esc\rCR"
    text = build_ack(_header(), "AE", reason)
    assert text.count("\r") == 3  # MSH, MSA, ERR: the CR in the reason was escaped
    ack = _ack(text)
    assert len(ack.segment("MSA")) == 4
    assert unescape(str(ack.segment("MSA")[3])) == reason.replace("\r", "\n")
    assert unescape(str(ack.segment("ERR")[8])) == reason.replace("\r", "\n")


def test_ack_without_a_header_is_still_valid() -> None:
    ack = _ack(build_ack(None, "AR", "not an HL7 v2 message"))
    assert str(ack.segment("MSH")[3]) == "MERIDIAN"
    assert str(ack.segment("MSH")[12]) == "2.5.1"
    assert str(ack.segment("MSA")[1]) == "AR"
    assert str(ack.segment("MSA")[2]) == ""


def test_ack_echoes_charset_and_is_encoded_in_it() -> None:
    header = parse(decode(_message("8859/1").format(name="X").encode())).header
    text = build_ack(header, "AE", "Ärger")
    assert str(_ack(text).segment("MSH")[18]) == "8859/1"
    assert encode(text, header, "UNICODE UTF-8") == text.encode("latin-1")


def test_encode_never_fails() -> None:
    header = _header(charset="KLINGON")
    assert encode("ACK Ω", header, "ASCII") == b"ACK ?"
    assert encode("ACK Ω", None, "UNICODE UTF-8") == "ACK Ω".encode()


def test_build_ack_refuses_unknown_codes() -> None:
    with pytest.raises(ValueError):
        build_ack(None, "OK")
    with pytest.raises(ValueError):
        build_ack(None, "AE", error_code="999")


# --- acknowledgement modes -----------------------------------------------------------------


def test_original_mode_always_answers() -> None:
    header = _header()
    assert ack_mode(header) == "original"
    assert ack_mode(None) == "original"
    assert [ack_code_for(header, o) for o in ("accepted", "error", "rejected")] == [
        "AA",
        "AE",
        "AR",
    ]


@pytest.mark.parametrize(
    ("msh15", "expected"),
    [
        ("AL", ["CA", "CE", "CR"]),
        ("NE", [None, None, None]),
        ("ER", [None, "CE", "CR"]),
        ("SU", ["CA", None, None]),
    ],
)
def test_enhanced_mode_follows_msh15(msh15: str, expected: list[str | None]) -> None:
    header = _header(accept_ack_type=msh15)
    assert ack_mode(header) == "enhanced"
    assert [ack_code_for(header, o) for o in ("accepted", "error", "rejected")] == expected


def test_enhanced_mode_commit_ack_is_built() -> None:
    header = _header(accept_ack_type="AL", app_ack_type="NE")
    ack = _ack(build_ack(header, "CE", "store unavailable"))
    assert str(ack.segment("MSA")[1]) == "CE"
    assert str(ack.segment("ERR")[3][0][0]) == "207"
