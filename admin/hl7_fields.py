"""Names of HL7 v2 fields and segments, for showing a message segment by segment.

Field names come from hl7apy's reference tables of the message's version
(``PID_3`` → ``PATIENT_IDENTIFIER_LIST`` → "Patient Identifier List"); a
version hl7apy does not ship falls back to 2.5.1. hl7apy has no segment
descriptions, so the common ones are listed here. Z-segments and anything the
tables do not know get an empty name: the value is still shown.
"""

from __future__ import annotations

from functools import lru_cache

from hl7apy import SUPPORTED_LIBRARIES, load_reference

__all__ = ["DEFAULT_VERSION", "field_name", "reference_version", "segment_description"]

DEFAULT_VERSION = "2.5.1"

# hl7apy writes names in upper snake case; these words keep their own spelling.
_LOWER = frozenset(
    {"a", "an", "and", "as", "at", "by", "for", "from", "in", "of", "on", "or", "to"}
)
_UPPER = frozenset({"ID", "SSN", "UID", "NDC", "PID", "MSH", "OBR", "PV1", "ORC", "URL", "CCD"})

_SEGMENTS = {
    "ABS": "Abstract",
    "ACC": "Accident",
    "AIG": "Appointment Information - General Resource",
    "AIL": "Appointment Information - Location Resource",
    "AIP": "Appointment Information - Personnel Resource",
    "AIS": "Appointment Information",
    "AL1": "Patient Allergy Information",
    "BHS": "Batch Header",
    "BTS": "Batch Trailer",
    "CTI": "Clinical Trial Identification",
    "DG1": "Diagnosis",
    "DSC": "Continuation Pointer",
    "DSP": "Display Data",
    "ERR": "Error",
    "EVN": "Event Type",
    "FHS": "File Header",
    "FTS": "File Trailer",
    "GT1": "Guarantor",
    "IN1": "Insurance",
    "IN2": "Insurance Additional Information",
    "IN3": "Insurance Additional Information, Certification",
    "IPC": "Imaging Procedure Control",
    "MRG": "Merge Patient Information",
    "MSA": "Message Acknowledgment",
    "MSH": "Message Header",
    "NK1": "Next of Kin / Associated Parties",
    "NTE": "Notes and Comments",
    "OBR": "Observation Request",
    "OBX": "Observation/Result",
    "ORC": "Common Order",
    "PD1": "Patient Additional Demographic",
    "PID": "Patient Identification",
    "PR1": "Procedures",
    "PV1": "Patient Visit",
    "PV2": "Patient Visit - Additional Information",
    "QAK": "Query Acknowledgment",
    "QPD": "Query Parameter Definition",
    "QRD": "Original-Style Query Definition",
    "QRF": "Original-Style Query Filter",
    "RCP": "Response Control Parameter",
    "RGS": "Resource Group",
    "ROL": "Role",
    "RXA": "Pharmacy/Treatment Administration",
    "RXO": "Pharmacy/Treatment Order",
    "SCH": "Scheduling Activity Information",
    "SFT": "Software Segment",
    "SPM": "Specimen",
    "TQ1": "Timing/Quantity",
    "TQ2": "Timing/Quantity Relationship",
    "TXA": "Transcription Document Header",
    "UAC": "User Authentication Credential",
}


def reference_version(declared: str | None) -> str:
    """The hl7apy table version to name fields with: ``declared`` if shipped, else 2.5.1."""
    if declared is not None and declared in SUPPORTED_LIBRARIES:
        return declared
    return DEFAULT_VERSION


def segment_description(segment: str) -> str:
    """ "Patient Identification" for PID; "Z-segment" for site-defined ones; else ""."""
    if segment.startswith("Z"):
        return "Z-segment"
    return _SEGMENTS.get(segment, "")


def field_name(segment: str, position: int, version: str) -> str:
    """The standard name of ``segment``-``position`` in ``version`` ("" if none)."""
    return _field_names(segment, reference_version(version)).get(position, "")


@lru_cache(maxsize=512)
def _field_names(segment: str, version: str) -> dict[int, str]:
    # Built once per segment and version: hl7apy's lookup walks nested tuples.
    if not segment.isalnum() or len(segment) != 3 or segment.startswith("Z"):
        return {}
    try:
        reference = load_reference(segment, "Segment", version)
    except Exception:  # hl7apy raises its own assorted types for unknown segments
        return {}
    names: dict[int, str] = {}
    for child in reference[1]:
        code, structure = child[0], child[1]
        _, _, number = code.rpartition("_")
        if number.isdigit():
            names[int(number)] = _humanize(str(structure[3]), segment)
    return names


def _humanize(name: str, segment: str) -> str:
    """``MOTHER_S_MAIDEN_NAME`` → "Mother's Maiden Name"; ``SET_ID_PID`` → "Set ID - PID"."""
    words = name.replace("_S_", "'S_").split("_")
    suffix = ""
    if len(words) > 1 and words[-1] == segment:
        suffix = f" - {segment}"
        words = words[:-1]
    shown = [_word(word, first=index == 0) for index, word in enumerate(words) if word]
    return " ".join(shown) + suffix


def _word(word: str, *, first: bool) -> str:
    if word in _UPPER:
        return word
    lower = word.lower()
    if lower in _LOWER and not first:
        return lower
    return lower[:1].upper() + lower[1:]
