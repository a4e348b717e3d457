"""``type: kserve`` — ask a model served with the KServe v2 / Triton protocol, make an AIResult.

The hub sends pixels, not DICOM: the study batch's largest series becomes one
input tensor (see :mod:`connectors.kserve_volume`) and the model's outputs
are turned into an :class:`~engine.ai_result.AIResult` here, which is handed
to the results channel (``results_channel``) like any other AI result. Only
pixels and a random request id leave the hub: no UIDs, no names.

The model contract (what the test server in ``tests/support/kserve_server.py``
implements):

- input ``input_name``: shape ``[N, rows, columns]``, datatype FP32 or INT16,
  Hounsfield units, slices in patient order (ascending along the slice normal);
- output ``scores``: shape ``[K]``, each in [0, 1]: one per finding (a model
  scoring every slice returns K = N);
- output ``boxes`` (optional): shape ``[K, 4]``, x0, y0, x1, y1 in pixels of
  the slice (x along columns, y along rows);
- output ``slice_index`` (optional): shape ``[K]``, integers in [0, N): the
  slice each finding is on; it names the finding's referenced instance.

K may be 0 (no findings). Outputs may be any numeric v2 datatype, in JSON or
binary. Findings scoring below ``min_score`` are dropped; a finding is
critical when its score is at least ``critical_threshold``.

Errors: connection refused or reset, the timeout (the whole request),
HTTP 408/429/5xx -> RecoverableError; other 4xx -> PermanentError (with the
server's ``error`` text); a 2xx whose outputs are missing, malformed or of
the wrong shape -> PermanentError naming the output. A RecoverableError from
the results channel propagates: the batch is retried (and inferred again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.base import Delivery
from connectors.http_common import BearerAuth, HttpTarget, NoAuth, async_client
from connectors.kserve_protocol import (
    HEADER_LENGTH,
    InferResponse,
    InputDatatype,
    decode_response,
    encode_request,
    input_dtype,
)
from connectors.kserve_volume import Volume, largest_series, load_volume
from engine.ai_result import AIFinding, AIResult
from engine.errors import PermanentError, RecoverableError
from engine.study_batch import StudyBatch

__all__ = [
    "BearerAuth",
    "KServeConfig",
    "KServeDestination",
    "NoAuth",
    "OutputMapping",
    "read_findings",
]

logger = logging.getLogger(__name__)

Forward = Callable[[bytes], Awaitable[bytes | None]]

_RETRYABLE_STATUSES = {408, 429}
_ERROR_TEXT_LIMIT = 200




class OutputMapping(BaseModel):
    """Which model outputs hold what (see the module docstring for their shapes)."""

    model_config = ConfigDict(extra="forbid")

    scores: str = Field(default="scores", min_length=1, description="[K] scores in [0, 1]")
    boxes: str | None = Field(
        default="boxes", min_length=1, description="[K, 4] x0, y0, x1, y1; null: no boxes"
    )
    slice_index: str | None = Field(
        default="slice_index",
        min_length=1,
        description="[K] slice of each finding; null: findings name no instance",
    )

    def names(self) -> list[str]:
        """The outputs to ask the model for."""
        return [n for n in (self.scores, self.boxes, self.slice_index) if n is not None]


class KServeConfig(HttpTarget):
    """A model behind the KServe v2 / Triton inference protocol (``type: kserve``).

    ``url`` is the server root, e.g. http://triton:8000 (no /v2).
    """

    type: Literal["kserve"]
    model: str = Field(min_length=1, description="the served model's name")
    model_version: str | None = Field(
        default=None, min_length=1, description="served version; null: the server's default"
    )
    input_name: str = Field(default="image", min_length=1)
    datatype: InputDatatype = Field(default="FP32", description="HU as FP32, or rounded INT16")
    binary_data: bool = Field(
        default=True, description="binary tensor data extension; false: plain JSON arrays"
    )
    outputs: OutputMapping = Field(default_factory=OutputMapping)
    min_score: float = Field(default=0.0, ge=0, le=1, description="lower scores are dropped")
    critical_threshold: float = Field(default=0.8, ge=0, le=1)
    finding_code: str = Field(default="ai-finding", min_length=1)
    finding_label: str = Field(default="AI finding", min_length=1)
    results_channel: str = Field(min_length=1, description="the hub channel taking AIResults")

    def infer_url(self) -> str:
        """``{url}/v2/models/{model}[/versions/{version}]/infer``."""
        path = f"{self.url}/v2/models/{quote(self.model, safe='')}"
        if self.model_version is not None:
            path += f"/versions/{quote(self.model_version, safe='')}"
        return f"{path}/infer"


class KServeDestination:
    """Infers on each study batch and forwards the AIResult to the results channel."""

    def __init__(
        self, config: KServeConfig, *, model_name: str, model_version: str, forward: Forward
    ) -> None:
        self.config = config
        self.model_name = model_name
        self.model_version = model_version
        self._forward = forward
        self._endpoint = config.infer_url()

    async def send(self, payload: str) -> Delivery:
        """Infer on the batch's largest series; see the module docstring for the errors."""
        batch = _parse(payload)
        config = self.config
        volume = await asyncio.to_thread(
            load_volume, largest_series(batch), input_dtype(config.datatype)
        )
        request = await asyncio.to_thread(
            encode_request,
            volume.tensor,
            input_name=config.input_name,
            datatype=config.datatype,
            outputs=config.outputs.names(),
            binary=config.binary_data,
        )
        response = await self._post(request.body, request.headers)
        answer = await asyncio.to_thread(
            decode_response,
            response.content,
            response.headers.get(HEADER_LENGTH),
            config.outputs.names(),
        )
        findings = read_findings(answer, config, volume.sop_instance_uids)
        result = AIResult(
            study_instance_uid=batch.study_instance_uid,
            accession_number=_accession(batch, volume),
            model=self.model_name,
            model_version=self.model_version,
            findings=findings,
            produced_at=datetime.now(UTC),
            source="kserve",
        )
        logger.info("kserve: %d slices, %d findings", len(volume.sop_instance_uids), len(findings))
        reply = await self._forward(result.model_dump_json().encode())
        return Delivery(
            response=f"{len(findings)} findings ({self.model_name} {self.model_version})",
            detail=_detail(volume, answer, reply),
        )

    async def close(self) -> None:
        """Nothing held between sends (each batch uses its own client)."""

    async def _post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        where = f"inference at {self._endpoint}"
        try:
            async with asyncio.timeout(self.config.timeout_seconds), self._client() as client:
                response = await client.post(
                    self._endpoint, content=body, headers=headers
                )
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise RecoverableError(
                f"{where} timed out after {self.config.timeout_seconds:g} s"
            ) from exc
        except httpx.TransportError as exc:
            raise RecoverableError(f"{where} failed: {type(exc).__name__}") from exc
        status = response.status_code
        if status >= 500 or status in _RETRYABLE_STATUSES:
            raise RecoverableError(f"{where}: HTTP {status}{_server_error(response)}")
        if not response.is_success:
            raise PermanentError(f"{where}: HTTP {status}{_server_error(response)}")
        return response

    def _client(self) -> httpx.AsyncClient:
        return async_client(self.config)


def read_findings(
    answer: InferResponse, config: KServeConfig, sop_instance_uids: list[str]
) -> list[AIFinding]:
    """The findings the outputs describe (the contract is in the module docstring)."""
    names = config.outputs
    scores = _output(answer, names.scores, rank=1)
    count = scores.shape[0]
    if not np.all(np.isfinite(scores)) or np.any((scores < 0) | (scores > 1)):
        raise PermanentError(f"model output '{names.scores}' has scores outside [0, 1]")
    boxes = _output(answer, names.boxes, rank=2, shape=(count, 4)) if names.boxes else None
    if boxes is not None and not np.all(np.isfinite(boxes)):
        raise PermanentError(f"model output '{names.boxes}' has non-finite coordinates")
    slices = _slice_indices(answer, names.slice_index, count, len(sop_instance_uids))
    findings = []
    for k in range(count):
        score = float(scores[k])
        if score < config.min_score:
            continue
        findings.append(
            AIFinding(
                code=config.finding_code,
                label=config.finding_label,
                score=score,
                critical=score >= config.critical_threshold,
                referenced_sop_instance_uid=(
                    sop_instance_uids[slices[k]] if slices is not None else None
                ),
                bounding_box=[float(v) for v in boxes[k]] if boxes is not None else None,
            )
        )
    return findings


def _output(
    answer: InferResponse, name: str, *, rank: int, shape: tuple[int, ...] | None = None
) -> npt.NDArray[Any]:
    """Output ``name`` with the expected rank (and shape); PermanentError naming it if not."""
    array = answer.outputs.get(name)
    if array is None:
        got = ", ".join(sorted(answer.outputs)) or "none of the asked ones"
        raise PermanentError(f"model output '{name}' is missing (got: {got})")
    if array.ndim != rank or (shape is not None and array.shape != shape):
        expected = list(shape) if shape is not None else f"rank {rank}"
        raise PermanentError(
            f"model output '{name}' has shape {list(array.shape)}, expected {expected}"
        )
    if array.dtype == np.bool_:
        raise PermanentError(f"model output '{name}' is BOOL, expected numbers")
    return array


def _slice_indices(
    answer: InferResponse, name: str | None, count: int, slices: int
) -> list[int] | None:
    """Each finding's slice, checked to be an integer naming a slice of the input."""
    if name is None:
        return None
    values = _output(answer, name, rank=1, shape=(count,))
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise PermanentError(f"model output '{name}' has non-integer slice indices")
    indices = [int(v) for v in values]
    if any(not 0 <= i < slices for i in indices):
        raise PermanentError(f"model output '{name}' names a slice outside 0..{slices - 1}")
    return indices


def _accession(batch: StudyBatch, volume: Volume) -> str | None:
    """The batch's AccessionNumber (normalized) when it has one, else the images'."""
    value = batch.metadata.get("AccessionNumber")
    return str(value) if value else volume.accession_number


def _detail(volume: Volume, answer: InferResponse, reply: bytes | None) -> str:
    slices, rows, columns = volume.tensor.shape
    served = " ".join(v for v in (answer.model_name, answer.model_version) if v) or "unnamed"
    detail = f"{slices} slices of {rows}x{columns}; served by {served}"
    if reply:
        detail += f"; results channel: {reply[:_ERROR_TEXT_LIMIT].decode(errors='replace')}"
    return detail


def _server_error(response: httpx.Response) -> str:
    """The v2 ``{"error": "..."}`` text, shortened (it explains a refused tensor)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    return f": {str(error)[:_ERROR_TEXT_LIMIT]}" if error else ""


def _parse(payload: str) -> StudyBatch:
    try:
        return StudyBatch.model_validate_json(payload)
    except ValidationError as exc:
        raise PermanentError(f"not a study batch: {exc.error_count()} validation error(s)") from exc
