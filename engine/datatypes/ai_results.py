"""The AI results data type: DICOM results (study batches) and JSON AIResults.

A channel of this type takes two kinds of messages:

* a :class:`~engine.study_batch.StudyBatch` (it has ``instances``): SR/GSPS/SEG/SC an AI
  C-STOREd to the hub's results AE, assembled by a ``dicom`` source;
* an :class:`~engine.ai_result.AIResult` (it has ``model``/``findings``): posted by an AI
  to an ``http`` source, or handed on by the KServe connector.

Results of an AI that was sent de-identified images reference pseudo UIDs. Every
instance (and a JSON result's study and images) is mapped back with
:meth:`Deidentifier.reidentify` for the first of ``reidentify_scopes``
(``"<channel>/<destination>"`` of the de-identifying destinations) that knows its
UIDs; results that reference none are left as they are. That happens in :meth:`read`,
so filters and routing rules already see the real study:

``kind`` ("dicom" | "json"), ``study`` (StudyInstanceUID, AccessionNumber, PatientID and,
for DICOM, the assembler's study attributes; absent ones read ''), ``results`` (the
AIResults as dicts) and ``critical`` (any finding critical).

The built-in transform writes the (re-identified) instances under
``output_root/<study>/<series>/<sop>.dcm`` and hands the destinations that batch; a JSON
result goes on as it came (re-identified when it had to be). The data type answers
nothing when a message is accepted (the HTTP source says 202 by itself); otherwise the
reply is ``{"status": "rejected"|"error", "reason": ...}`` so an HTTP caller learns why.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from connectors.base import Origin
from engine.ai_findings import result_from_datasets
from engine.ai_reidentify import Reidentifier
from engine.ai_result import AIResult
from engine.datatypes.base import Outcome, ReadMessage, Reply
from engine.datatypes.dicom_study import StudyView
from engine.deid import Deidentifier
from engine.errors import ParseError, TransformError
from engine.files import write_durably
from engine.states import MessageStatus
from engine.store.messages import InboundRecord, content_hash
from engine.study_assembly import METADATA_KEYWORDS
from engine.study_batch import InstanceRef, StudyBatch, metadata_text
from engine.validation import describe_validation_error

__all__ = ["MESSAGE_TYPE", "AIResultsDataType"]

MESSAGE_TYPE = "AI^RESULT"
_ID_LENGTH = 200  # sender and control_id columns
_M = TypeVar("_M", bound=BaseModel)


@dataclass
class _Instances:
    """A DICOM message as read: the batch and its (re-identified) datasets, in order."""

    batch: StudyBatch
    datasets: list[tuple[InstanceRef, Dataset]]


class AIResultsDataType:
    """Reads AI results of either kind; re-identifies them; answers only refusals."""

    def __init__(
        self,
        channel: str,
        *,
        deid: Deidentifier | None,
        reidentify_scopes: list[str],
        output_root: Path,
        modes: Mapping[str, str] | None = None,
    ) -> None:
        self._channel = channel
        self._modes = dict(modes or {})
        self._reidentifier = Reidentifier(deid, reidentify_scopes)
        self._output_root = output_root

    # -- read --------------------------------------------------------------------------

    def read(self, raw: bytes, origin: Origin) -> ReadMessage:
        """A StudyBatch or an AIResult (re-identified); anything else is a ParseError."""
        document = _document(raw)
        if "instances" in document:
            message = self._read_batch(raw, _validate(StudyBatch, raw, "study batch"), origin)
        elif "model" in document or "findings" in document:
            message = self._read_result(raw, _validate(AIResult, raw, "AI result"), origin)
        else:
            raise ParseError("neither a study batch ('instances') nor an AI result ('model')")
        message.context["mode"] = self._mode(message.context["results"])
        return message

    def _mode(self, results: list[dict[str, Any]]) -> str:
        """The most far-reaching mode among the answering models (unknown models: shadow)."""
        modes = {self._modes.get(str(result.get("model")), "shadow") for result in results}
        return next((m for m in ("assistant", "triage") if m in modes), "shadow")

    def _read_batch(self, raw: bytes, batch: StudyBatch, origin: Origin) -> ReadMessage:
        datasets = [(ref, self._reidentifier.dataset(_load(ref))) for ref in batch.instances]
        first = datasets[0][1]
        study = {**batch.metadata, **_study_attributes(first)}
        result = _summary(datasets)
        record = self._record(
            raw,
            origin,
            sender=batch.calling_aet,
            control_id=f"{batch.study_instance_uid}#{batch.batch}",
            study=study,
        )
        context = _context("dicom", study, [result] if result is not None else [])
        native = _Instances(batch, datasets)
        return ReadMessage(record, context, record.raw, native=native)

    def _read_result(self, raw: bytes, result: AIResult, origin: Origin) -> ReadMessage:
        mapped, patient_id = self._reidentifier.result(result)
        study = {
            "StudyInstanceUID": mapped.study_instance_uid,
            "AccessionNumber": mapped.accession_number or "",
            "PatientID": patient_id or "",
        }
        control_id = f"{result.model}|{result.study_instance_uid}|{result.produced_at.isoformat()}"
        record = self._record(raw, origin, sender=result.model, control_id=control_id, study=study)
        payload = record.raw if mapped is result else mapped.model_dump_json()
        return ReadMessage(record, _context("json", study, [mapped]), payload, native=mapped)

    def _record(
        self, raw: bytes, origin: Origin, *, sender: str, control_id: str, study: dict[str, Any]
    ) -> InboundRecord:
        return InboundRecord(
            channel=self._channel,
            origin=origin.peer,
            raw=raw.decode("utf-8"),
            status=MessageStatus.RECEIVED,
            message_type=MESSAGE_TYPE,
            sender=sender[:_ID_LENGTH],
            control_id=control_id[:_ID_LENGTH],
            patient_id=str(study.get("PatientID") or "")[:64] or None,
            accession=str(study.get("AccessionNumber") or "")[:64] or None,
            content_hash=content_hash(raw),
        )

    def check_accepted(self, message: ReadMessage) -> None:
        """Every AI result is taken."""

    # -- transform -----------------------------------------------------------------------

    def builtin_transform(self, message: ReadMessage) -> list[str] | None:
        """DICOM: write the instances, hand on the batch naming them; JSON: the result."""
        native = message.native
        if not isinstance(native, _Instances):
            return [message.payload]
        instances = [self._write(ref, ds) for ref, ds in native.datasets]
        first = native.datasets[0][1]
        batch = native.batch.model_copy(
            update={
                "study_instance_uid": str(first.get("StudyInstanceUID") or "")
                or native.batch.study_instance_uid,
                "instances": instances,
                "metadata": {**native.batch.metadata, **_study_attributes(first)},
            }
        )
        return [batch.model_dump_json()]

    def _write(self, ref: InstanceRef, ds: Dataset) -> InstanceRef:
        sop = str(ds.get("SOPInstanceUID") or ref.sop_instance_uid)
        series = str(ds.get("SeriesInstanceUID") or ref.series_instance_uid)
        study = str(ds.get("StudyInstanceUID") or "unknown-study")
        # UIDs only in paths: never patient data.
        target = self._output_root / study / series / f"{sop}.dcm"
        write_durably(target, _encode(ds))
        return ref.model_copy(
            update={"sop_instance_uid": sop, "series_instance_uid": series, "path": str(target)}
        )

    # -- answers -------------------------------------------------------------------------

    def reply(
        self,
        message: ReadMessage | None,
        raw: bytes,
        outcome: Outcome,
        reason: str | None,
        error_code: str | None,
    ) -> Reply:
        """Nothing when accepted; ``{"status", "reason"}`` (JSON) for a refusal or an error."""
        if outcome == "accepted":
            return Reply(None, None)
        text = json.dumps({"status": outcome, "reason": reason or outcome})
        return Reply(text, text.encode("utf-8"))

    def unreadable(self, raw: bytes, origin: Origin) -> InboundRecord:
        """What we keep of a message that could not be read, with what identifies it."""
        sender, control_id = _salvage(raw)
        return InboundRecord(
            channel=self._channel,
            origin=origin.peer,
            raw=raw.decode("utf-8", errors="replace"),
            status=MessageStatus.RECEIVED,
            message_type=MESSAGE_TYPE,
            sender=sender,
            control_id=control_id,
        )

    def replay(self, stored_response: str | None, message: ReadMessage | None) -> bytes | None:
        """A resent result was accepted the first time: nothing to answer."""
        return None


# -- helpers --------------------------------------------------------------------------------


def _document(raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ParseError(f"not JSON: {type(exc).__name__}") from exc
    if not isinstance(document, dict):
        raise ParseError("not a JSON object")
    return document


def _validate(model: type[_M], raw: bytes, what: str) -> _M:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = describe_validation_error(exc, root=what)
        raise ParseError(f"not a valid {what}: {problems}") from exc


def _load(ref: InstanceRef) -> Dataset:
    try:
        return dcmread(ref.path)
    except (OSError, InvalidDicomError, ValueError) as exc:
        # The batch names files it does not have: it cannot be read, as a whole.
        raise ParseError(
            f"cannot read result instance {ref.sop_instance_uid}: {type(exc).__name__}"
        ) from exc


def _summary(datasets: list[tuple[InstanceRef, Dataset]]) -> AIResult | None:
    """The batch's AIResult (a batch is one study; one of several studies gets none)."""
    if len({str(ds.get("StudyInstanceUID") or "") for _, ds in datasets}) != 1:
        return None
    try:
        return result_from_datasets([ds for _, ds in datasets])
    except TransformError as exc:
        raise ParseError(str(exc)) from exc


def _study_attributes(ds: Dataset) -> dict[str, str]:
    keywords = ("StudyInstanceUID", *METADATA_KEYWORDS)
    return {keyword: metadata_text(ds.get(keyword)) for keyword in keywords}


def _context(kind: str, study: dict[str, Any], results: list[AIResult]) -> dict[str, Any]:
    return {
        "kind": kind,
        "study": StudyView(study),
        "results": [result.model_dump(mode="json") for result in results],
        "critical": any(result.critical for result in results),
    }


def _encode(ds: Dataset) -> bytes:
    """The dataset as a Part 10 file in its own transfer syntax."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _salvage(raw: bytes) -> tuple[str | None, str | None]:
    """(sender, control id) from whatever JSON there is; (None, None) otherwise."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None, None
    if not isinstance(document, dict):
        return None, None
    sender = document.get("calling_aet") or document.get("model")
    study = document.get("study_instance_uid")
    return (
        str(sender)[:_ID_LENGTH] if isinstance(sender, str) else None,
        str(study)[:_ID_LENGTH] if isinstance(study, str) else None,
    )
