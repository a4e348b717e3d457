"""A deployed channel: inbound message → filters → transform → destination queues.

:meth:`ChannelRuntime.handle` is the source's handler. The CPU work (decode,
parse, filters, Jinja) runs in the hub's pipeline thread pool, never on the
event loop; the store write goes through the group committer; the reply is
returned only after the commit, so an AA always means "durably stored".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from connectors.base import Origin
from engine.config import Channel, ChannelDestination, FilterRule
from engine.errors import EngineError, FilterError, MessageError, RejectedError, TransformError
from engine.hl7_inbound import InboundHL7, best_effort_header, content_hash, read_hl7, reply_for
from engine.hl7_view import HL7View
from engine.queue import DestinationWorker
from engine.services import Services
from engine.states import MessageStatus, check_transition
from engine.store.messages import InboundRecord, QueueItem, insert_inbound
from engine.transform import Transformer

__all__ = ["ChannelRuntime", "CompiledFilter"]

log = logging.getLogger(__name__)


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


class ChannelRuntime:
    """Processes the messages of one channel and owns its destination workers."""

    def __init__(self, channel: Channel, services: Services, pool: ThreadPoolExecutor) -> None:
        self.channel = channel
        self._services = services
        self._pool = pool
        self._inbound = channel.file.inbound
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
        return _DestinationStep(spec.name, [self._compile(r) for r in spec.filters], transformer)

    async def handle(self, raw: bytes, origin: Origin) -> bytes | None:
        """The source's handler: process and store ``raw``, then return the reply."""
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(self._pool, self.process, raw, origin)
        return reply

    def process(self, raw: bytes, origin: Origin) -> bytes | None:
        """Process one message synchronously (in a pipeline thread); returns the reply bytes."""
        charset = self._inbound.default_charset
        try:
            inbound = read_hl7(raw, charset)
        except MessageError as exc:
            return self._store_unreadable(raw, origin, exc.reason, "100")
        record = InboundRecord(
            channel=self.name,
            origin=origin.peer,
            raw=inbound.parsed.text,
            status=MessageStatus.RECEIVED,
            message_type=inbound.header.message_type,
            sender=inbound.header.sender,
            control_id=inbound.header.control_id,
            patient_id=inbound.patient_id,
            accession=inbound.accession,
            content_hash=content_hash(raw),
        )
        outcome, reason, error_code = self._run_steps(inbound, record)
        ack_text, ack_bytes = reply_for(
            inbound.header, outcome, reason, charset, error_code=error_code
        )
        record.response = ack_text
        return self._commit(record, ack_bytes, inbound)

    def _run_steps(
        self, inbound: InboundHL7, record: InboundRecord
    ) -> tuple[Any, str | None, str | None]:
        """Accept check, filters, transform, routing. Fills ``record``; returns the outcome."""
        try:
            self._check_accepted(inbound)
            context = {"msg": HL7View(inbound.parsed.message)}
            if not all(f.passes(context) for f in self._filters):
                record.status = check_transition(record.status, MessageStatus.FILTERED)
                return "accepted", None, None
            payloads = self._transformer.run(context) if self._transformer else [record.raw]
            record.status = check_transition(record.status, MessageStatus.TRANSFORMED)
            record.transformed = "\n".join(payloads) if self._transformer else None
            record.queue = self._route(context, payloads)
            final = MessageStatus.QUEUED if record.queue else MessageStatus.FILTERED
            record.status = check_transition(record.status, final)
            return "accepted", None, None
        except RejectedError as exc:
            return self._errored(record, exc, "rejected", "200")
        except (TransformError, FilterError) as exc:
            return self._errored(record, exc, "error", "207")

    def _errored(
        self, record: InboundRecord, exc: EngineError, outcome: str, code: str
    ) -> tuple[str, str, str]:
        record.status = check_transition(record.status, MessageStatus.ERROR)
        record.error = str(exc)
        record.queue = []
        return outcome, str(exc), code

    def _check_accepted(self, inbound: InboundHL7) -> None:
        accepted = self._inbound.accept_message_types
        if accepted is not None and inbound.header.message_type not in accepted:
            raise RejectedError(
                f"message type {inbound.header.message_type or '(empty)'} is not accepted by "
                f"channel {self.name} (accepts {', '.join(accepted)})"
            )

    def _route(self, context: dict[str, Any], payloads: list[str]) -> list[QueueItem]:
        items: list[QueueItem] = []
        for step in self._steps:
            if not all(f.passes(context) for f in step.filters):
                continue
            for payload in payloads:
                if step.transformer is not None:
                    for out in step.transformer.run({**context, "payload": payload}):
                        items.append(QueueItem(step.name, out))
                else:
                    items.append(QueueItem(step.name, payload))
        return items

    async def handle_oversize(self, head: bytes, origin: Origin, size: int) -> bytes | None:
        """A message over the source's size limit: store its head as ERROR and answer AR."""
        limit = getattr(self.channel.source, "max_message_bytes", None)
        reason = f"message of {size} bytes exceeds the limit of {limit} bytes"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, self._store_unreadable, head, origin, reason, "104"
        )

    def _store_unreadable(
        self, raw: bytes, origin: Origin, reason: str, error_code: str
    ) -> bytes | None:
        """Store what could not be read as ERROR and answer AR with the reason."""
        header = best_effort_header(raw)
        charset = self._inbound.default_charset
        ack_text, ack_bytes = reply_for(header, "rejected", reason, charset, error_code=error_code)
        record = InboundRecord(
            channel=self.name,
            origin=origin.peer,
            raw=raw.decode("utf-8", errors="replace"),
            status=check_transition(MessageStatus.RECEIVED, MessageStatus.ERROR),
            error=reason,
            response=ack_text,
            message_type=header.message_type if header else None,
            sender=header.sender if header else None,
            control_id=header.control_id if header else None,
        )
        return self._commit(record, ack_bytes, None)

    def _commit(
        self, record: InboundRecord, ack: bytes | None, inbound: InboundHL7 | None
    ) -> bytes | None:
        accepted = record.status in (MessageStatus.QUEUED, MessageStatus.FILTERED)
        dedup = self._inbound.duplicate_control and accepted
        try:
            result = self._services.committer.run(insert_inbound(record, duplicate_control=dedup))
        except EngineError as exc:
            log.error("%s: could not store a message: %s", self.name, exc)
            header = inbound.header if inbound else None
            _, nak = reply_for(
                header,
                "error",
                "message store unavailable; resend later",
                self._inbound.default_charset,
            )
            return nak
        if result.duplicate:
            log.info("%s: duplicate of message %d answered again", self.name, result.message_id)
            return self._replay(result.response, inbound, ack)
        if record.queue:
            for worker in self.workers:
                worker.notify()
        return ack

    def _replay(
        self, stored: str | None, inbound: InboundHL7 | None, fallback: bytes | None
    ) -> bytes | None:
        if stored is None or inbound is None:
            return fallback
        from engine.formats.hl7 import encode

        return encode(stored, inbound.header, self._inbound.default_charset)
