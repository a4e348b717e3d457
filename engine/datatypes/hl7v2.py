"""The HL7 v2 data type: MSH-18 decoding, python-hl7 parsing, ACK/NAK replies."""

from __future__ import annotations

from connectors.base import Origin
from engine.config import InboundConfig
from engine.datatypes.base import Outcome, ReadMessage, Reply
from engine.errors import RejectedError
from engine.formats.hl7 import HL7Header, encode
from engine.hl7_inbound import InboundHL7, best_effort_header, read_hl7, reply_for
from engine.hl7_view import HL7View
from engine.states import MessageStatus
from engine.store.messages import InboundRecord, content_hash

__all__ = ["HL7v2DataType"]


class HL7v2DataType:
    """Reads HL7 v2 (ER7) messages and answers with ACKs (original or enhanced mode)."""

    def __init__(self, channel: str, inbound: InboundConfig) -> None:
        self._channel = channel
        self._inbound = inbound
        self._charset = inbound.default_charset

    def read(self, raw: bytes, origin: Origin) -> ReadMessage:
        """Decode by MSH-18 and parse; DecodeError/ParseError carry the sender's reason."""
        inbound = read_hl7(raw, self._charset)
        header = inbound.header
        record = InboundRecord(
            channel=self._channel,
            origin=origin.peer,
            raw=inbound.parsed.text,
            status=MessageStatus.RECEIVED,
            message_type=header.message_type,
            sender=header.sender,
            control_id=header.control_id,
            patient_id=inbound.patient_id,
            accession=inbound.accession,
            content_hash=content_hash(raw),
        )
        context = {"msg": HL7View(inbound.parsed.message)}
        return ReadMessage(record, context, inbound.parsed.text, native=inbound)

    def check_accepted(self, message: ReadMessage) -> None:
        """Only the message types listed in ``accept_message_types`` (if any) are taken."""
        accepted = self._inbound.accept_message_types
        message_type = message.record.message_type
        if accepted is not None and message_type not in accepted:
            raise RejectedError(
                f"message type {message_type or '(empty)'} is not accepted by "
                f"channel {self._channel} (accepts {', '.join(accepted)})"
            )

    def builtin_transform(self, message: ReadMessage) -> list[str] | None:
        """HL7 has no built-in transform: the channel's template does the work."""
        return None

    def reply(
        self,
        message: ReadMessage | None,
        raw: bytes,
        outcome: Outcome,
        reason: str | None,
        error_code: str | None,
    ) -> Reply:
        """An ACK: AA/AE/AR (or CA/CE/CR per MSH-15), with MSA-3 and ERR for the reason."""
        header = _header(message) if message is not None else best_effort_header(raw)
        text, data = reply_for(header, outcome, reason, self._charset, error_code=error_code)
        return Reply(text, data)

    def unreadable(self, raw: bytes, origin: Origin) -> InboundRecord:
        """What we keep of a message that did not decode or parse: its bytes and its MSH."""
        header = best_effort_header(raw)
        return InboundRecord(
            channel=self._channel,
            origin=origin.peer,
            raw=raw.decode("utf-8", errors="replace"),
            status=MessageStatus.RECEIVED,
            message_type=header.message_type if header else None,
            sender=header.sender if header else None,
            control_id=header.control_id if header else None,
        )

    def replay(self, stored_response: str | None, message: ReadMessage | None) -> bytes | None:
        """The first ACK again, for a resent message."""
        if stored_response is None or message is None:
            return None
        return encode(stored_response, _header(message), self._charset)


def _header(message: ReadMessage) -> HL7Header:
    native: InboundHL7 = message.native
    return native.header
