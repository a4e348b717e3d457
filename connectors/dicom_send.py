"""DICOM C-STORE SCU destination: send a study batch to a PACS or an AI node.

The payload is a :class:`~engine.study_batch.StudyBatch`. Every instance is
read from the hub's disk, optionally prepared (normalization,
de-identification: ``prepare_instance``) and C-STOREd over one association,
in a worker thread because pynetdicom blocks.

Instances go as stored: for each SOP class we propose one presentation
context per stored compressed transfer syntax, plus one uncompressed context
(Explicit then Implicit VR Little Endian). Only when the peer refuses the
stored syntax and accepts uncompressed do we decompress, if pydicom can
(it needs numpy and a decoder). A study with more than 128 contexts' worth of
SOP classes is sent over several associations, one after the other.

Outcomes: unreachable peer, rejected or lost association, 0xA7xx (out of
resources) -> RecoverableError, the whole batch is retried (a PACS accepts an
instance it already has). A refused instance (0xA9xx, 0xCxxx, SOP class or
transfer syntax not accepted, unreadable file) -> PermanentError naming the
SOP Instance UIDs and statuses, after the other instances have been sent.
Warnings (0xBxxx) count as stored. No PHI in messages or logs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydicom import Dataset, dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from connectors.base import Delivery
from connectors.dicom_scu import AETitle, Peer, StatusKind, classify_status, lost, open_association
from connectors.dicom_tls import tls_args
from connectors.tls_config import ClientTLSConfig
from engine.errors import EngineError, PermanentError, RecoverableError
from engine.study_batch import InstanceRef, StudyBatch

__all__ = [
    "MAX_CONTEXTS",
    "DicomSendConfig",
    "DicomSendDestination",
    "PrepareInstance",
    "plan_associations",
]

log = logging.getLogger(__name__)

PrepareInstance = Callable[[Dataset], Dataset]

# PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255.
MAX_CONTEXTS = 128
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_LISTED_FAILURES = 5


class DicomSendConfig(BaseModel):
    """A C-STORE destination (``type: dicom``)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["dicom"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    ae_title: AETitle = Field(description="the peer's (called) AE title")
    calling_ae_title: AETitle = "MERIDIAN"
    timeout_seconds: float = Field(default=30, gt=0, description="connect, ACSE and DIMSE")
    max_pdu: int = Field(
        default=16382, ge=0, description="largest PDU we accept from the peer; 0 = no limit"
    )
    tls: ClientTLSConfig | None = Field(
        default=None, description="associate over TLS (cafile verifies the peer)"
    )


@dataclass(frozen=True)
class AssociationPlan:
    """The instances sent over one association and the contexts it proposes."""

    contexts: list[PresentationContext]
    instances: list[InstanceRef]


def _contexts_for(sop_class: str, syntaxes: Iterable[str]) -> list[PresentationContext]:
    """One context per stored non-uncompressed syntax, then the uncompressed fallback."""
    stored = [UID(ts) for ts in dict.fromkeys(syntaxes) if UID(ts) not in UNCOMPRESSED]
    contexts = [build_context(sop_class, [ts]) for ts in stored]
    contexts.append(build_context(sop_class, list(UNCOMPRESSED)))
    return contexts


def plan_associations(instances: Sequence[InstanceRef]) -> list[AssociationPlan]:
    """Group the batch by SOP class into associations of at most MAX_CONTEXTS contexts.

    Almost always one association; order of instances within a SOP class is kept.
    """
    by_class: dict[str, list[InstanceRef]] = {}
    for ref in instances:
        by_class.setdefault(ref.sop_class_uid, []).append(ref)
    plans: list[AssociationPlan] = []
    for sop_class, refs in by_class.items():
        contexts = _contexts_for(sop_class, (ref.transfer_syntax_uid for ref in refs))
        if len(contexts) > MAX_CONTEXTS:  # one class in >127 syntaxes: not a real study
            raise PermanentError(f"too many transfer syntaxes for SOP class {sop_class}")
        if not plans or len(plans[-1].contexts) + len(contexts) > MAX_CONTEXTS:
            plans.append(AssociationPlan([], []))
        plans[-1].contexts.extend(contexts)
        plans[-1].instances.extend(refs)
    return plans


@dataclass
class _Outcome:
    """What happened to a batch's instances so far."""

    stored: int = 0
    warnings: int = 0
    refused: list[str] = field(default_factory=list)


class _Refused(Exception):  # noqa: N818 - internal signal, never leaves this module
    """This instance cannot be sent to this peer; the text is PHI-free."""


class DicomSendDestination:
    """Sends study batches to one DICOM node with C-STORE."""

    def __init__(
        self, config: DicomSendConfig, *, prepare_instance: PrepareInstance | None = None
    ) -> None:
        self.config = config
        self._prepare = prepare_instance
        # Set by close(): a batch still sending in its worker thread stops at the next instance.
        self._closing = threading.Event()
        self._peer = Peer(
            host=config.host,
            port=config.port,
            called_ae=config.ae_title,
            calling_ae=config.calling_ae_title,
            timeout=config.timeout_seconds,
            max_pdu=config.max_pdu,
            tls=tls_args(config.tls, config.host),
        )

    async def send(self, payload: str) -> Delivery:
        """C-STORE every instance of the batch; see the module docstring for errors."""
        batch = _parse(payload)
        outcome = await asyncio.to_thread(self._send_batch, batch)
        detail = f"{self._peer}; {outcome.warnings} with warning status"
        return Delivery(response=f"stored {outcome.stored} instances", detail=detail)

    async def close(self) -> None:
        """Stop a batch in flight at its next instance (it will be retried after restart)."""
        self._closing.set()

    def _send_batch(self, batch: StudyBatch) -> _Outcome:
        outcome = _Outcome()
        for plan in plan_associations(batch.instances):
            with open_association(self._peer, plan.contexts) as assoc:
                busy = self._send_instances(assoc, plan.instances, outcome)
            if busy is not None:
                raise RecoverableError(
                    f"{self._peer} is out of resources ({busy}); "
                    f"{outcome.stored} of {len(batch.instances)} instances stored"
                )
        log.info(
            "sent %d instance(s) to %s (%d warning(s), %d refused)",
            outcome.stored, self._peer, outcome.warnings, len(outcome.refused),
        )  # fmt: skip
        if outcome.refused:
            listed = "; ".join(outcome.refused[:_LISTED_FAILURES])
            more = len(outcome.refused) - _LISTED_FAILURES
            raise PermanentError(
                f"{self._peer} refused {len(outcome.refused)} of {len(batch.instances)} "
                f"instances: {listed}" + (f"; and {more} more" if more > 0 else "")
            )
        return outcome

    def _send_instances(
        self, assoc: Association, refs: Sequence[InstanceRef], outcome: _Outcome
    ) -> str | None:
        """Send ``refs``, recording the outcome; returns a status text if the peer is busy."""
        for ref in refs:
            if self._closing.is_set():
                raise RecoverableError(f"sending to {self._peer} interrupted: destination closed")
            if not assoc.is_established:
                raise lost(self._peer, "C-STORE")
            try:
                ds = _fit_to_contexts(assoc, self._load(ref))
                status = assoc.send_c_store(ds)
            except _Refused as exc:
                outcome.refused.append(f"{ref.sop_instance_uid}: {exc}")
                continue
            except ValueError as exc:  # pynetdicom: no context for the dataset's syntax
                outcome.refused.append(f"{ref.sop_instance_uid}: {_first_line(exc)}")
                continue
            code: int | None = getattr(status, "Status", None)
            if code is None:  # empty status: aborted, connection lost or DIMSE timeout
                raise lost(self._peer, "C-STORE")
            kind = classify_status(code)
            if kind == StatusKind.RECOVERABLE:
                return f"status 0x{code:04X}"
            if kind in (StatusKind.SUCCESS, StatusKind.WARNING):
                outcome.stored += 1
                if kind == StatusKind.WARNING:
                    outcome.warnings += 1
            else:
                outcome.refused.append(f"{ref.sop_instance_uid}: status 0x{code:04X}")
        return None

    def _load(self, ref: InstanceRef) -> Dataset:
        """Read the instance file and prepare it; any failure refuses this instance."""
        try:
            ds = dcmread(ref.path)
        except OSError as exc:
            raise _Refused(
                f"cannot read the instance file ({exc.strerror or 'I/O error'})"
            ) from exc
        except Exception as exc:  # pydicom raises many kinds on a damaged file
            raise _Refused(f"not a readable DICOM file ({type(exc).__name__})") from exc
        if self._prepare is None:
            return ds
        try:
            return self._prepare(ds)
        except EngineError as exc:  # our own errors are PHI-free by convention
            raise _Refused(f"preparation failed: {exc}") from exc
        except Exception as exc:
            raise _Refused(f"preparation failed ({type(exc).__name__})") from exc


def _parse(payload: str) -> StudyBatch:
    try:
        return StudyBatch.model_validate_json(payload)
    except ValidationError as exc:
        raise PermanentError(f"not a study batch: {exc.error_count()} validation error(s)") from exc


def _fit_to_contexts(assoc: Association, ds: Dataset) -> Dataset:
    """Decompress ``ds`` if the peer refused its compressed syntax but accepted uncompressed.

    Uncompressed syntaxes need nothing: pynetdicom converts between them.
    """
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    sop_class = UID(ds.SOPClassUID)
    accepted = {
        cx.transfer_syntax[0] for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class
    }
    if not accepted:
        raise _Refused(f"SOP class {sop_class} not accepted by the peer")
    if syntax in accepted or not syntax.is_compressed:
        return ds
    if not accepted.intersection(UNCOMPRESSED):
        raise _Refused(f"peer accepted none of the transfer syntaxes offered for {syntax}")
    try:
        ds.decompress()
    except Exception as exc:  # missing numpy/decoder, or a corrupt stream
        raise _Refused(
            f"peer refused transfer syntax {syntax} and it cannot be decompressed here "
            f"({type(exc).__name__})"
        ) from exc
    return ds


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
