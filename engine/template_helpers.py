"""Pure helper functions templates call: HL7 ↔ DICOM value conversions and UIDs.

Every helper here is deterministic except :meth:`UidFactory.new_uid` and the clock
functions, so a template renders the same output for the same message (which is what
makes an XO resend of an order produce the same Study Instance UID as its NW).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime

from pydicom.uid import generate_uid

from engine.errors import ConfigError, TransformError
from engine.hl7_view import HL7Text

__all__ = [
    "DEFAULT_UID_ROOT",
    "Clock",
    "UidFactory",
    "fail",
    "now_da",
    "now_tm",
    "priority_from_hl7",
    "ts_to_da",
    "ts_to_tm",
    "xcn_to_pn",
    "xpn_to_pn",
]

#: pydicom's registered root: fine for tests and small sites, but an organisation should
#: configure its own root (ISO OID arc) so UIDs it generates cannot collide with others'.
DEFAULT_UID_ROOT = "1.2.826.0.1.3680043.8.498."

Clock = Callable[[], datetime]

# HL7 TS/DTM: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]
_TS = re.compile(
    r"(?P<date>\d{4}(?:\d{2}(?:\d{2})?)?)"
    r"(?P<time>\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,4})?)?)?)?"
    r"(?P<zone>[+-]\d{4})?"
)


def _first_component(value: str) -> str:
    # A TS written as a whole field ("20240101^S", v2.3) carries a precision component;
    # HL7Text knows its components exactly, a plain str is taken as is.
    return str(value.part(1).part(1)) if isinstance(value, HL7Text) else value


def _parse_ts(value: str, target: str) -> re.Match[str] | None:
    text = _first_component(value).strip()
    if not text:
        return None
    match = _TS.fullmatch(text)
    if match is None:
        # The length, never the value: it may be a birth date.
        raise TransformError(
            f"cannot make a DICOM {target}: not an HL7 timestamp "
            f"YYYYMMDD[HHMM[SS[.S]]][+/-ZZZZ] ({len(text)} characters)"
        )
    return match


def ts_to_da(ts: str) -> str:
    """HL7 TS → DICOM DA ``YYYYMMDD``; ``""`` when empty.

    The time zone offset is ignored: the date is the sender's local date, which is what
    a modality operator expects. A TS without a day (``"1970"``) cannot be a DA and raises
    :class:`TransformError` rather than inventing a day.
    """
    match = _parse_ts(ts, "date (DA)")
    if match is None:
        return ""
    date = match.group("date")
    if len(date) != 8:
        raise TransformError("cannot make a DICOM date (DA): the HL7 timestamp has no day")
    return date


def ts_to_tm(ts: str) -> str:
    """HL7 TS → DICOM TM ``HHMMSS`` (as precise as the TS: ``HH``, ``HHMM`` or ``HHMMSS``).

    Fractions of a second and the zone offset are dropped; ``""`` when the TS has no time.
    """
    match = _parse_ts(ts, "time (TM)")
    if match is None or not match.group("time"):
        return ""
    return match.group("time").split(".")[0]


def _component(value: str, index: int) -> str:
    """1-based component of an HL7 value; a plain ``str`` is split on ``^``."""
    if isinstance(value, HL7Text):
        return str(value.part(index))
    parts = value.split("^")
    return parts[index - 1] if index <= len(parts) else ""


def _surname(value: str, index: int) -> str:
    """FN.1 of the family-name component: an FN may carry own-surname prefixes after ``&``."""
    if isinstance(value, HL7Text):
        return str(value.part(index).part(1))
    return _component(value, index).split("&")[0]


def _pn(family: str, given: str, middle: str, prefix: str, suffix: str) -> str:
    return "^".join([family, given, middle, prefix, suffix]).rstrip("^")


def xpn_to_pn(xpn: str) -> str:
    """HL7 XPN ``family^given^middle^suffix^prefix`` → PN ``family^given^middle^prefix^suffix``.

    HL7 and DICOM order prefix and suffix differently; trailing empty components are
    trimmed (``DOE^JOHN``). The family name (XPN-1, an FN) is reduced to its surname FN.1.
    """
    return _pn(
        _surname(xpn, 1),
        _component(xpn, 2),
        _component(xpn, 3),
        prefix=_component(xpn, 5),
        suffix=_component(xpn, 4),
    )


def xcn_to_pn(xcn: str) -> str:
    """HL7 XCN ``id^family^given^middle^suffix^prefix`` (ORC-12, OBR-16, PV1-8) → DICOM PN."""
    return _pn(
        _surname(xcn, 2),
        _component(xcn, 3),
        _component(xcn, 4),
        prefix=_component(xcn, 6),
        suffix=_component(xcn, 5),
    )


# HL7 priority (TQ-6, TQ1-9) → DICOM Requested Procedure Priority (0040,1003), whose
# defined terms are STAT, HIGH, ROUTINE, MEDIUM, LOW.
_PRIORITIES = {
    "S": "STAT",
    "STAT": "STAT",
    "A": "HIGH",
    "ASAP": "HIGH",
    "T": "HIGH",  # timing critical
    "R": "ROUTINE",
    "ROUTINE": "ROUTINE",
    "": "ROUTINE",  # no priority given: HL7 defaults TQ-6 to R
}


def priority_from_hl7(code: str) -> str:
    """HL7 priority code → DICOM RequestedProcedurePriority.

    S/STAT → STAT; A/ASAP and T (timing critical) → HIGH; R/ROUTINE or empty → ROUTINE
    (DICOM's own term for routine; HL7 defaults an empty priority to R); any other code
    (P preop, C callback, PRN, ...) → MEDIUM.
    """
    return _PRIORITIES.get(_first_component(code).strip().upper(), "MEDIUM")


class UidFactory:
    """Generates DICOM UIDs under one root: deterministic ``uid_from`` and random ``new_uid``."""

    def __init__(self, root: str = DEFAULT_UID_ROOT) -> None:
        try:
            generate_uid(prefix=root)
        except ValueError as exc:
            raise ConfigError(f"invalid UID root {root!r}: {exc}") from exc
        self.root = root

    def uid_from(self, *parts: object) -> str:
        """A UID derived from ``parts``: the same parts always give the same UID.

        Each part must be non-empty: an order without a placer number would otherwise get
        the same UID as every other such order. Parts are hashed as a JSON list, so
        ``("ab", "c")`` and ``("a", "bc")`` give different UIDs.
        """
        texts = [str(part) for part in parts]
        if not texts or not all(text.strip() for text in texts):
            raise TransformError("uid_from() needs non-empty parts (got an empty value)")
        return str(generate_uid(prefix=self.root, entropy_srcs=[json.dumps(texts)]))

    def new_uid(self) -> str:
        """A fresh random UID under the root."""
        return str(generate_uid(prefix=self.root))


def now_da(clock: Clock) -> str:
    """Today as DICOM DA, from ``clock`` (local time)."""
    return clock().strftime("%Y%m%d")


def now_tm(clock: Clock) -> str:
    """The current time as DICOM TM ``HHMMSS``, from ``clock`` (local time)."""
    return clock().strftime("%H%M%S")


def fail(reason: str) -> None:
    """Stop the transform: ``{{ fail("order has no placer or filler number") }}``."""
    raise TransformError(str(reason))
