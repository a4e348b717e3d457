"""The PHI net of the hub's logs: a :class:`logging.Filter` masking patient data.

Our own log calls never carry PHI (names, IDs, message content); this is the
net for what third-party libraries log, above all at DEBUG: pynetdicom's and
pydicom's dataset dumps, exception texts quoting values, an HL7 message
echoed by a library. ``meridian`` installs it on the root logger's handlers
(:func:`install`), so every record is masked whichever logger emitted it.

What is masked (the rest of a record stays readable):

* HL7 v2 segments: ``PID|1||12345||DOE^JOHN`` -> ``PID|***`` (every segment,
  up to the end of the line or segment);
* dataset dumps, pydicom's ``(0010,0010) Patient's Name  PN: 'DOE^JOHN'`` and
  pynetdicom's ``(0010,0010) PN [DOE^JOHN]  # 1 PatientName``: the value of
  every patient attribute (group 0010) and of the other identifying
  attributes in :data:`PHI_TAGS`;
* DICOM JSON of those tags: ``"00100010": {...}`` -> ``"00100010": {***}``;
* ``PatientName=...`` / ``'PatientID': '...'`` / ``Patient's Name: ...``.
"""

from __future__ import annotations

import logging
import re

from pydicom._dicom_dict import DicomDictionary
from pydicom.datadict import dictionary_description, keyword_for_tag

__all__ = ["MASK", "PHI_TAGS", "PHIMaskingFilter", "install", "mask_phi"]

MASK = "***"

# Identifying attributes outside the patient group (0010,xxxx), which is masked whole.
PHI_TAGS: frozenset[int] = frozenset(
    {
        0x00080050,  # AccessionNumber
        0x00080080,  # InstitutionName
        0x00080081,  # InstitutionAddress
        0x00080090,  # ReferringPhysicianName
        0x00080092,  # ReferringPhysicianAddress
        0x00080094,  # ReferringPhysicianTelephoneNumbers
        0x00081048,  # PhysiciansOfRecord
        0x00081050,  # PerformingPhysicianName
        0x00081060,  # NameOfPhysiciansReadingStudy
        0x00081070,  # OperatorsName
        0x00200010,  # StudyID
        0x00321032,  # RequestingPhysician
        0x00380010,  # AdmissionID
        0x00400006,  # ScheduledPerformingPhysicianName
        0x00402016,  # PlacerOrderNumberImagingServiceRequest
        0x00402017,  # FillerOrderNumberImagingServiceRequest
        0x0040A123,  # PersonName
    }
)
_PATIENT_GROUP = 0x0010


def _is_phi(tag: int) -> bool:
    return tag >> 16 == _PATIENT_GROUP or tag in PHI_TAGS


def _phi_words() -> list[str]:
    """Keywords and dictionary names of the PHI attributes, longest first."""
    words: set[str] = set()
    for tag in (*PHI_TAGS, *(t for t in DicomDictionary if t >> 16 == _PATIENT_GROUP)):
        words.update(w for w in (keyword_for_tag(tag), dictionary_description(tag)) if w)
    return sorted(words, key=len, reverse=True)


# An HL7 segment: its ID and field separator, then everything to the end of the segment.
_HL7_SEGMENT = re.compile(r"([A-Z][A-Z0-9]{2})\|[^\r\n]*")
# A dump line's tag and the rest of that line.
_DUMP_ELEMENT = re.compile(r"\(([0-9A-Fa-f]{4}),\s?([0-9A-Fa-f]{4})\)([^\r\n]*)")
_PYNETDICOM_VALUE = re.compile(r"^(\s+[A-Z]{2}\s+)\[.*\](?=\s+#)")  # "PN [DOE^JOHN]   # 1 ..."
_PYDICOM_VALUE = re.compile(r"^(.*?\b[A-Z]{2}:\s?).*$")  # "Patient's Name  PN: 'DOE^JOHN'"
_JSON_ELEMENT = re.compile(r"""(['"])([0-9A-Fa-f]{8})\1(\s*:\s*)\{(?:[^{}]|\{[^{}]*\})*\}""")
_KEYWORD_VALUE = re.compile(
    r"\b(" + "|".join(re.escape(word) for word in _phi_words()) + r")"
    r"""(\s*['"]?\s*[:=]\s*)(?:'[^']*'|"[^"]*"|[^,;)}\]\r\n]*)"""
)


def _mask_dump(match: re.Match[str]) -> str:
    tag = int(match.group(1) + match.group(2), 16)
    rest = match.group(3)
    if not _is_phi(tag):
        return match.group(0)
    head = match.group(0)[: match.start(3) - match.start(0)]
    masked, found = _PYNETDICOM_VALUE.subn(rf"\g<1>[{MASK}]", rest, count=1)
    if not found:
        masked, found = _PYDICOM_VALUE.subn(rf"\g<1>{MASK}", rest, count=1)
    return head + (masked if found else f" {MASK}")


def _mask_json(match: re.Match[str]) -> str:
    if not _is_phi(int(match.group(2), 16)):
        return match.group(0)
    quote = match.group(1)
    return f"{quote}{match.group(2)}{quote}{match.group(3)}{{{MASK}}}"


def mask_phi(text: str) -> str:
    """``text`` with HL7 segments and DICOM patient attribute values masked."""
    text = _HL7_SEGMENT.sub(rf"\1|{MASK}", text)
    text = _DUMP_ELEMENT.sub(_mask_dump, text)
    text = _JSON_ELEMENT.sub(_mask_json, text)
    return _KEYWORD_VALUE.sub(rf"\1\2{MASK}", text)


class PHIMaskingFilter(logging.Filter):
    """Rewrites each record's message, exception text and stack with :func:`mask_phi`."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask in place; never drops a record."""
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep only the template
            message = str(record.msg)
        record.msg, record.args = mask_phi(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_phi(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_phi(record.stack_info)
        return True


def install(logger: logging.Logger | None = None) -> PHIMaskingFilter:
    """Add the filter to every handler of ``logger`` (default: the root logger).

    On the handlers, not the logger: a logger's filters do not see records
    propagated from its children (``pynetdicom.assoc`` and so on).
    """
    target = logger or logging.getLogger()
    masking = PHIMaskingFilter()
    for handler in target.handlers:
        if not any(isinstance(f, PHIMaskingFilter) for f in handler.filters):
            handler.addFilter(masking)
    return masking
