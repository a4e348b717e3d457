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
from engine.config import AIModelConfig, Channel, ChannelDestination, FilterRule
from engine.datatypes.base import DataType, Outcome, ReadMessage, Reply
from engine.errors import EngineError, FilterError, MessageError, RejectedError, TransformError
from engine.queue import DestinationWorker
from engine.services import Services
from engine.states import MessageStatus, check_transition
from engine.store.messages import InboundRecord, InsertResult, QueueItem, insert_inbound
from engine.transform import Transformer

__all__ = ["ChannelRuntime", "CompiledFilter"]

log = logging.getLogger(__name__)

_Result = tuple[Outcome, str | None, str | None]
_STORE_DOWN = "message store unavailable; resend later"


@dataclass(frozen=True)
class CompiledFilter:
    """A filter rule compiled once at deploy time."""

    name: str
    test: Callable[..., Any]

    def passes(self, context: dict[str, Any]) -> bool:
        """Evaluate the rule; an evaluation error is a FilterError naming the rule."""
        try:
            return bool(self.test(**context))
        except Exception as exc:
            raise FilterError(f"filter '{self.name}' failed: {exc}") from exc


@dataclass(frozen=True)
class _DestinationStep:
    name: str
    filters: list[CompiledFilter]
    transformer: Transformer | None
    ai: AIModelConfig | None = None


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
        self._filters = [self._compile(rule) for rule in channel.file.filters]
        self._transformer = (
            Transformer(channel.file.transform, services.templates)
            if channel.file.transform is not None
            else None
        )
        self._steps = [self._destination_step(d) for d in channel.destinations if d.spec.enabled]
        self.workers: list[DestinationWorker] = []

    @property
    def name(self) -> str:
        """The channel's name."""
        return self.channel.name

    def _compile(self, rule: FilterRule) -> CompiledFilter:
        return CompiledFilter(rule.name, self._services.templates.compile_expression(rule.when))

    def _destination_step(self, destination: ChannelDestination) -> _DestinationStep:
        spec = destination.spec
        transformer = (
            Transformer(spec.transform, self._services.templates) if spec.transform else None
        )
        filters = [self._compile(rule) for rule in spec.filters]
        return _DestinationStep(spec.name, filters, transformer, spec.ai)

    async def handle(self, raw: bytes, origin: Origin) -> bytes | None:
        """The source's handler: process and store ``raw``, then return the reply."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.process, raw, origin)

    async def handle_oversize(self, head: bytes, origin: Origin, size: int) -> bytes | None:
        """A message over the source's size limit: store its head as ERROR and answer AR."""
        limit = getattr(self.channel.source, "max_message_bytes", None)
        reason = f"message of {size} bytes exceeds the limit of {limit} bytes"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, self._store_unreadable, head, origin, reason, "104"
        )

    def process(self, raw: bytes, origin: Origin) -> bytes | None:
        """Process one message synchronously (in a pipeline thread); returns the reply bytes."""
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
            if not all(f.passes(message.context) for f in self._filters):
                record.status = check_transition(record.status, MessageStatus.FILTERED)
                return "accepted", None, None
            payloads, transformed = self._transform(message)
            record.status = check_transition(record.status, MessageStatus.TRANSFORMED)
            record.transformed = transformed
            record.queue = self._route(message.context, payloads)
            final = MessageStatus.QUEUED if record.queue else MessageStatus.FILTERED
            record.status = check_transition(record.status, final)
            return "accepted", None, None
        except RejectedError as exc:
            return self._errored(record, exc, "rejected", "200")
        except (TransformError, FilterError) as exc:
            return self._errored(record, exc, "error", "207")

    def _transform(self, message: ReadMessage) -> tuple[list[str], str | None]:
        """The payloads for the destinations, and the transformed content to store."""
        builtin = self._datatype.builtin_transform(message)
        if builtin is not None:
            return builtin, "\n".join(builtin)
        if self._transformer is not None:
            payloads = self._transformer.run(message.context)
            return payloads, "\n".join(payloads)
        return [message.payload], None

    @staticmethod
    def _errored(record: InboundRecord, exc: EngineError, outcome: Outcome, code: str) -> _Result:
        record.status = check_transition(record.status, MessageStatus.ERROR)
        record.error = str(exc)
        record.queue = []
        return outcome, str(exc), code

    def _route(self, context: dict[str, Any], payloads: list[str]) -> list[QueueItem]:
        items: list[QueueItem] = []
        for step in self._steps:
            if not all(f.passes(context) for f in step.filters):
                continue
            for payload in payloads:
                if step.transformer is not None:
                    outputs = step.transformer.run({**context, "payload": payload})
                    items.extend(QueueItem(step.name, out) for out in outputs)
                else:
                    items.append(QueueItem(step.name, payload))
        return items

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
            for step in self._steps
            if step.name in sent
        ]

    def _store_unreadable(
        self, raw: bytes, origin: Origin, reason: str, error_code: str
    ) -> bytes | None:
        """Store what could not be read as ERROR and answer with the reason."""
        record = self._datatype.unreadable(raw, origin)
        record.status = check_transition(record.status, MessageStatus.ERROR)
        record.error = reason
        reply = self._datatype.reply(None, raw, "rejected", reason, error_code)
        record.response = reply.text
        return self._commit(record, reply, None)

    def _commit(
        self, record: InboundRecord, reply: Reply, message: ReadMessage | None
    ) -> bytes | None:
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
            return nak
        if result.duplicate:
            log.info("%s: duplicate of message %d answered again", self.name, result.message_id)
            return self._datatype.replay(result.response, message) or reply.data
        if record.queue:
            for worker in self.workers:
                worker.notify()
        return reply.data


def _with_audit(op: Callable[[Connection], InsertResult], events: list[AuditEvent]) -> Any:
    """``op`` plus its audit events, in one transaction (none for a duplicate)."""

    def run(conn: Connection) -> InsertResult:
        result = op(conn)
        if not result.duplicate:
            for event in events:
                record_audit(conn, event)
        return result

    return run
