"""The DICOM study data type: a completed study batch is normalized, then routed.

Its messages are :class:`~engine.study_batch.StudyBatch` JSON documents handed
over by the study assembler. The built-in transform is the channel's tag
morphing (``normalize:``): each instance is read from the archive, normalized
(original values kept in OriginalAttributesSequence) and written as a
normalized copy; the archive keeps the instance as received. Routing rules
(destination filters) then see the normalized study as ``study``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError
from pydicom import Dataset, dcmread

from connectors.base import Origin
from engine.datatypes.base import ReadMessage, SilentDataType
from engine.errors import ParseError, TransformError
from engine.files import write_durably
from engine.states import MessageStatus
from engine.store.messages import InboundRecord, content_hash
from engine.study_batch import InstanceRef, StudyBatch
from engine.validation import describe_validation_error

__all__ = ["InstanceNormalizer", "StudyDataType", "StudyView"]

MESSAGE_TYPE = "DICOM^STUDY"


class InstanceNormalizer(Protocol):
    """Tag morphing of one instance, in place (see engine.normalize)."""

    def normalize(self, ds: Dataset) -> Any: ...

    def study_metadata(self, ds: Dataset) -> dict[str, str]: ...


class StudyView(dict[str, Any]):
    """Study-level attributes for routing rules: ``study.Modality``; absent reads as ''."""

    def __missing__(self, key: str) -> str:
        return ""

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        return self[key]


class StudyDataType(SilentDataType):
    """Reads study batches; normalizes them as the built-in transform; answers nothing."""

    message_type = MESSAGE_TYPE

    def __init__(
        self, channel: str, normalizer: InstanceNormalizer | None, normalized_root: Path
    ) -> None:
        self._channel = channel
        self._normalizer = normalizer
        self._normalized_root = normalized_root

    def read(self, raw: bytes, origin: Origin) -> ReadMessage:
        """Parse a StudyBatch; anything else is a ParseError."""
        try:
            batch = StudyBatch.model_validate_json(raw)
        except ValidationError as exc:
            problems = describe_validation_error(exc, root="batch")
            raise ParseError(f"not a study batch: {problems}") from exc
        record = InboundRecord(
            channel=self._channel,
            origin=origin.peer,
            raw=raw.decode("utf-8"),
            status=MessageStatus.RECEIVED,
            message_type=MESSAGE_TYPE,
            sender=batch.calling_aet,
            control_id=f"{batch.study_instance_uid}#{batch.batch}",
            patient_id=str(batch.metadata.get("PatientID") or "")[:64] or None,
            accession=str(batch.metadata.get("AccessionNumber") or "")[:64] or None,
            content_hash=content_hash(raw),
        )
        return ReadMessage(record, _context(batch, batch.metadata), record.raw, native=batch)

    def builtin_transform(self, message: ReadMessage) -> list[str] | None:
        """Normalize every instance of the batch; the payload points at the normalized copies."""
        batch: StudyBatch = message.native
        if self._normalizer is None:
            return [batch.model_dump_json()]
        instances, metadata = self._normalize_all(batch, self._normalizer)
        normalized = batch.model_copy(update={"instances": instances, "metadata": metadata})
        message.context.update(_context(normalized, metadata))
        message.record.patient_id = str(metadata.get("PatientID") or "")[:64] or None
        message.record.accession = str(metadata.get("AccessionNumber") or "")[:64] or None
        return [normalized.model_dump_json()]

    def _normalize_all(
        self, batch: StudyBatch, normalizer: InstanceNormalizer
    ) -> tuple[list[InstanceRef], dict[str, Any]]:
        instances: list[InstanceRef] = []
        metadata: dict[str, Any] = dict(batch.metadata)
        for index, ref in enumerate(batch.instances):
            ds = _read(ref)
            normalizer.normalize(ds)
            if index == 0:
                metadata.update(normalizer.study_metadata(ds))
            target = self._target(batch.study_instance_uid, ref)
            write_durably(target, _encode(ds))
            instances.append(ref.model_copy(update={"path": str(target)}))
        return instances, metadata

    def _target(self, study_uid: str, ref: InstanceRef) -> Path:
        # UIDs only in paths: never patient data.
        return (
            self._normalized_root
            / study_uid
            / ref.series_instance_uid
            / f"{ref.sop_instance_uid}.dcm"
        )


def _context(batch: StudyBatch, metadata: dict[str, Any]) -> dict[str, Any]:
    return {"study": StudyView(metadata), "batch": batch, "now": datetime.now()}


def _read(ref: InstanceRef) -> Dataset:
    try:
        return dcmread(ref.path)
    except (OSError, ValueError) as exc:
        raise TransformError(
            f"cannot read archived instance {ref.sop_instance_uid}: {type(exc).__name__}"
        ) from exc


def _encode(ds: Dataset) -> bytes:
    """The dataset as a Part 10 file, in its own transfer syntax (pixel data untouched)."""
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
