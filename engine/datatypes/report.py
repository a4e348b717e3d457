"""The report data type: a channel whose messages are StudyReports (to the EHR).

Messages come from the ``report`` destination (AI-drafted preliminary reports)
or from an ORU in transformed by ``oru_to_report.j2`` (final reports). The
destinations render them with their own templates (ORU^R01, FHIR R4).
"""

from __future__ import annotations

from pydantic import ValidationError

from connectors.base import Origin
from engine.datatypes.base import ReadMessage, SilentDataType
from engine.errors import ParseError
from engine.report import StudyReport
from engine.states import MessageStatus
from engine.store.messages import InboundRecord, content_hash
from engine.validation import describe_validation_error

__all__ = ["MESSAGE_TYPE", "ReportDataType"]

MESSAGE_TYPE = "REPORT"


class ReportDataType(SilentDataType):
    """Reads StudyReport JSON; answers nothing (the sender is another channel)."""

    message_type = MESSAGE_TYPE

    def __init__(self, channel: str) -> None:
        self._channel = channel

    def read(self, raw: bytes, origin: Origin) -> ReadMessage:
        """Parse a StudyReport; anything else is a ParseError (no values quoted)."""
        try:
            report = StudyReport.model_validate_json(raw)
        except ValidationError as exc:
            problems = describe_validation_error(exc, root="report")
            raise ParseError(f"not a study report: {problems}") from exc
        record = InboundRecord(
            channel=self._channel,
            origin=origin.peer,
            raw=raw.decode("utf-8"),
            status=MessageStatus.RECEIVED,
            message_type=f"{MESSAGE_TYPE}^{report.status}",
            sender=origin.peer,
            # One report version: a resend is a duplicate, a new status is not.
            control_id=f"{report.accession_number}|{report.status}|{report.reported_at.isoformat()}",
            patient_id=report.patient.id[:64],
            accession=report.accession_number[:64],
            content_hash=content_hash(raw),
        )
        context = {"report": report.model_dump(mode="json")}
        return ReadMessage(record, context, record.raw, native=report)
