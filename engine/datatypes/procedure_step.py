"""The procedure-step data type: MPPS events (IN PROGRESS / COMPLETED / DISCONTINUED).

Messages are :class:`~engine.mpps_step.ProcedureStepEvent` JSON from an
``mpps`` source; templates see it as ``event`` (``mpps_to_orm_sc.j2`` turns it
into an ORM^O01 order status update for the EHR). A redelivered event keeps
its ``event_id``, so duplicate control drops it.
"""

from __future__ import annotations

from pydantic import ValidationError

from connectors.base import Origin
from engine.datatypes.base import ReadMessage, SilentDataType
from engine.errors import ParseError
from engine.mpps_step import ProcedureStepEvent
from engine.states import MessageStatus
from engine.store.messages import InboundRecord, content_hash
from engine.validation import describe_validation_error

__all__ = ["MESSAGE_TYPE", "ProcedureStepDataType"]

MESSAGE_TYPE = "MPPS"


class ProcedureStepDataType(SilentDataType):
    """Reads ProcedureStepEvent JSON; answers nothing (the MPPS SCP answered the modality)."""

    message_type = MESSAGE_TYPE

    def __init__(self, channel: str) -> None:
        self._channel = channel

    def read(self, raw: bytes, origin: Origin) -> ReadMessage:
        """Parse an event; anything else is a ParseError (no values quoted)."""
        try:
            event = ProcedureStepEvent.model_validate_json(raw)
        except ValidationError as exc:
            problems = describe_validation_error(exc, root="event")
            raise ParseError(f"not a procedure step event: {problems}") from exc
        record = InboundRecord(
            channel=self._channel,
            origin=origin.peer,
            raw=raw.decode("utf-8"),
            status=MessageStatus.RECEIVED,
            message_type=f"{MESSAGE_TYPE}^{event.status.replace(' ', '_')}",
            sender=origin.peer,
            control_id=event.event_id,
            patient_id=event.patient_id[:64] or None,
            accession=event.accession_number[:64] or None,
            content_hash=content_hash(raw),
        )
        return ReadMessage(record, {"event": event.model_dump()}, record.raw, native=event)
