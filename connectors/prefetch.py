"""Prior-study prefetch: when an order arrives, have the PACS send the patient's priors.

The payload is a :class:`~engine.worklist_item.WorklistItem`; only ``create``
triggers a prefetch. Over one association with the PACS (Study Root):

1. C-FIND at STUDY level for the order's PatientID (with ``match_issuer``,
   also its issuer when it has one), studies dated within ``lookback_days``;
2. choose priors (:func:`select_priors`): not the order's own study, of the
   wanted modalities, optionally sharing a body-part word with the order, the
   newest ``max_studies`` first;
3. C-MOVE each chosen study to ``move_destination`` (the reading workstation,
   or the hub itself).

Selection rules, in order:

- **Modality**: ``modalities`` when configured, else the order's own modality
  (from its Scheduled Procedure Steps). A prior qualifies when its
  ModalitiesInStudy shares one; a prior whose PACS returns no
  ModalitiesInStudy does not qualify (moving unrelated studies costs more
  than missing one). An order with no modality and no ``modalities``
  configured accepts every modality.
- **Body part** (``body_part_match: true``): the order's
  RequestedProcedureDescription (else its step description) and the prior's
  StudyDescription + BodyPartExamined are cut into words (letters and digits,
  upper-cased, at least 3 characters, ignoring words that say nothing about
  anatomy: WITH, WITHOUT, CONTRAST, modality names...). A prior qualifies
  when the two share a word: "CT CHEST W/O CONTRAST" matches a prior
  "CHEST PA AND LATERAL" or one whose BodyPartExamined is CHEST. As
  BodyPartExamined is a series attribute that many PACS leave empty in
  study-level answers, a prior not matched by its description is asked for
  its series' BodyPartExamined (one SERIES-level C-FIND, newest first, only
  until enough priors are chosen). An order without a description matches
  nothing under this rule.
- **Newest first**: by StudyDate then StudyTime; undated priors come last.

Errors: PACS unreachable, association rejected or lost, 0xA7xx -> RecoverableError;
C-FIND or C-MOVE refused (any other failure status) -> PermanentError, after
the remaining moves were tried. A C-MOVE ending with warning 0xB000 (some
instances not sent) counts as moved, reported in the delivery detail. No PHI
is logged or returned: counts, AE titles, statuses and study UIDs only.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom import build_context
from pynetdicom.association import Association

from connectors.base import Delivery
from connectors.dicom_scu import AETitle, Peer, StatusKind, classify_status, lost, open_association
from connectors.dicom_tls import tls_args
from connectors.tls_config import ClientTLSConfig
from engine.errors import PermanentError, RecoverableError
from engine.worklist_item import WorklistItem

__all__ = ["Order", "PrefetchConfig", "PrefetchDestination", "Prior", "select_priors", "words"]

log = logging.getLogger(__name__)

# pynetdicom.sop_class builds its names at import time, invisible to mypy.
STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")
STUDY_ROOT_MOVE = UID("1.2.840.10008.5.1.4.1.2.2.2")
RETURN_KEYS = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "ModalitiesInStudy", "StudyDescription",
    "BodyPartExamined",
)  # fmt: skip

# Words that appear in procedure descriptions without naming a body part.
NOISE_WORDS = frozenset({
    "AND", "THE", "FOR", "WITH", "WITHOUT", "CONTRAST", "NON", "ROUTINE", "PROTOCOL", "EXAM",
    "STUDY", "SCAN", "VIEW", "VIEWS", "LEFT", "RIGHT", "BILATERAL", "LIMITED", "COMPLETE",
    "FOLLOW", "PORTABLE", "IMAGING", "IMAGE", "IMAGES", "MRI", "MRA", "CTA", "PET", "XRAY", "RAD",
})  # fmt: skip
_WORD = re.compile(r"[A-Z0-9]+")
_LISTED_FAILURES = 5


class PrefetchConfig(BaseModel):
    """Prior-study prefetch from a PACS (``type: prefetch``)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["prefetch"]
    host: str = Field(min_length=1, description="the PACS")
    port: int = Field(ge=1, le=65535)
    ae_title: AETitle = Field(description="the PACS's (called) AE title")
    calling_ae_title: AETitle = "MERIDIAN"
    move_destination: AETitle = Field(description="AE title the PACS moves priors to")
    modalities: list[str] | None = Field(
        default=None, description="modalities of priors to fetch; null: the order's modality"
    )
    max_studies: int = Field(default=3, ge=1)
    lookback_days: int = Field(default=3650, ge=1)
    body_part_match: bool = False
    match_issuer: bool = Field(
        default=False,
        description="also match IssuerOfPatientID; off by default: most PACS do not store it",
    )
    timeout_seconds: float = Field(default=30, gt=0, description="connect, ACSE, C-FIND")
    move_timeout_seconds: float = Field(
        default=600, gt=0, description="longest wait for a C-MOVE (whole study) response"
    )
    tls: ClientTLSConfig | None = Field(
        default=None, description="associate over TLS (cafile verifies the PACS)"
    )

    @field_validator("modalities")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [m.strip().upper() for m in value if m.strip()]


@dataclass(frozen=True)
class Order:
    """What prefetch needs from a worklist item."""

    patient_id: str
    issuer: str | None
    study_uid: str | None
    modalities: frozenset[str]
    description: str

    @classmethod
    def from_item(cls, item: WorklistItem) -> Order | None:
        """The order, or None when it names no patient."""
        attrs = item.attributes
        patient_id = _text(attrs.get("PatientID"))
        if not patient_id:
            return None
        steps = [
            s for s in attrs.get("ScheduledProcedureStepSequence") or [] if isinstance(s, dict)
        ]
        modalities = {_text(s.get("Modality")).upper() for s in steps}
        modalities.add(_text(attrs.get("Modality")).upper())
        step_descriptions = (_text(s.get("ScheduledProcedureStepDescription")) for s in steps)
        description = _text(attrs.get("RequestedProcedureDescription")) or next(
            (d for d in step_descriptions if d), ""
        )
        return cls(
            patient_id=patient_id,
            issuer=_text(attrs.get("IssuerOfPatientID")) or None,
            study_uid=_text(attrs.get("StudyInstanceUID")) or None,
            modalities=frozenset(m for m in modalities if m),
            description=description,
        )


@dataclass(frozen=True)
class Prior:
    """One study the PACS holds for the patient."""

    study_uid: str
    date: str
    time: str
    modalities: frozenset[str]
    description: str
    body_part: str

    @classmethod
    def from_identifier(cls, ds: Dataset) -> Prior | None:
        """A C-FIND response identifier as a prior; None without a Study Instance UID."""
        uid = _text(ds.get("StudyInstanceUID"))
        if not uid:
            return None
        raw = ds.get("ModalitiesInStudy")
        values = [raw] if isinstance(raw, str) else list(raw or [])
        return cls(
            study_uid=uid,
            date=_text(ds.get("StudyDate")),
            time=_text(ds.get("StudyTime")),
            modalities=frozenset(_text(v).upper() for v in values if _text(v)),
            description=_text(ds.get("StudyDescription")),
            body_part=_text(ds.get("BodyPartExamined")),
        )


def _text(value: Any) -> str:
    """A DICOM or YAML value as stripped text ('' for None); YAML may give numbers."""
    return "" if value is None else str(value).strip()


def words(text: str) -> set[str]:
    """The body-part words of a description (see the module docstring)."""
    return {w for w in _WORD.findall(text.upper()) if len(w) >= 3 and w not in NOISE_WORDS}


def select_priors(
    priors: Iterable[Prior],
    order: Order,
    config: PrefetchConfig,
    series_body_parts: Callable[[str], str] | None = None,
) -> list[Prior]:
    """The priors to move, newest first (rules in the module docstring).

    ``series_body_parts(study_uid)`` gives a study's series-level BodyPartExamined
    values when the study-level answer had none; it is asked only for candidates
    the body-part rule still has to decide, newest first, until enough are chosen.
    """
    wanted = frozenset(config.modalities) if config.modalities is not None else order.modalities
    candidates = [
        prior
        for prior in priors
        if prior.study_uid != order.study_uid and (not wanted or prior.modalities & wanted)
    ]
    candidates.sort(key=lambda p: (p.date, p.time), reverse=True)  # '' (undated) sorts last
    if not config.body_part_match:
        return candidates[: config.max_studies]
    order_words = words(order.description)
    chosen: list[Prior] = []
    for prior in candidates:
        if len(chosen) == config.max_studies:
            break
        if _shares_body_part(prior, order_words, series_body_parts):
            chosen.append(prior)
    return chosen


def _shares_body_part(
    prior: Prior, order_words: set[str], series_body_parts: Callable[[str], str] | None
) -> bool:
    if not order_words:
        return False
    if order_words & words(f"{prior.description} {prior.body_part}"):
        return True
    if prior.body_part or series_body_parts is None:
        return False
    # BodyPartExamined is a series attribute: many PACS (Orthanc) return it empty per study.
    return bool(order_words & words(series_body_parts(prior.study_uid)))


def study_query(order: Order, since: date, *, match_issuer: bool = False) -> Dataset:
    """The Study Root C-FIND identifier for the order's patient."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = order.patient_id
    if match_issuer and order.issuer:
        query.IssuerOfPatientID = order.issuer
    for keyword in RETURN_KEYS:
        setattr(query, keyword, "")
    query.StudyDate = f"{since:%Y%m%d}-"
    return query


class PrefetchDestination:
    """Moves an ordered patient's relevant priors from the PACS to ``move_destination``."""

    def __init__(self, config: PrefetchConfig) -> None:
        self.config = config
        self._peer = Peer(
            host=config.host,
            port=config.port,
            called_ae=config.ae_title,
            calling_ae=config.calling_ae_title,
            timeout=config.timeout_seconds,
            max_pdu=16382,
            tls=tls_args(config.tls, config.host),
        )

    async def send(self, payload: str) -> Delivery:
        """Prefetch for a ``create`` worklist item; other actions do nothing."""
        try:
            item = WorklistItem.model_validate_json(payload)
        except ValidationError as exc:
            raise PermanentError(
                f"not a worklist item: {exc.error_count()} validation error(s)"
            ) from exc
        if item.action != "create":
            return Delivery(response="nothing to prefetch", detail=f"action {item.action}")
        order = Order.from_item(item)
        if order is None:
            return Delivery(response="nothing to prefetch", detail="the order has no PatientID")
        return await asyncio.to_thread(self._prefetch, order)

    async def close(self) -> None:
        """Nothing to release: each send opens and closes its own association."""

    def _prefetch(self, order: Order) -> Delivery:
        since = date.today() - timedelta(days=self.config.lookback_days)
        contexts = [build_context(STUDY_ROOT_FIND), build_context(STUDY_ROOT_MOVE)]
        with open_association(self._peer, contexts) as assoc:
            query = study_query(order, since, match_issuer=self.config.match_issuer)
            found = [
                prior
                for ds in self._find(assoc, query)
                if (prior := Prior.from_identifier(ds)) is not None
            ]
            chosen = select_priors(
                found, order, self.config, lambda uid: self._series_body_parts(assoc, uid)
            )
            assoc.dimse_timeout = self.config.move_timeout_seconds
            assoc.network_timeout = self.config.move_timeout_seconds
            moved, warned, failed = self._move_all(assoc, chosen)
        log.info(
            "prefetch from %s to %s: %d studies found, %d chosen, %d moved, %d failed",
            self._peer, self.config.move_destination, len(found), len(chosen), len(moved),
            len(failed),
        )  # fmt: skip
        summary = f"moved {len(moved)} of {len(chosen)} priors"
        if failed:
            listed = "; ".join(failed[:_LISTED_FAILURES])
            raise PermanentError(
                f"C-MOVE to {self.config.move_destination} refused for {len(failed)} "
                f"studies: {listed}; {summary}"
            )
        detail = f"{len(found)} studies found; moved: {', '.join(moved) or 'none'}"
        if warned:
            detail += f"; with warnings (some instances not sent): {', '.join(warned)}"
        return Delivery(response=summary, detail=detail)

    def _find(self, assoc: Association, query: Dataset) -> list[Dataset]:
        """C-FIND at the PACS; the matches' identifiers."""
        matches: list[Dataset] = []
        for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
            code: int | None = getattr(status, "Status", None)
            if code is None:
                raise lost(self._peer, "C-FIND")
            kind = classify_status(code)
            if kind == StatusKind.PENDING and identifier is not None:
                matches.append(identifier)
            elif kind == StatusKind.RECOVERABLE:
                raise RecoverableError(f"{self._peer} is out of resources (C-FIND 0x{code:04X})")
            elif kind == StatusKind.PERMANENT:
                raise PermanentError(f"{self._peer} refused the C-FIND: status 0x{code:04X}")
        return matches

    def _series_body_parts(self, assoc: Association, study_uid: str) -> str:
        """The BodyPartExamined values of a study's series, space separated."""
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        query.BodyPartExamined = ""
        return " ".join(_text(ds.get("BodyPartExamined")) for ds in self._find(assoc, query))

    def _move_all(
        self, assoc: Association, chosen: Sequence[Prior]
    ) -> tuple[list[str], list[str], list[str]]:
        """C-MOVE each prior; returns the UIDs moved, moved with warnings, and failures."""
        moved: list[str] = []
        warned: list[str] = []
        failed: list[str] = []
        for prior in chosen:
            code = self._move(assoc, prior.study_uid)
            kind = classify_status(code)
            if kind == StatusKind.RECOVERABLE:
                raise RecoverableError(
                    f"{self._peer} is out of resources (C-MOVE 0x{code:04X}); "
                    f"moved {len(moved)} of {len(chosen)} priors"
                )
            if kind == StatusKind.PERMANENT:
                failed.append(f"study {prior.study_uid}: status 0x{code:04X}")
                continue
            moved.append(prior.study_uid)
            if kind == StatusKind.WARNING:
                warned.append(prior.study_uid)
        return moved, warned, failed

    def _move(self, assoc: Association, study_uid: str) -> int:
        """C-MOVE one study; returns the final status."""
        if not assoc.is_established:
            raise lost(self._peer, "C-MOVE")
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid
        responses = assoc.send_c_move(identifier, self.config.move_destination, STUDY_ROOT_MOVE)
        final: int | None = None
        for status, _ in responses:
            code: int | None = getattr(status, "Status", None)
            if code is None:
                raise lost(self._peer, "C-MOVE")
            final = code
        if final is None:
            raise lost(self._peer, "C-MOVE")
        return final
