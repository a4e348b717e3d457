"""HL7 v2 acknowledgements: which code to send (MSH-15/16) and the ACK message itself."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from engine.formats.hl7_charset import is_supported_msh18
from engine.formats.hl7_escape import DEFAULT_ENCODING_CHARS, escape
from engine.formats.hl7_message import HL7Header

__all__ = [
    "ACK_CODES",
    "ERROR_CODES",
    "AckMode",
    "AckOutcome",
    "ack_code_for",
    "ack_mode",
    "build_ack",
]

AckMode = Literal["original", "enhanced"]
AckOutcome = Literal["accepted", "error", "rejected"]

ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
_POSITIVE_CODES = frozenset({"AA", "CA"})

# HL7 table 0357 (message error condition codes).
ERROR_CODES: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}
# Without a specific code from the caller: an error is ours (207); a reject means
# "this message is not for us", which HL7 defines as an unsupported type (200).
_DEFAULT_ERROR_CODE = {"AE": "207", "CE": "207", "AR": "200", "CR": "200"}

_ORIGINAL_CODES: dict[AckOutcome, str] = {"accepted": "AA", "error": "AE", "rejected": "AR"}
_COMMIT_CODES: dict[AckOutcome, str] = {"accepted": "CA", "error": "CE", "rejected": "CR"}

_DEFAULT_PROCESSING_ID = "P"
_DEFAULT_VERSION = "2.5.1"
_ERR_WITH_CWE_SINCE = (2, 5)  # ERR-3/ERR-4/ERR-8 replaced ERR-1 (ELD) in HL7 2.5

# Stands in for the header of input that could not be read at all: default delimiters,
# nothing to echo, so MSA-2 is empty and the receiver fields fall back to app/facility.
_UNKNOWN_SENDER = HL7Header(
    field_sep="|",
    encoding_chars=DEFAULT_ENCODING_CHARS,
    sending_application="",
    sending_facility="",
    receiving_application="",
    receiving_facility="",
    message_type="",
    control_id="",
    processing_id="",
    version="",
    accept_ack_type="",
    app_ack_type="",
    charset="",
)


def ack_mode(header: HL7Header | None) -> AckMode:
    """Original mode when MSH-15 and MSH-16 are both empty, enhanced mode otherwise."""
    if header is None or not (header.accept_ack_type or header.app_ack_type):
        return "original"
    return "enhanced"


def ack_code_for(header: HL7Header | None, outcome: AckOutcome) -> str | None:
    """The MSA-1 code to answer ``outcome`` with, or None when MSH-15 asks for no ACK.

    Original mode: AA/AE/AR, always. Enhanced mode sends commit codes CA/CE/CR as
    MSH-15 asks: AL always, NE never, ER only on error or reject, SU only on success.
    An empty or unknown MSH-15 in enhanced mode is treated as AL: a sender left waiting
    for an answer resends (duplicates), one that gets an unexpected ACK ignores it.
    Meridian never sends application ACKs (MSH-16) itself: those belong to the
    system that finally processes the message.
    """
    if header is None or ack_mode(header) == "original":
        return _ORIGINAL_CODES[outcome]
    condition = header.accept_ack_type.upper()
    send = {
        "NE": False,
        "ER": outcome != "accepted",
        "SU": outcome == "accepted",
    }.get(condition, True)
    return _COMMIT_CODES[outcome] if send else None


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (9,)  # unreadable version: assume a modern one


def _timestamp() -> str:
    return datetime.now().astimezone().strftime("%Y%m%d%H%M%S%z")


def _control_id() -> str:
    # MSH-10 is limited to 20 characters before HL7 2.6; 80 random bits are unique enough.
    return uuid.uuid4().hex[:20]


def _msh(header: HL7Header, app: str, facility: str) -> list[str]:
    comp = header.component_sep
    trigger = header.trigger_event
    message_type = f"ACK{comp}{trigger}{comp}ACK" if trigger else "ACK"
    fields = [
        "MSH",
        header.encoding_chars,
        header.receiving_application or app,
        header.receiving_facility or facility,
        header.sending_application,
        header.sending_facility,
        _timestamp(),
        "",
        message_type,
        _control_id(),
        header.processing_id or _DEFAULT_PROCESSING_ID,
        header.version or _DEFAULT_VERSION,
    ]
    # An unsupported MSH-18 is not echoed: encode() then falls back to the default
    # charset, and the ACK must not claim a charset its bytes are not in.
    if header.charset and is_supported_msh18(header.charset, header.repetition_sep):
        fields += ["", "", "", "", "", header.charset]  # MSH-13..MSH-18
    return fields


def _err(error_code: str, reason: str, header: HL7Header) -> list[str]:
    text = ERROR_CODES[error_code]
    comp = header.component_sep
    if _version_tuple(header.version or _DEFAULT_VERSION) >= _ERR_WITH_CWE_SINCE:
        condition = comp.join((error_code, text, "HL70357"))
        return ["ERR", "", "", condition, "E", "", "", "", reason]
    location = comp * 3 + header.subcomponent_sep.join((error_code, text, "HL70357"))
    return ["ERR", location]


def build_ack(
    header: HL7Header | None,
    code: str,
    reason: str | None = None,
    *,
    error_code: str | None = None,
    app: str = "MERIDIAN",
    facility: str = "MERIDIAN",
) -> str:
    """Build an ACK (CR separated and terminated) answering the message ``header`` describes.

    MSH swaps the inbound sending/receiving application and facility (``app`` and
    ``facility`` fill in an empty receiver), keeps the inbound delimiters, MSH-11, MSH-12
    and MSH-18, and gets a fresh timestamp and control ID. MSA-2 echoes MSH-10. Codes
    other than AA/CA add an ERR segment with the HL7 table 0357 ``error_code`` (default
    207 for AE/CE, 200 for AR/CR): ERR-3/4/8 from HL7 2.5 on, ERR-1 before it.
    ``header=None`` (input that could not be read at all) gives a valid ACK with an empty
    MSA-2. ``reason`` is escaped, so any text is safe.
    """
    if code not in ACK_CODES:
        raise ValueError(f"not an acknowledgement code: {code!r}")
    if error_code is not None and error_code not in ERROR_CODES:
        raise ValueError(f"not an HL7 table 0357 error code: {error_code!r}")
    header = header or _UNKNOWN_SENDER
    safe_reason = escape(reason, header.encoding_chars, header.field_sep) if reason else ""
    msa = ["MSA", code, header.control_id]
    if safe_reason:
        msa.append(safe_reason)
    segments = [_msh(header, app, facility), msa]
    if code not in _POSITIVE_CODES:
        chosen = error_code or _DEFAULT_ERROR_CODE[code]
        segments.append(_err(chosen, safe_reason, header))
    return "".join(header.field_sep.join(fields) + "\r" for fields in segments)
