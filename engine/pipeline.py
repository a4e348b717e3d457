"""A deployed channel: inbound message → filters → transform → destination queues.

:meth:`ChannelRuntime.handle` is the source's handler. The CPU work (decode,
parse, filters, Jinja) runs in the hub's pipeline thread pool, never on the
event loop; the store write goes through the group committer; the reply is
returned only after the commit, so an AA always means "durably stored".
What is specific to a kind of content (HL7 v2, DICOM study batches) lives in
the channel's data type (:mod:`engine.datatypes`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from connectors.base import Origin
from engine.audit import AuditEvent, routed_event
from engine.audit import record as record_audit
from engine.channel_steps import ChannelSteps, CompiledFilter
from engine.config import Channel
from engine.datatypes.base import DataType, Outcome, ReadMessage, Reply
from engine.errors import EngineError, FilterError, MessageError, RejectedError, TransformError
from engine.queue import DestinationWorker
from engine.services import Services
from engine.states import MessageStatus, check_transition
from engine.store.messages import InboundRecord, InsertResult, insert_inbound

__all__ = ["ChannelRuntime", "CompiledFilter", "Processed"]

log = logging.getLogger(__name__)

_Result = tuple[Outcome, str | None, str | None]
_STORE_DOWN = "message store unavailable; resend later"


@dataclass(frozen=True, slots=True)
class Processed:
    """What became of one message: the reply for the sender and the stored message.

    ``message_id`` is None when the store was down and the sender was told to resend;
    ``status`` is the status stored with the message (None for a duplicate, which
    stored nothing new: ``message_id`` is then the earlier message's).
    """

    reply: bytes | None
    message_id: int | None
    status: MessageStatus | None
    duplicate: bool = False
    error: str | None = None


class ChannelRuntime:
    """Processes the messages of one channel and owns its destination workers."""

    def __init__(
        self,
        channel: Channel,
        services: Services,
        pool: ThreadPoolExecutor,
        datatype: DataType,
    ) -> None:
        self.channel = channel
        self._services = services
        self._pool = pool
        self._datatype = datatype
        self._duplicate_control = channel.file.inbound.duplicate_control
        self._steps = ChannelSteps(channel, services.templates)
        self.workers: list[DestinationWorker] = []

    @property
    def name(self) -> str:
        """The channel's name."""
        return self.channel.name

    async def handle(self, raw: bytes, origin: Origin) -> bytes | None:
        """The source's handler: process and store ``raw``, then return the reply."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.process, raw, origin)

    async def submit(self, raw: bytes, origin: Origin) -> Processed:
        """Like :meth:`handle`, but says which message was stored, once it is committed."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.process_message, raw, origin)

    async def handle_oversize(self, head: bytes, origin: Origin, size: int) -> bytes | None:
        """A message over the source's size limit: store its head as ERROR and answer AR."""
        limit = getattr(self.channel.source, "max_message_bytes", None)
        reason = f"message of {size} bytes exceeds the limit of {limit} bytes"
        loop = asyncio.get_running_loop()
        processed = await loop.run_in_executor(
            self._pool, self._store_unreadable, head, origin, reason, "104"
        )
        return processed.reply

    def process(self, raw: bytes, origin: Origin) -> bytes | None:
        """Process one message synchronously (in a pipeline thread); returns the reply bytes."""
        return self.process_message(raw, origin).reply

    def process_message(self, raw: bytes, origin: Origin) -> Processed:
        """Process and store one message synchronously (in a pipeline thread)."""
        try:
            message = self._datatype.read(raw, origin)
        except MessageError as exc:
            return self._store_unreadable(raw, origin, exc.reason, "100")
        outcome, reason, error_code = self._run_steps(message)
        reply = self._datatype.reply(message, raw, outcome, reason, error_code)
        message.record.response = reply.text
        return self._commit(message.record, reply, message)

    def _run_steps(self, message: ReadMessage) -> _Result:
        """Accept check, filters, transform, routing. Fills the record; returns the outcome."""
        record = message.record
        try:
            self._datatype.check_accepted(message)
            if not self._steps.accepts(message.context):
                record.status = check_transition(record.status, MessageStatus.FILTERED)
                return "accepted", None, None
            payloads, transformed = self._steps.transform(self._datatype, message)
            record.status = check_transition(record.status, MessageStatus.TRANSFORMED)
            record.transformed = transformed
            record.queue = self._steps.route(message.context, payloads, record.patient_id)
            final = MessageStatus.QUEUED if record.queue else MessageStatus.FILTERED
            record.status = check_transition(record.status, final)
            return "accepted", None, None
        except RejectedError as exc:
            return self._errored(record, exc, "rejected", "200")
        except (TransformError, FilterError) as exc:
            return self._errored(record, exc, "error", "207")

    @staticmethod
    def _errored(record: InboundRecord, exc: EngineError, outcome: Outcome, code: str) -> _Result:
        record.status = check_transition(record.status, MessageStatus.ERROR)
        record.error = str(exc)
        record.queue = []
        return outcome, str(exc), code

    def _routed(self, record: InboundRecord, message: ReadMessage | None) -> list[AuditEvent]:
        """Audit events naming the rules that sent a study to each destination."""
        study_uid = getattr(message.native, "study_instance_uid", None) if message else None
        if not study_uid:
            return []  # the audit trail follows studies; orders are in the message store
        sent = {item.destination for item in record.queue}
        return [
            routed_event(
                channel=self.name,
                destination=step.name,
                rules=[f.name for f in step.filters],
                study_instance_uid=study_uid,
                accession_number=record.accession,
                ai=step.ai,
            )
            for step in self._steps.destinations
            if step.name in sent
        ]

    def _store_unreadable(
        self, raw: bytes, origin: Origin, reason: str, error_code: str
    ) -> Processed:
        """Store what could not be read as ERROR and answer with the reason."""
        record = self._datatype.unreadable(raw, origin)
        record.status = check_transition(record.status, MessageStatus.ERROR)
        record.error = reason
        reply = self._datatype.reply(None, raw, "rejected", reason, error_code)
        record.response = reply.text
        return self._commit(record, reply, None)

    def _commit(
        self, record: InboundRecord, reply: Reply, message: ReadMessage | None
    ) -> Processed:
        accepted = record.status in (MessageStatus.QUEUED, MessageStatus.FILTERED)
        dedup = self._duplicate_control and accepted
        op = _with_audit(
            insert_inbound(record, duplicate_control=dedup), self._routed(record, message)
        )
        try:
            result = self._services.committer.run(op)
        except EngineError as exc:
            log.error("%s: could not store a message: %s", self.name, exc)
            raw = record.raw.encode("utf-8", errors="replace")
            nak = self._datatype.reply(message, raw, "error", _STORE_DOWN, None).data
            if nak is None:
                # No peer to tell "resend later" (a study batch, an MPPS event):
                # the source must keep the message and hand it over again.
                raise
            return Processed(nak, None, None)
        if result.duplicate:
            log.info("%s: duplicate of message %d answered again", self.name, result.message_id)
            again = self._datatype.replay(result.response, message) or reply.data
            return Processed(again, result.message_id, None, duplicate=True)
        if record.queue:
            for worker in self.workers:
                worker.notify()
        return Processed(reply.data, result.message_id, record.status, error=record.error)


def _with_audit(op: Callable[[Connection], InsertResult], events: list[AuditEvent]) -> Any:
    """``op`` plus its audit events, in one transaction (none for a duplicate)."""

    def run(conn: Connection) -> InsertResult:
        result = op(conn)
        if not result.duplicate:
            for event in events:
                record_audit(conn, event)
        return result

    return run
