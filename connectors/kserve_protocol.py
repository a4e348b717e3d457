"""The KServe v2 / Triton inference protocol on the wire: one input tensor out, named outputs back.

A request is ``POST .../infer`` with a JSON object::

    {"id": "...",
     "inputs": [{"name": "image", "shape": [N, rows, cols], "datatype": "FP32",
                 "data": [...] | "parameters": {"binary_data_size": bytes}}],
     "outputs": [{"name": "scores", "parameters": {"binary_data": true}}, ...]}

With the binary tensor data extension (Triton, KServe) the body is that JSON
followed by the raw tensor bytes (little-endian, row-major) and the
``Inference-Header-Content-Length`` header says where the JSON ends. JSON
mode puts the tensor in ``data`` as a flat row-major list: readable, but a CT
volume in JSON is several times its binary size, so binary is the default.

A response is ``{"model_name", "model_version", "outputs": [{"name", "shape",
"datatype", "data" | "parameters": {"binary_data_size"}}]}``; when it uses
the extension, outputs with ``binary_data_size`` take their bytes from the
tail, in the order the outputs are listed.

Anything malformed in a 2xx response is a :class:`PermanentError` naming the
output: asking the same model the same question again would not change it.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from engine.errors import PermanentError

__all__ = [
    "HEADER_LENGTH",
    "EncodedRequest",
    "InferResponse",
    "InputDatatype",
    "decode_response",
    "encode_request",
    "input_dtype",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

InputDatatype = Literal["FP32", "INT16"]

# v2 numeric datatypes; BYTES (strings) has no fixed width and is never a tensor we read.
_DTYPES: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


@dataclass(frozen=True)
class EncodedRequest:
    """The body and headers of one infer request."""

    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class InferResponse:
    """The decoded outputs a request asked for, with who answered (for the audit detail)."""

    model_name: str | None
    model_version: str | None
    outputs: dict[str, npt.NDArray[Any]]


def input_dtype(datatype: InputDatatype) -> np.dtype[Any]:
    """The numpy dtype the input tensor must have for ``datatype``."""
    return np.dtype(_DTYPES[datatype])


def encode_request(
    tensor: npt.NDArray[Any],
    *,
    input_name: str,
    datatype: InputDatatype,
    outputs: Sequence[str],
    binary: bool,
) -> EncodedRequest:
    """One infer request carrying ``tensor`` as input ``input_name``, asking for ``outputs``.

    The request ``id`` is random: nothing about the study leaves the hub but pixels.
    """
    data = np.ascontiguousarray(tensor, dtype=input_dtype(datatype))
    spec: dict[str, Any] = {"name": input_name, "shape": list(data.shape), "datatype": datatype}
    wanted = [{"name": name, "parameters": {"binary_data": binary}} for name in outputs]
    request: dict[str, Any] = {"id": uuid.uuid4().hex, "inputs": [spec], "outputs": wanted}
    if not binary:
        spec["data"] = data.ravel().tolist()
        body = json.dumps(request, separators=(",", ":")).encode()
        return EncodedRequest(body, {"Content-Type": "application/json"})
    spec["parameters"] = {"binary_data_size": data.nbytes}
    header = json.dumps(request, separators=(",", ":")).encode()
    # One copy of the tensor (join reads the array's buffer directly), not two.
    body = b"".join((header, data.data))
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return EncodedRequest(body, headers)


def decode_response(body: bytes, header_length: str | None, wanted: Sequence[str]) -> InferResponse:
    """The ``wanted`` outputs of a 2xx infer response (missing ones are simply absent)."""
    header, tail = _split(body, header_length)
    raw_outputs = header.get("outputs")
    if not isinstance(raw_outputs, list):
        raise PermanentError("inference response has no 'outputs' list")
    outputs: dict[str, npt.NDArray[Any]] = {}
    offset = 0
    for raw in raw_outputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise PermanentError("inference response has an output without a name")
        size = _binary_size(raw)
        chunk = tail[offset : offset + size] if size is not None else None
        if size is not None:
            offset += size
            if len(chunk or b"") != size:
                raise PermanentError(f"model output '{raw['name']}' is cut short")
        if raw["name"] in wanted:
            outputs[raw["name"]] = _tensor(raw, chunk)
    return InferResponse(
        _text(header.get("model_name")), _text(header.get("model_version")), outputs
    )


def _split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary tail (empty without the extension)."""
    if header_length is None:
        head, tail = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise PermanentError(f"inference response has a bad {HEADER_LENGTH}")
        head, tail = body[:length], body[length:]
    try:
        header = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PermanentError("inference response is not JSON") from exc
    if not isinstance(header, dict):
        raise PermanentError("inference response is not a JSON object")
    return header, tail


def _binary_size(raw: dict[str, Any]) -> int | None:
    parameters = raw.get("parameters")
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise PermanentError(f"model output '{raw['name']}' has a bad binary_data_size")
    return size


def _tensor(raw: dict[str, Any], chunk: bytes | None) -> npt.NDArray[Any]:
    """One output as an array of its declared shape and datatype."""
    name = raw["name"]
    dtype = _DTYPES.get(str(raw.get("datatype")))
    if dtype is None:
        raise PermanentError(
            f"model output '{name}' has unsupported datatype {raw.get('datatype')}"
        )
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise PermanentError(f"model output '{name}' has no valid shape")
    try:
        if chunk is not None:
            array = np.frombuffer(chunk, dtype=dtype)
        else:
            array = np.asarray(raw.get("data"), dtype=dtype).ravel()
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"model output '{name}' has unreadable data") from exc
    if array.size != math.prod(shape):
        raise PermanentError(f"model output '{name}' has {array.size} values for shape {shape}")
    return array.reshape(shape)


def _text(value: object) -> str | None:
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None
