"""The MPPS SCP (N-CREATE/N-SET) of the hub's DICOM listener and the ``mpps`` channel source.

:class:`MPPSService` joins the shared :class:`~connectors.dicom_mwl.DicomListener`
(same AE, same port as the worklist and the storage SCP) and implements the
Modality Performed Procedure Step SOP Class (PS3.4 F.7) as SCP. Like C-STOREs, an
N-CREATE/N-SET goes to the channel whose ``ae_title`` it was *called* with; a
called AE title no channel serves is refused with 0x0124.

A step is stored, its worklist items moved and its events written in one
transaction (:mod:`engine.mpps`); the response is Success only after that
commit. The events are then handed to the channel's handler on the hub's event
loop, with the association's thread waiting (at most ``delivery_timeout_seconds``)
so the EHR normally hears of a step before the modality's next request. If the
handler fails, the event stays *undelivered* in the outbox and the source
retries it every ``retry_seconds`` (and at start, for events a previous run left),
always in order per step; the modality's status does not depend on delivery.

Statuses (PS3.4 F.7.2, PS3.7 C): 0x0000 after the commit; 0x0111 Duplicate SOP
Instance (N-CREATE of a known step); 0x0112 No Such Object Instance (N-SET of
an unknown one); 0x0110 with Error ID 0xA710 "Performed Procedure Step Object
may no longer be updated" (N-SET of a COMPLETED or DISCONTINUED step, Table
F.7.2-2; 0xC310 is the UPS code); 0x0120 / 0x0121 / 0x0106 for a Type 1
attribute missing / empty / an invalid value (an N-CREATE that is not IN
PROGRESS); 0x0110 when the store fails or the data set cannot be decoded.
Every handler returns a status; nothing is left to pynetdicom's ``attempt``.
No PHI is logged: AE titles, statuses and counts only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field
from pydicom import Dataset
from pydicom.uid import UID, generate_uid
from pynetdicom import build_context, evt
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.presentation import PresentationContext
from sqlalchemy import Connection

from connectors.base import InboundHandler, Origin
from connectors.dicom_common import AETitle, failure_status
from engine.errors import ConfigError, EngineError, MessageError, ParseError, StoreError
from engine.mpps import MPPSStore, PendingEvent
from engine.mpps_step import (
    DuplicateStepError,
    FinalStepError,
    InvalidStepError,
    ProcedureStepEvent,
    UnknownStepError,
    step_json,
)
from engine.store.group_commit import GroupCommitter

__all__ = [
    "MAY_NO_LONGER_BE_UPDATED",
    "MODALITY_PERFORMED_PROCEDURE_STEP",
    "MPPSService",
    "MPPSServices",
    "MPPSSource",
    "MPPSSourceConfig",
    "StepTarget",
]

log = logging.getLogger(__name__)

MODALITY_PERFORMED_PROCEDURE_STEP = UID("1.2.840.10008.3.1.2.3.3")

SUCCESS = 0x0000
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_OBJECT_INSTANCE = 0x0112
NO_SUCH_SOP_CLASS = 0x0118
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
NOT_AUTHORIZED = 0x0124
#: Error ID of PS3.4 Table F.7.2-2 (with 0x0110).
MAY_NO_LONGER_BE_UPDATED = 0xA710
_PROBLEM_STATUS = {
    "missing": MISSING_ATTRIBUTE,
    "empty": MISSING_ATTRIBUTE_VALUE,
    "invalid": INVALID_ATTRIBUTE_VALUE,
}
_PAGE = 200  # events read per query while delivering

Response = tuple[int | Dataset, Dataset | None]


class StepTarget(Protocol):
    """Where the service hands a stored step's events: the channel's source."""

    def deliver_from_thread(self, sop_instance_uid: str) -> None:
        """Deliver the step's pending events; called from an association thread."""


class MPPSService:
    """Modality Performed Procedure Step SCP: stores steps, then hands on their events."""

    def __init__(
        self, store: MPPSStore, committer: GroupCommitter, *, uid_root: str | None = None
    ) -> None:
        self.store = store
        self.committer = committer
        self._uid_root = uid_root  # for steps whose N-CREATE names no SOP Instance UID
        self._targets: dict[str, StepTarget] = {}
        self._lock = threading.Lock()

    # -- DicomService --------------------------------------------------------------------

    def contexts(self) -> Sequence[PresentationContext]:
        """MPPS with pynetdicom's default transfer syntaxes."""
        return [build_context(MODALITY_PERFORMED_PROCEDURE_STEP)]

    def handlers(self) -> Sequence[EventHandlerType]:
        """The N-CREATE and N-SET handlers."""
        return [(evt.EVT_N_CREATE, self.on_create), (evt.EVT_N_SET, self.on_set)]

    # -- channels ------------------------------------------------------------------------

    def register(self, ae_title: str, target: StepTarget) -> None:
        """Hand steps called ``ae_title`` to ``target``; one channel per AE title."""
        title = ae_title.strip()
        with self._lock:
            current = self._targets.get(title)
            if current is not None and current is not target:
                raise ConfigError(f"AE title {title} already has an mpps channel")
            # Copy on write: association threads read the dict without the lock.
            self._targets = {**self._targets, title: target}

    def unregister(self, ae_title: str, target: StepTarget) -> None:
        """Refuse steps called ``ae_title`` from now on (if ``target`` serves it)."""
        title = ae_title.strip()
        with self._lock:
            if self._targets.get(title) is target:
                self._targets = {k: v for k, v in self._targets.items() if k != title}

    # -- N-CREATE / N-SET ------------------------------------------------------------------

    def on_create(self, event: Event) -> Response:
        """N-CREATE: store a new IN PROGRESS step; never raises."""
        return self._serve(event, "N-CREATE", self._create)

    def on_set(self, event: Event) -> Response:
        """N-SET: update a step (COMPLETED / DISCONTINUED end it); never raises."""
        return self._serve(event, "N-SET", self._set)

    def _serve(
        self,
        event: Event,
        operation: str,
        body: Callable[[Event, str, str, StepTarget], Response],
    ) -> Response:
        calling = str(event.assoc.requestor.ae_title).strip()
        called = _called_ae(event)
        target = self._targets.get(called)
        if target is None:
            log.warning(
                "%s from %s refused: no mpps channel serves AE %s", operation, calling, called
            )
            return failure_status(
                NOT_AUTHORIZED, f"no mpps channel serves called AE {called}"
            ), None
        try:
            return body(event, calling, called, target)
        except MessageError as exc:
            log.warning("%s from %s refused: %s", operation, calling, exc.reason)
            return _refusal(exc), None
        except StoreError as exc:
            # The type only: the writer already logged what failed.
            log.error("%s from %s: store failed (%s)", operation, calling, type(exc).__name__)
            return failure_status(PROCESSING_FAILURE, "store unavailable; retry later"), None
        except Exception as exc:  # the server must outlive any bug in here; type only (PHI)
            log.error("%s from %s failed: %s", operation, calling, type(exc).__name__)
            return failure_status(
                PROCESSING_FAILURE, f"unable to process: {type(exc).__name__}"
            ), None

    def _create(self, event: Event, calling: str, called: str, target: StepTarget) -> Response:
        request = cast(N_CREATE, event.request)
        if request.AffectedSOPClassUID != MODALITY_PERFORMED_PROCEDURE_STEP:
            return failure_status(NO_SUCH_SOP_CLASS, "not an MPPS request"), None
        given = request.AffectedSOPInstanceUID
        uid = str(given) if given else str(generate_uid(prefix=self._uid_root))
        attributes = step_json(_decoded(lambda: event.attribute_list))

        def create(conn: Connection) -> list[ProcedureStepEvent]:
            return self.store.create(conn, uid, attributes, calling=calling, called=called)

        made = self.committer.run(create)
        log.info("N-CREATE from %s: step IN PROGRESS, %d event(s)", calling, len(made))
        target.deliver_from_thread(uid)
        reply = Dataset()
        if not given:
            reply.AffectedSOPInstanceUID = uid  # PS3.7 10.1.5: the SCP names the new instance
        return SUCCESS, reply

    def _set(self, event: Event, calling: str, called: str, target: StepTarget) -> Response:
        request = cast(N_SET, event.request)
        uid = str(request.RequestedSOPInstanceUID)
        modifications = step_json(_decoded(lambda: event.modification_list))

        def set_(conn: Connection) -> list[ProcedureStepEvent]:
            return self.store.update(conn, uid, modifications, calling=calling, called=called)

        made = self.committer.run(set_)
        status = made[0].status if made else "unchanged"
        log.info("N-SET from %s: step %s, %d event(s)", calling, status, len(made))
        if made:
            target.deliver_from_thread(uid)
        return SUCCESS, None


def _decoded(read: Callable[[], Dataset | None]) -> Dataset:
    """The request's data set; a missing or undecodable one is a ParseError."""
    try:
        ds = read()
    except Exception as exc:
        raise ParseError(f"the data set cannot be decoded ({type(exc).__name__})") from exc
    if ds is None:
        raise ParseError("the request has no data set")
    return ds


def _called_ae(event: Event) -> str:
    """The AE title the peer called (the listener's own title is only the default)."""
    primitive = event.assoc.requestor.primitive
    title = getattr(primitive, "called_ae_title", None) or event.assoc.acceptor.ae_title
    return str(title).strip()


def _refusal(exc: MessageError) -> Dataset:
    if isinstance(exc, DuplicateStepError):
        return failure_status(DUPLICATE_SOP_INSTANCE, exc.reason)
    if isinstance(exc, UnknownStepError):
        return failure_status(NO_SUCH_OBJECT_INSTANCE, exc.reason)
    if isinstance(exc, FinalStepError):
        status = failure_status(PROCESSING_FAILURE, exc.reason)
        status.ErrorID = MAY_NO_LONGER_BE_UPDATED
        return status
    if isinstance(exc, InvalidStepError):
        return failure_status(_PROBLEM_STATUS[exc.problem], exc.reason)
    return failure_status(PROCESSING_FAILURE, exc.reason)


# -- the ``mpps`` channel source ------------------------------------------------------------


class MPPSSourceConfig(BaseModel):
    """An ``mpps`` source in a channel file: procedure steps reported to the hub's listener."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["mpps"]
    ae_title: AETitle = Field(default="MERIDIAN", description="the called AE title it answers")
    delivery_timeout_seconds: float = Field(
        default=30, gt=0, description="how long an N-CREATE/N-SET waits for its event's delivery"
    )
    retry_seconds: float = Field(
        default=10, gt=0, description="how often undelivered events are tried again"
    )


class MPPSServices(Protocol):
    """What an :class:`MPPSSource` needs from the hub's services."""

    @property
    def mpps(self) -> MPPSService: ...


class MPPSSource:
    """A channel's procedure steps: each event goes to the handler as ProcedureStepEvent JSON.

    With ``Origin("dicom", calling, called)``. An event is marked delivered once
    the handler returned; a handler that raises leaves it pending for the retry.
    """

    def __init__(
        self, config: MPPSSourceConfig, *, service: MPPSService, channel: str = "mpps"
    ) -> None:
        self.config = config
        self.channel = channel
        self._service = service
        self._store = service.store
        self._committer = service.committer
        self._handler: InboundHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()  # one delivery at a time keeps each step's events in order
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_services(
        cls, config: MPPSSourceConfig, services: MPPSServices, *, channel: str
    ) -> MPPSSource:
        """Build from the hub's services (``services.mpps``)."""
        return cls(config, service=services.mpps, channel=channel)

    async def start(self, handler: InboundHandler) -> None:
        """Accept steps called ``ae_title``; start retrying (events a previous run left first).

        Raises :class:`ConfigError` if another channel already serves the AE title.
        """
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()
        self._service.register(self.config.ae_title, self)
        self._task = asyncio.create_task(self._retry_loop(), name=f"mpps-retry-{self.channel}")
        log.info("mpps source %s: AE %s", self.channel, self.config.ae_title)

    async def stop(self) -> None:
        """Refuse new steps, finish the delivery under way, stop retrying."""
        self._service.unregister(self.config.ae_title, self)
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        async with self._lock:  # a delivery an association thread started
            self._handler = None
            self._loop = None

    def deliver_from_thread(self, sop_instance_uid: str) -> None:
        """Deliver the step's pending events on the hub's loop, waiting a bounded time.

        Whatever happens the step is stored: a timeout leaves the delivery running
        on the loop, a failure leaves the events to the retry.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # stopping: the next start delivers them
        future = asyncio.run_coroutine_threadsafe(self.drain(sop_instance_uid), loop)
        try:
            future.result(timeout=self.config.delivery_timeout_seconds)
        except TimeoutError:
            log.warning("mpps source %s: delivery still running; it goes on", self.channel)
        except Exception as exc:
            log.warning("mpps source %s: delivery failed: %s", self.channel, type(exc).__name__)

    async def drain(self, sop_instance_uid: str | None = None) -> int:
        """Deliver pending events (of one step, or all), oldest first; returns how many.

        After a failed event, the later events of the same step wait for the next
        round, so the EHR never hears COMPLETED before IN PROGRESS.
        """
        delivered = 0
        blocked: set[str] = set()
        async with self._lock:
            while self._handler is not None:
                pending = await asyncio.to_thread(
                    self._store.undelivered,
                    self.config.ae_title,
                    sop_instance_uid=sop_instance_uid,
                    limit=_PAGE,
                )
                done = await self._deliver_all(self._handler, pending, blocked)
                delivered += done
                if len(pending) < _PAGE or done == 0:
                    break
        return delivered

    async def _deliver_all(
        self, handler: InboundHandler, pending: list[PendingEvent], blocked: set[str]
    ) -> int:
        done = 0
        for event in pending:
            if self._stopping.is_set():
                break
            if event.sop_instance_uid in blocked:
                continue
            if await self._deliver(handler, event):
                done += 1
            else:
                blocked.add(event.sop_instance_uid)
        return done

    async def _deliver(self, handler: InboundHandler, event: PendingEvent) -> bool:
        origin = Origin("dicom", event.calling_aet, event.called_aet)
        try:
            await handler(event.payload.encode("utf-8"), origin)
        except Exception as exc:
            log.warning(
                "mpps source %s: event %d not delivered (%s); will retry",
                self.channel, event.id, type(exc).__name__,
            )  # fmt: skip
            await self._record(self._store.mark_failed, event.id)
            return False
        # Should this write fail, the event comes again: its event_id tells it apart.
        return await self._record(self._store.mark_delivered, event.id)

    async def _record(self, mark: Callable[[Connection, int], None], event_id: int) -> bool:
        try:
            await self._committer.run_async(lambda conn: mark(conn, event_id))
        except EngineError as exc:
            log.error("mpps source %s: cannot record event %d: %s", self.channel, event_id, exc)
            return False
        return True

    async def _retry_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.drain()
            except Exception as exc:  # the store may be down: next round
                log.error("mpps source %s: retry failed: %s", self.channel, type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.retry_seconds)
