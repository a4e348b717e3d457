"""The hub's DICOM listener and its Modality Worklist (C-FIND) service.

One pynetdicom AE listens on one port (11112, AE title MERIDIAN by default)
and hosts several *services*: each contributes presentation contexts and
event handlers (:class:`DicomService`). :class:`MWLService` answers Modality
Worklist C-FIND from the :class:`~engine.worklist.WorklistStore`; the Storage
SCP adds itself to the same :class:`DicomListener` later. Verification
(C-ECHO) is always on.

Access: ``allowed_calling_aets`` and ``allowed_networks`` (peer IP) are checked
when an association is requested; a refused peer gets an A-ASSOCIATE-RJ. With
``tls:`` the listener speaks DICOM over TLS only (see :mod:`connectors.dicom_tls`).

pynetdicom runs each association in its own thread; the store's reads open
their own short connections, so nothing here touches the event loop.
Nothing here logs PHI: only AE titles, peer addresses, counts and statuses.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field
from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.presentation import PresentationContext

from connectors.allowlist import AllowedNetworks, is_allowed
from connectors.dicom_common import AETitle, failure_status, tune_connection
from connectors.dicom_tls import TLSAssociationServer, start_association_server
from connectors.tls_config import ServerTLSConfig, server_ssl_context
from engine.errors import MessageError, StoreError
from engine.worklist import WorklistStore

__all__ = [
    "MODALITY_WORKLIST_FIND",
    "VERIFICATION",
    "AETitle",
    "DicomListener",
    "DicomListenerConfig",
    "DicomService",
    "MWLServer",
    "MWLService",
]

log = logging.getLogger(__name__)


# pynetdicom.sop_class builds its names at import time, invisible to mypy.
VERIFICATION = UID("1.2.840.10008.1.1")
MODALITY_WORKLIST_FIND = UID("1.2.840.10008.5.1.4.31")

# C-FIND statuses (PS3.4 C.4.1.1.4 and K.4.1.1.4).
PENDING = 0xFF00
CANCELLED = 0xFE00
OUT_OF_RESOURCES = 0xA700
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000


class DicomListenerConfig(BaseModel):
    """The hub's DICOM listener (``dicom:`` in the hub settings)."""

    model_config = ConfigDict(extra="forbid")

    ae_title: AETitle = "MERIDIAN"
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=0, le=65535, description="0 picks a free port")
    allowed_calling_aets: list[AETitle] | None = Field(
        default=None,
        min_length=1,
        description="Calling AE titles allowed to associate; null allows any",
    )
    max_associations: int = Field(default=10, ge=1)
    acse_timeout: float = Field(default=30.0, gt=0, description="seconds")
    dimse_timeout: float = Field(default=30.0, gt=0, description="seconds")
    network_timeout: float = Field(default=60.0, gt=0, description="seconds")
    tls: ServerTLSConfig | None = Field(
        default=None, description="serve DICOM over TLS only (plain connections fail)"
    )
    allowed_networks: AllowedNetworks = None


class DicomService(Protocol):
    """A DICOM service hosted by the shared :class:`DicomListener`.

    Intervention events (C-FIND, C-STORE, ...) take one handler each, so two
    services must not handle the same event.
    """

    def contexts(self) -> Sequence[PresentationContext]:
        """The presentation contexts this service accepts as SCP."""
        ...

    def handlers(self) -> Sequence[EventHandlerType]:
        """The pynetdicom event handlers this service binds."""
        ...


class DicomListener:
    """One AE on one port hosting every DICOM service of the hub."""

    def __init__(self, config: DicomListenerConfig) -> None:
        self.config = config
        self._services: list[DicomService] = []
        self._ae: AE | None = None
        self._server: TLSAssociationServer | None = None
        self._refused_lock = threading.Lock()
        self.refused_by_allowlist = 0  # associations rejected: peer outside allowed_networks

    def add_service(self, service: DicomService) -> None:
        """Host ``service``; call before :meth:`start`."""
        if self._server is not None:
            raise RuntimeError("add DICOM services before starting the listener")
        self._services.append(service)

    def start(self) -> None:
        """Bind and serve in pynetdicom's threads; returns once listening."""
        if self._server is not None:
            return
        # pynetdicom logs whole identifiers (patient names) by default.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        tls = self.config.tls
        context = server_ssl_context(tls, "DICOM") if tls is not None else None
        self._ae = self._build_ae()
        self._server = start_association_server(
            self._ae, (self.config.host, self.config.port), self._handlers(), context
        )
        log.info(
            "DICOM listener %s on %s:%d (%d service(s), tls=%s)",
            self.config.ae_title, self.config.host, self.bound_port, len(self._services),
            context is not None,
        )  # fmt: skip

    def _build_ae(self) -> AE:
        config = self.config
        ae = AE(ae_title=config.ae_title)
        ae.acse_timeout = config.acse_timeout
        ae.dimse_timeout = config.dimse_timeout
        ae.network_timeout = config.network_timeout
        ae.maximum_associations = config.max_associations
        if config.allowed_calling_aets is not None:
            ae.require_calling_aet = list(config.allowed_calling_aets)
        ae.add_supported_context(VERIFICATION)
        for service in self._services:
            for context in service.contexts():
                if context.abstract_syntax is None:
                    raise ValueError("a DICOM service context needs an abstract syntax")
                ae.add_supported_context(context.abstract_syntax, context.transfer_syntax)
        return ae

    def _handlers(self) -> list[EventHandlerType]:
        handlers: list[EventHandlerType] = [
            (evt.EVT_CONN_OPEN, tune_connection),
            (evt.EVT_REQUESTED, self._check_peer),
            (evt.EVT_ACCEPTED, _log_accepted),
            (evt.EVT_REJECTED, _log_rejected),
            (evt.EVT_C_ECHO, _on_echo),
        ]
        for service in self._services:
            handlers.extend(service.handlers())
        return handlers

    def _check_peer(self, event: Event) -> None:
        """Reject (A-ASSOCIATE-RJ, permanent) a peer outside ``allowed_networks``."""
        if self.config.allowed_networks is None:
            return
        address = event.assoc.requestor.address
        if is_allowed(self.config.allowed_networks, address):
            return
        with self._refused_lock:
            self.refused_by_allowlist += 1
        log.warning("DICOM association from %s rejected: not in allowed_networks", address)
        # Rejected-permanent, by the service user, no reason given: the same path
        # pynetdicom takes for an unknown calling AE title (send, then wait for the DUL).
        event.assoc.acse.send_reject(0x01, 0x01, 0x01)
        event.assoc.kill()

    def stop(self) -> None:
        """Stop accepting, abort associations still open, release the port."""
        server, self._server = self._server, None
        if server is None:
            return
        active = list(server.active_associations)
        server.shutdown()
        for assoc in active:
            assoc.abort()
        log.info("DICOM listener %s stopped", self.config.ae_title)

    @property
    def active_associations(self) -> int:
        """Associations open right now (the admin /metrics gauge); 0 when not running."""
        server = self._server
        return len(server.active_associations) if server is not None else 0

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with ``port: 0``)."""
        if self._server is None:
            raise RuntimeError("the DICOM listener is not running")
        address: tuple[str, int] = self._server.server_address  # type: ignore[assignment]
        return address[1]


def _calling_ae(event: Event) -> str:
    return str(event.assoc.requestor.ae_title)


def _log_accepted(event: Event) -> None:
    requestor = event.assoc.requestor
    log.info("association accepted: %s from %s", requestor.ae_title, requestor.address)


def _log_rejected(event: Event) -> None:
    requestor = event.assoc.requestor
    log.warning("association rejected: %s from %s", requestor.ae_title, requestor.address)


def _on_echo(event: Event) -> int:
    log.debug("C-ECHO from %s", _calling_ae(event))
    return 0x0000


FindResult = tuple[int | Dataset, Dataset | None]


class MWLService:
    """Modality Worklist Information Model - FIND, answered from the store."""

    def __init__(self, store: WorklistStore, *, max_results: int | None = None) -> None:
        self._store = store
        self._max_results = max_results

    def contexts(self) -> Sequence[PresentationContext]:
        """MWL FIND with pynetdicom's default transfer syntaxes."""
        return [build_context(MODALITY_WORKLIST_FIND)]

    def handlers(self) -> Sequence[EventHandlerType]:
        """The C-FIND handler."""
        return [(evt.EVT_C_FIND, self.on_find)]

    def on_find(self, event: Event) -> Iterator[FindResult]:
        """Yield one pending response per match; honour C-CANCEL; never raise.

        A store failure becomes a failure status with an Error Comment (the
        association and the server stay up): a malformed identifier 0xA900, a
        database failure 0xA700, anything else 0xC000.
        """
        calling = _calling_ae(event)
        sent = 0
        try:
            for response in self._store.find(event.identifier, limit=self._max_results):
                if event.is_cancelled:
                    log.info("C-FIND from %s cancelled after %d match(es)", calling, sent)
                    yield CANCELLED, None
                    return
                yield PENDING, response
                sent += 1
        except MessageError as exc:
            log.warning("C-FIND from %s refused: %s", calling, type(exc).__name__)
            yield failure_status(IDENTIFIER_DOES_NOT_MATCH, exc.reason), None
            return
        except StoreError as exc:
            log.error("C-FIND from %s: worklist store failed (%s)", calling, exc)
            yield failure_status(OUT_OF_RESOURCES, "worklist store unavailable"), None
            return
        except Exception as exc:
            # Type only: library messages can quote query values (PHI).
            log.error("C-FIND from %s failed: %s", calling, type(exc).__name__)
            yield (
                failure_status(UNABLE_TO_PROCESS, f"unable to process: {type(exc).__name__}"),
                None,
            )
            return
        log.info("C-FIND from %s: %d match(es)", calling, sent)


class MWLServer:
    """The hub's DICOM listener with the Modality Worklist service.

    Other services (the Storage SCP) join through :attr:`listener` before
    :meth:`start`, sharing the AE title and the port.
    """

    def __init__(self, config: DicomListenerConfig, store: WorklistStore) -> None:
        self.listener = DicomListener(config)
        self.listener.add_service(MWLService(store))

    def start(self) -> None:
        """Start listening (non-blocking)."""
        self.listener.start()

    def stop(self) -> None:
        """Stop listening and release the port."""
        self.listener.stop()

    @property
    def bound_port(self) -> int:
        """The port actually listened on."""
        return self.listener.bound_port
