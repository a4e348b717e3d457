"""De-identification for external destinations (PS3.15 E.1-1 Basic Profile), and back.

:meth:`Deidentifier.deidentify` returns a de-identified *copy* of an instance for one
destination (the archived original is never touched): the actions of
:mod:`engine.deid_profile`, private tags removed, UIDs replaced consistently (same
original UID → same pseudo UID for the destination, across studies and restarts),
PatientID/PatientName replaced by a stable pseudonym per patient and destination, and
every date shifted by that patient's offset (so intervals between studies survive).

:meth:`Deidentifier.reidentify` maps an AI result referencing those pseudo UIDs back:
known pseudo UIDs become the originals again (UIDs the AI created are kept), the
patient's and study's attributes are restored from the mapping, dates are shifted back.

An instance flagged BurnedInAnnotation YES (or of a modality that often burns text in
without saying so, unless flagged NO) is refused with :class:`PermanentError`: pixel
data is not cleaned here, and refusing is safer than leaking. Messages never quote
values; nothing here logs.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import partial
from typing import Any

from pydicom import DataElement, Dataset, FileMetaDataset, Sequence
from pydicom.config import IGNORE
from pydicom.uid import generate_uid
from sqlalchemy import Engine

from engine.deid_profile import (
    DICOM_UID_ROOT,
    PATIENT_ATTRIBUTES,
    STUDY_ATTRIBUTES,
    DeidConfig,
    default_action,
    effective_actions,
    method_codes,
    shift_date,
)
from engine.deid_tables import DeidStore, PatientRow
from engine.errors import PermanentError, TransformError

__all__ = ["DEIDENTIFICATION_METHOD", "Deidentifier"]

#: De-identification Method (0012,0063) written on every de-identified instance.
DEIDENTIFICATION_METHOD = "MERIDIAN PS3.15 E.1-1 BASIC PROFILE"

_DUMMY = {"AE": "ANONYMIZED", "CS": "ANONYMIZED", "LO": "ANONYMIZED", "LT": "ANONYMIZED",
          "PN": "ANONYMIZED", "SH": "ANONYMIZED", "ST": "ANONYMIZED", "UC": "ANONYMIZED",
          "UT": "ANONYMIZED", "DS": "0", "IS": "0", "AS": "000D", "TM": "000000"}  # fmt: skip
_FILE_META_KEPT = ("FileMetaInformationVersion", "MediaStorageSOPClassUID", "TransferSyntaxUID",
                   "ImplementationClassUID", "ImplementationVersionName")  # fmt: skip
_DEID_MARKERS = ("DeidentificationMethod", "DeidentificationMethodCodeSequence",
                 "LongitudinalTemporalInformationModified")  # fmt: skip
_NAME_TOKENS = re.compile(r"[\^=\s,]+")


@dataclass
class _Walk:
    """The state of one dataset walk: the patient's offset and the UIDs to replace."""

    shift_days: int
    scrub: re.Pattern[str] | None
    uid_elements: list[DataElement] = field(default_factory=list)


class Deidentifier:
    """De-identifies instances for external destinations; re-identifies their results.

    ``engine`` holds the mapping tables (:mod:`engine.deid_tables`, created with the
    store's schema). One instance per profile (destinations with the same options may
    share one: mappings are scoped by the ``destination`` argument, and instances on
    the same database agree). Thread-safe. ``today`` is the clock re-identification uses
    to tell a shifted date from a date the AI wrote itself.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        uid_root: str = "2.25.",
        retain_device_identity: bool = False,
        retain_patient_characteristics: bool = False,
        clean_descriptors: bool = False,
        today: Callable[[], date] = date.today,
    ) -> None:
        options = DeidConfig(
            uid_root=uid_root,
            retain_device_identity=retain_device_identity,
            retain_patient_characteristics=retain_patient_characteristics,
            clean_descriptors=clean_descriptors,
        )
        self._store = DeidStore(engine)
        self._today = today
        self._configure(options)

    @classmethod
    def from_config(
        cls, engine: Engine, config: DeidConfig, *, today: Callable[[], date] = date.today
    ) -> Deidentifier:
        """A de-identifier for a destination's ``deidentify:`` block (every option)."""
        deidentifier = cls(engine, today=today)
        deidentifier._configure(config)
        return deidentifier

    def _configure(self, config: DeidConfig) -> None:
        self.config = config
        self._actions = effective_actions(config)
        self._refused_unmarked = frozenset(config.refuse_unmarked_modalities)
        self._codes = method_codes(config)

    # -- de-identification ---------------------------------------------------------

    def deidentify(self, ds: Dataset, *, destination: str) -> Dataset:
        """A de-identified copy of ``ds`` for ``destination``; ``ds`` is left untouched.

        Raises :class:`PermanentError` for an image that may carry burned-in text and
        :class:`~engine.errors.StoreError` when the mapping tables cannot be used.
        """
        self._refuse_burned_in(ds)
        patient = self._patient(ds, destination)
        walk = _Walk(
            patient.date_shift_days, _scrubber(ds) if self.config.clean_descriptors else None
        )
        out = self._clean(ds, walk)
        mapping = self._store.pseudo_uids(destination, _uids_of(walk.uid_elements), self._new_uid)
        _replace_uids(walk.uid_elements, mapping)
        self._mark(out, patient)
        if hasattr(ds, "file_meta"):
            out.file_meta = _file_meta(ds.file_meta, out)
        study_uid = str(ds.get("StudyInstanceUID") or "")
        if study_uid:
            study = partial(_study_attributes, ds)
            self._store.remember_study(destination, study_uid, patient.pseudo_id, study)
        return out

    def _refuse_burned_in(self, ds: Dataset) -> None:
        flag = str(ds.get("BurnedInAnnotation") or "").strip().upper()
        if flag == "YES":
            raise PermanentError("burned-in annotation: not sent to an external destination")
        modality = str(ds.get("Modality") or "").strip().upper()
        if flag != "NO" and modality in self._refused_unmarked:
            raise PermanentError(
                f"{modality} image without BurnedInAnnotation NO: may carry burned-in text, "
                "not sent to an external destination"
            )

    def _patient(self, ds: Dataset, destination: str) -> PatientRow:
        original_id, issuer = _patient_key(ds)

        def make() -> PatientRow:
            code = secrets.token_hex(6).upper()
            low, high = self.config.min_date_shift_days, self.config.max_date_shift_days
            return PatientRow(
                pseudo_id=f"{self.config.pseudonym_prefix}{code}",
                pseudo_name=f"{self.config.pseudonym_prefix}^{code}",
                date_shift_days=-(low + secrets.randbelow(high - low + 1)),
                demographics=_subset(ds, PATIENT_ATTRIBUTES).to_json_dict(),
            )

        return self._store.patient(destination, original_id, issuer, make)

    def _new_uid(self) -> str:
        root = self.config.uid_root
        if root == "2.25.":
            return f"2.25.{uuid.uuid4().int}"  # PS3.5 B.2: a UUID as a UID
        return str(generate_uid(prefix=root))

    def _clean(self, source: Dataset, walk: _Walk) -> Dataset:
        """A new dataset holding the cleaned elements of ``source`` (recursively)."""
        out = Dataset()
        for elem in source:
            cleaned = self._clean_element(elem, walk)
            if cleaned is not None:
                out.add(cleaned)
        return out

    def _clean_element(self, elem: DataElement, walk: _Walk) -> DataElement | None:
        tag = elem.tag
        if tag.is_private or tag.element == 0 or _curve_or_overlay(tag.group):
            return None  # private data, group lengths, curves and overlays (may hold text)
        action = self._actions.get(tag) or default_action(elem.keyword, elem.VR)
        if action == "X" or (action == "D" and elem.VR not in _DUMMY):
            return None
        if action == "Z":
            return _new(elem, Sequence() if elem.VR == "SQ" else None)
        if action == "D":
            return _new(elem, _DUMMY[elem.VR])
        if elem.VR == "SQ":
            return _new(elem, Sequence([self._clean(item, walk) for item in elem.value]))
        if elem.VR == "UI" and action == "U":
            copied = _new(elem, _copy_value(elem))
            walk.uid_elements.append(copied)
            return copied
        if action == "C" and elem.VR in ("DA", "DT"):
            shifted = _shift_value(elem, walk.shift_days)
            return None if shifted is None else _new(elem, shifted)
        if action == "C" and walk.scrub is not None and isinstance(elem.value, str):
            return _new(elem, _scrub(walk.scrub, elem.value))
        return _new(elem, _copy_value(elem))

    def _mark(self, out: Dataset, patient: PatientRow) -> None:
        """Pseudonym and the de-identification attributes of PS3.15 E.1 / PS3.3 C.7.1.1."""
        out.PatientID = patient.pseudo_id
        out.PatientName = patient.pseudo_name
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = DEIDENTIFICATION_METHOD
        codes = []
        for value, meaning in self._codes:
            code = Dataset()
            code.CodeValue = value
            code.CodingSchemeDesignator = "DCM"
            code.CodeMeaning = meaning
            codes.append(code)
        out.DeidentificationMethodCodeSequence = Sequence(codes)
        out.LongitudinalTemporalInformationModified = "MODIFIED"

    # -- re-identification -------------------------------------------------------------

    def reidentify(self, ds: Dataset, *, destination: str) -> Dataset:
        """A copy of the result ``ds`` with the originals of ``destination``'s pseudonyms.

        Raises :class:`TransformError` when the result references no patient or study
        de-identified for ``destination`` (it cannot be filed under a real patient).
        """
        out = _deep_copy(ds)
        elements: list[DataElement] = []
        _collect_uids(out, elements)
        _replace_uids(elements, self._store.original_uids(destination, _uids_of(elements)))
        study_uid = str(out.get("StudyInstanceUID") or "")
        study = self._store.study(destination, study_uid) if study_uid else None
        pseudo_id = str(out.get("PatientID") or "")
        patient = self._store.patient_by_pseudonym(destination, pseudo_id) if pseudo_id else None
        if patient is None and study is not None:
            patient = self._store.patient_by_pseudonym(destination, study.pseudo_patient_id)
        if patient is None:
            raise TransformError(
                f"re-identification: the result references no patient or study "
                f"de-identified for destination {destination!r}"
            )
        latest = self._today() + timedelta(days=patient.date_shift_days)
        _unshift(out, -patient.date_shift_days, latest)
        _restore(out, PATIENT_ATTRIBUTES, patient.demographics)
        if study is not None:
            _restore(out, STUDY_ATTRIBUTES, study.attributes)
        for keyword in _DEID_MARKERS:
            if keyword in out:
                delattr(out, keyword)
        if "PatientIdentityRemoved" in out:
            out.PatientIdentityRemoved = "NO"
        if hasattr(out, "file_meta") and "SOPInstanceUID" in out:
            out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        return out


# -- helpers: datasets ---------------------------------------------------------------


def _new(elem: DataElement, value: Any) -> DataElement:
    # IGNORE: values come from the original as they are; validating would warn on
    # every vendor quirk without making the copy any safer.
    return DataElement(elem.tag, elem.VR, value, validation_mode=IGNORE)


def _copy_value(elem: DataElement) -> Any:
    return list(elem.value) if elem.VM > 1 and elem.VR != "SQ" else elem.value


def _deep_copy(ds: Dataset) -> Dataset:
    out = Dataset()
    for elem in ds:
        out.add(_copy_element(elem))
    if hasattr(ds, "file_meta"):
        out.file_meta = FileMetaDataset(_deep_copy(ds.file_meta))
    return out


def _copy_element(elem: DataElement) -> DataElement:
    if elem.VR == "SQ":
        return _new(elem, Sequence([_deep_copy(item) for item in elem.value]))
    return _new(elem, _copy_value(elem))


def _subset(ds: Dataset, keywords: tuple[str, ...]) -> Dataset:
    """The attributes of ``keywords`` that ``ds`` has (copied), for the mapping tables."""
    out = Dataset()
    for keyword in keywords:
        if keyword in ds:
            out.add(_copy_element(ds[keyword]))
    return out


def _study_attributes(ds: Dataset) -> dict[str, Any]:
    return _subset(ds, STUDY_ATTRIBUTES).to_json_dict()


def _curve_or_overlay(group: int) -> bool:
    return 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF


def _patient_key(ds: Dataset) -> tuple[str, str]:
    """(original patient id, issuer); an image without PatientID is its study's own patient."""
    patient_id = str(ds.get("PatientID") or "").strip()
    issuer = str(ds.get("IssuerOfPatientID") or "").strip()
    if patient_id:
        return patient_id, issuer
    study_uid = str(ds.get("StudyInstanceUID") or ds.get("SOPInstanceUID") or "")
    return f"~study:{study_uid}", issuer


def _file_meta(source: FileMetaDataset, out: Dataset) -> FileMetaDataset:
    """The file meta of the copy: no AE titles of the sender, the new SOP Instance UID."""
    meta = FileMetaDataset()
    for keyword in _FILE_META_KEPT:
        if keyword in source:
            setattr(meta, keyword, source[keyword].value)
    if "SOPInstanceUID" in out:
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return meta


def _restore(out: Dataset, keywords: tuple[str, ...], stored: dict[str, Any]) -> None:
    """Set ``keywords`` to their stored originals (absent originally → removed)."""
    originals = Dataset.from_json(stored)
    for keyword in keywords:
        if keyword in originals:
            out.add(originals[keyword])
        elif keyword in out:
            delattr(out, keyword)
    if any(not str(elem.value or "").isascii() for elem in originals if elem.VR != "SQ"):
        # Original names may not fit the AI's character set: UTF-8 holds them all.
        out.SpecificCharacterSet = "ISO_IR 192"


# -- helpers: UIDs -------------------------------------------------------------------


def _uids_of(elements: list[DataElement]) -> set[str]:
    return {uid for elem in elements for uid in _values(elem) if _replaceable(uid)}


def _values(elem: DataElement) -> list[str]:
    if elem.value is None or elem.value == "":
        return []
    return [str(v) for v in elem.value] if elem.VM > 1 else [str(elem.value)]


def _replaceable(uid: str) -> bool:
    return bool(uid) and not uid.startswith(DICOM_UID_ROOT)


def _replace_uids(elements: list[DataElement], mapping: dict[str, str]) -> None:
    for elem in elements:
        values = [mapping.get(uid, uid) for uid in _values(elem)]
        if values:
            elem.value = values if elem.VM > 1 else values[0]


def _collect_uids(ds: Dataset, found: list[DataElement]) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _collect_uids(item, found)
        elif elem.VR == "UI":
            found.append(elem)


# -- helpers: dates and text ---------------------------------------------------------


def _shift_value(elem: DataElement, days: int, latest: date | None = None) -> Any:
    """The shifted value of a DA/DT element, or ``None`` (drop it) when one cannot shift."""
    shifted = [shift_date(v, days, latest) for v in _values(elem)]
    if any(v is None for v in shifted):
        return None  # a partial or malformed date could still identify: removed
    if not shifted:
        return elem.value
    return shifted if elem.VM > 1 else shifted[0]


def _unshift(ds: Dataset, days: int, latest: date) -> None:
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _unshift(item, days, latest)
        elif elem.VR in ("DA", "DT"):
            restored = _shift_value(elem, days, latest)
            if restored is not None:
                elem.value = restored


def _scrubber(ds: Dataset) -> re.Pattern[str] | None:
    """A pattern matching the patient's own identifiers as whole words (Clean Descriptors)."""
    tokens = {str(ds.get(k) or "") for k in ("PatientID", "AccessionNumber", "PatientBirthDate")}
    tokens.update(_NAME_TOKENS.split(str(ds.get("PatientName") or "")))
    others = ds.get("OtherPatientIDs") or []
    tokens.update([others] if isinstance(others, str) else [str(v) for v in others])
    words = sorted((t for t in tokens if len(t) >= 2), key=len, reverse=True)
    if not words:
        return None
    alternatives = "|".join(re.escape(word) for word in words)
    return re.compile(rf"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])", re.IGNORECASE)


def _scrub(pattern: re.Pattern[str], text: str) -> str:
    return " ".join(pattern.sub(" ", text).split())
