"""Shared plumbing of the hub's DICOM SCU destinations (C-STORE, C-FIND/C-MOVE).

One place turns pynetdicom's association outcomes into the engine's errors:
a peer that cannot be reached, rejects the association or drops it is a
:class:`~engine.errors.RecoverableError` (queue and retry); a peer that
accepts none of the proposed presentation contexts will not change its mind,
so that is a :class:`~engine.errors.PermanentError`. Everything here is
blocking and meant to run in a worker thread (``asyncio.to_thread``).
Nothing here logs PHI: AE titles, addresses, statuses only.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext

from connectors.dicom_common import REACTOR_DELAY_SECONDS, AETitle, tune_connection
from engine.errors import PermanentError, RecoverableError

__all__ = [
    "REACTOR_DELAY_SECONDS",
    "AETitle",
    "Peer",
    "StatusKind",
    "classify_status",
    "lost",
    "open_association",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    """Where and how to associate: the remote node and our side's settings."""

    host: str
    port: int
    called_ae: str
    calling_ae: str
    timeout: float
    max_pdu: int
    # pynetdicom's tls_args (context, server hostname): see connectors.dicom_tls.tls_args.
    tls: tuple[ssl.SSLContext, str] | None = None

    def __str__(self) -> str:
        return f"{self.called_ae}@{self.host}:{self.port}" + (" (TLS)" if self.tls else "")


class StatusKind:
    """How a DIMSE status (PS3.4 / PS3.7 Annex C) reads for a sender."""

    SUCCESS = "success"
    WARNING = "warning"
    PENDING = "pending"
    RECOVERABLE = "recoverable"
    PERMANENT = "permanent"


def classify_status(code: int) -> str:
    """Success, warning, pending, recoverable (out of resources) or permanent failure.

    0xA7xx (out of resources) is the peer saying "not now", so it is retried;
    every other failure (0xA9xx, 0xCxxx, 0xA8xx, 0xFE00 cancel, 0x01xx/0x02xx
    general failures) is a refusal retrying will not change.
    """
    if code == 0x0000:
        return StatusKind.SUCCESS
    if code in (0xFF00, 0xFF01):
        return StatusKind.PENDING
    if (code & 0xF000) == 0xB000 or code in {0x0001, 0x0107, 0x0116}:
        return StatusKind.WARNING
    if (code & 0xFF00) == 0xA700:
        return StatusKind.RECOVERABLE
    return StatusKind.PERMANENT


def _quiet_identifiers() -> None:
    """pynetdicom logs whole C-FIND/C-MOVE identifiers (patient IDs) unless told not to."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


@contextmanager
def open_association(peer: Peer, contexts: Sequence[PresentationContext]) -> Iterator[Association]:
    """An established association with ``peer``, released (or aborted) on exit.

    Raises RecoverableError when the peer is unreachable or rejects the
    association, PermanentError when it accepts none of ``contexts``.
    """
    _quiet_identifiers()
    ae = AE(ae_title=peer.calling_ae)
    ae.acse_timeout = peer.timeout
    ae.dimse_timeout = peer.timeout
    ae.network_timeout = peer.timeout
    ae.connection_timeout = peer.timeout
    ae.requested_contexts = list(contexts)
    rejection: list[str] = []

    def on_acse(event: Event) -> None:
        primitive = event.primitive  # type: ignore[attr-defined]
        if isinstance(primitive, A_ASSOCIATE) and primitive.result in (1, 2):
            rejection.append(
                f"{primitive.result_str}, {primitive.source_str}: {primitive.reason_str}"
            )

    handlers: list[EventHandlerType] = [
        (evt.EVT_CONN_OPEN, tune_connection),
        (evt.EVT_ACSE_RECV, on_acse),
    ]
    assoc = ae.associate(
        peer.host, peer.port, ae_title=peer.called_ae, max_pdu=peer.max_pdu,
        evt_handlers=handlers, tls_args=peer.tls,
    )  # fmt: skip
    if not assoc.is_established:
        raise _not_established(assoc, peer, rejection)
    try:
        yield assoc
    except BaseException:
        assoc.abort()
        raise
    else:
        if assoc.is_established:
            assoc.release()


def _not_established(
    assoc: Association, peer: Peer, rejection: list[str]
) -> RecoverableError | PermanentError:
    if assoc.is_rejected:
        reason = rejection[0] if rejection else "no reason given"
        return RecoverableError(f"{peer} rejected the association ({reason})")
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        syntaxes = sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts})
        return PermanentError(
            f"{peer} accepted none of the proposed SOP classes: {', '.join(syntaxes[:5])}"
        )
    return RecoverableError(f"cannot associate with {peer}: peer unreachable or not answering")


def lost(peer: Peer, what: str) -> RecoverableError:
    """The association ended under us (abort, network failure, DIMSE timeout)."""
    return RecoverableError(f"association with {peer} lost during {what}")
