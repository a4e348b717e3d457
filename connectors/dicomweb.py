"""DICOMweb STOW-RS destination: a study batch as one ``POST {url}/studies``.

The body is ``multipart/related; type="application/dicom"`` with one Part 10
instance per part (PS3.18 10.5), streamed: each file is read (and prepared,
when ``prepare_instance`` is given) in a worker thread just before its part
is sent, so a large study never sits in memory whole.

Outcomes, mapped where httpx hands them over:

- 200/202 -> :class:`Delivery`; the DICOM JSON response's FailedSOPSequence
  (0008,1198) is read: any failed instance is a PermanentError naming it,
  unless every failure reason is 0xA7xx (out of resources), which is retried.
- 408, 429, 5xx, connection errors, timeouts -> RecoverableError.
- 409 and every other 4xx (auth, not found, unsupported media) -> PermanentError.

No PHI in messages: SOP Instance UIDs, HTTP statuses, failure reason codes.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ValidationError
from pydicom import dcmread

from connectors.base import Delivery
from connectors.dicom_send import PrepareInstance
from connectors.http_common import BasicAuth, BearerAuth, HttpTarget, NoAuth, async_client
from engine.errors import EngineError, PermanentError, RecoverableError
from engine.study_batch import InstanceRef, StudyBatch

__all__ = [
    "BasicAuth",
    "BearerAuth",
    "DicomWebConfig",
    "DicomWebDestination",
    "NoAuth",
    "StowResult",
    "read_stow_response",
]

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
_RETRYABLE_STATUSES = {408, 429}
_LISTED_FAILURES = 5


class DicomWebConfig(HttpTarget):
    """A STOW-RS destination (``type: dicomweb``); instances go to ``{url}/studies``."""

    type: Literal["dicomweb"]

class StowResult(BaseModel):
    """What a STOW-RS response says, PHI-free."""

    stored: int
    warnings: int
    failed: list[tuple[str, int | None]]


class DicomWebDestination:
    """Stores study batches on a DICOMweb server with STOW-RS."""

    def __init__(
        self, config: DicomWebConfig, *, prepare_instance: PrepareInstance | None = None
    ) -> None:
        self.config = config
        self._prepare = prepare_instance
        self._endpoint = f"{config.url}/studies"

    async def send(self, payload: str) -> Delivery:
        """POST the batch; see the module docstring for the errors raised."""
        batch = _parse(payload)
        boundary = uuid.uuid4().hex
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        parts = _parts(batch.instances, boundary.encode("ascii"), self._encode)
        try:
            async with self._client() as client:
                response = await client.post(self._endpoint, content=parts, headers=headers)
        except _PartError as exc:
            raise PermanentError(str(exc)) from exc.__cause__
        except httpx.TimeoutException as exc:
            raise RecoverableError(f"STOW-RS to {self._endpoint} timed out") from exc
        except httpx.TransportError as exc:
            raise RecoverableError(
                f"STOW-RS to {self._endpoint} failed: {type(exc).__name__}"
            ) from exc
        return self._delivery(response, len(batch.instances))

    async def close(self) -> None:
        """Nothing held between sends (each batch uses its own client)."""

    def _client(self) -> httpx.AsyncClient:
        return async_client(self.config)

    def _encode(self, ref: InstanceRef) -> bytes:
        """The Part 10 bytes of one instance, prepared if asked (runs in a worker thread)."""
        if self._prepare is None:
            return Path(ref.path).read_bytes()
        ds = self._prepare(dcmread(ref.path))
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    def _delivery(self, response: httpx.Response, sent: int) -> Delivery:
        status = response.status_code
        where = f"STOW-RS to {self._endpoint}"
        if status >= 500 or status in _RETRYABLE_STATUSES:
            raise RecoverableError(f"{where}: HTTP {status}")
        if status not in (200, 202):
            result = read_stow_response(response)
            detail = f"; {_failures(result)}" if result.failed else ""
            raise PermanentError(f"{where}: HTTP {status}{detail}")
        result = read_stow_response(response, default_stored=sent)
        if result.failed:
            failure = f"{where}: {len(result.failed)} of {sent} instances failed: "
            if all(reason is not None and reason >> 8 == 0xA7 for _, reason in result.failed):
                raise RecoverableError(failure + _failures(result))
            raise PermanentError(failure + _failures(result))
        return Delivery(
            response=f"stored {result.stored} instances",
            detail=f"HTTP {status}; {result.warnings} with warnings",
        )


def read_stow_response(response: httpx.Response, *, default_stored: int = 0) -> StowResult:
    """Counts and failures from a DICOM JSON STOW-RS response (lenient: servers vary).

    A response without a body (some servers answer 200 with nothing) counts as
    ``default_stored`` instances stored.
    """
    body = _json_object(response)
    if body is None:
        return StowResult(stored=default_stored, warnings=0, failed=[])
    referenced = _items(body, REFERENCED_SOP_SEQUENCE)
    failed = [
        (str(_first(item, REFERENCED_SOP_INSTANCE_UID) or "?"), _int(_first(item, FAILURE_REASON)))
        for item in _items(body, FAILED_SOP_SEQUENCE)
    ]
    warnings = sum(1 for item in referenced if WARNING_REASON in item)
    stored = len(referenced) if REFERENCED_SOP_SEQUENCE in body else default_stored - len(failed)
    return StowResult(stored=stored, warnings=warnings, failed=failed)


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:  # empty or not JSON (an HTML error page, XML)
        return None
    if isinstance(body, list):  # some servers wrap the dataset in an array
        body = body[0] if body else None
    return body if isinstance(body, dict) else None


def _items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = body.get(tag)
    values = element.get("Value", []) if isinstance(element, dict) else []
    return [item for item in values if isinstance(item, dict)]


def _first(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _failures(result: StowResult) -> str:
    listed = [
        f"{uid} (reason {'?' if reason is None else f'0x{reason:04X}'})"
        for uid, reason in result.failed[:_LISTED_FAILURES]
    ]
    more = len(result.failed) - _LISTED_FAILURES
    return ", ".join(listed) + (f" and {more} more" if more > 0 else "")


def _parse(payload: str) -> StudyBatch:
    try:
        return StudyBatch.model_validate_json(payload)
    except ValidationError as exc:
        raise PermanentError(f"not a study batch: {exc.error_count()} validation error(s)") from exc


class _PartError(Exception):
    """An instance could not be read or prepared while streaming the body (PHI-free text)."""


async def _parts(
    refs: list[InstanceRef], boundary: bytes, encode: Callable[[InstanceRef], bytes]
) -> AsyncIterator[bytes]:
    """The multipart/related body, produced part by part as httpx sends it."""
    for ref in refs:
        data = await asyncio.to_thread(_encode_part, ref, encode)
        yield b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"
        yield data
        yield b"\r\n"
    yield b"--" + boundary + b"--\r\n"


def _encode_part(ref: InstanceRef, encode: Callable[[InstanceRef], bytes]) -> bytes:
    try:
        return encode(ref)
    except OSError as exc:
        reason = exc.strerror or "I/O error"
        raise _PartError(f"cannot read instance {ref.sop_instance_uid}: {reason}") from exc
    except EngineError as exc:  # our own errors are PHI-free by convention
        raise _PartError(f"cannot prepare instance {ref.sop_instance_uid}: {exc}") from exc
    except Exception as exc:  # pydicom on a damaged file, a failing preparation
        raise _PartError(
            f"cannot prepare instance {ref.sop_instance_uid} ({type(exc).__name__})"
        ) from exc
