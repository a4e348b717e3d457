"""A real KServe v2 / Triton inference server on localhost, with a toy CT "model", for tests.

It speaks the protocol over HTTP (stdlib ``ThreadingHTTPServer`` in a thread),
written from the protocol's description and not from the hub's client code,
so a shared misunderstanding cannot hide a bug:

- ``GET /v2/health/ready`` -> 200;
- ``GET /v2/models/{model}[/versions/{v}]`` -> model metadata (inputs, outputs);
- ``POST /v2/models/{model}[/versions/{v}]/infer`` -> inference; JSON ``data``
  or the binary tensor data extension (``Inference-Header-Content-Length``)
  in, JSON or binary outputs back (binary for each output asking
  ``"binary_data": true``, as Triton does). Errors are ``{"error": "..."}``.

The model ("hyperdense"): input ``image`` ``[N, rows, cols]`` in HU (FP32 or
INT16). For each slice with pixels between 50 and 90 HU (inclusive): a score
``min(1, pixels / reference_area)``, the box ``[x0, y0, x1, y1]`` around those
pixels (x along columns; x1, y1 one past the last pixel) and the slice index.
Outputs: ``scores`` FP32 ``[K]``, ``boxes`` FP32 ``[K, 4]``, ``slice_index``
INT64 ``[K]``; K = 0 when no slice has any.

Knobs (set between requests): ``delay_seconds`` (a slow model), ``fail_with``
(answer every infer with that HTTP status), ``token`` (require that bearer
token), ``boxes_transposed`` (a model exported with ``[4, K]`` boxes),
``drop_outputs`` (a model that forgets outputs); :meth:`stop` and
:meth:`start` take it down and bring it back on the same port.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import numpy.typing as npt

from tests.support.storescp import free_port

__all__ = ["KServeServer", "RecordedRequest"]

HEADER_LENGTH = "Inference-Header-Content-Length"
_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/infer)?$")
_INPUT_DTYPES = {"FP32": "<f4", "INT16": "<i2"}
_OUTPUT_DTYPES = {"scores": "FP32", "boxes": "FP32", "slice_index": "INT64"}
_NUMPY = {"FP32": "<f4", "INT64": "<i8"}


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class RecordedRequest:
    """What one infer request carried (for assertions)."""

    path: str
    binary: bool
    authorization: str | None
    datatype: str
    shape: list[int]
    tensor: npt.NDArray[Any]
    outputs: list[dict[str, Any]]


@dataclass
class KServeServer:
    """The server; use as a context manager or call :meth:`start` / :meth:`stop`."""

    model: str = "hyperdense"
    versions: tuple[str, ...] = ("1",)
    input_name: str = "image"
    reference_area: int = 256
    port: int = field(default_factory=free_port)
    delay_seconds: float = 0.0
    fail_with: int | None = None
    token: str | None = None
    boxes_transposed: bool = False
    drop_outputs: set[str] = field(default_factory=set)
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._httpd: ThreadingHTTPServer | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        """The root URL (what a ``kserve`` destination's ``url`` is)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (again) on ``port``."""
        self._stopping.clear()
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        httpd.app = self  # type: ignore[attr-defined]
        # A short poll interval: stop() (shutdown) waits up to one interval.
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        self._httpd = httpd

    def stop(self) -> None:
        """Stop listening; a request sleeping in ``delay_seconds`` wakes up and is dropped."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> KServeServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def metadata(self) -> dict[str, Any]:
        """The v2 model metadata document."""
        outputs = [
            {"name": "scores", "datatype": "FP32", "shape": [-1]},
            {"name": "boxes", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "slice_index", "datatype": "INT64", "shape": [-1]},
        ]
        return {
            "name": self.model,
            "versions": list(self.versions),
            "platform": "meridian_test",
            "inputs": [{"name": self.input_name, "datatype": "FP32", "shape": [-1, -1, -1]}],
            "outputs": outputs,
        }

    def infer(self, hu: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        """The toy model on a ``[N, rows, cols]`` HU tensor."""
        scores: list[float] = []
        boxes: list[list[float]] = []
        indices: list[int] = []
        for index, image in enumerate(hu.astype(np.float32)):
            ys, xs = np.nonzero((image >= 50) & (image <= 90))
            if xs.size == 0:
                continue
            scores.append(min(1.0, xs.size / self.reference_area))
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            indices.append(index)
        box_array = np.array(boxes, dtype="<f4").reshape(-1, 4)
        return {
            "scores": np.array(scores, dtype="<f4"),
            "boxes": box_array.T.copy() if self.boxes_transposed else box_array,
            "slice_index": np.array(indices, dtype="<i8"),
        }

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` unless stopped meanwhile."""
        self._stopping.wait(seconds)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def app(self) -> KServeServer:
        app: KServeServer = self.server.app  # type: ignore[attr-defined]
        return app

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read assertions, not access logs."""

    def do_GET(self) -> None:
        if self.path == "/v2/health/ready":
            self._reply(200, b"", "application/json")
            return
        match = _MODEL_PATH.match(self.path)
        if match is None or match.group(3) is not None or match.group(1) != self.app.model:
            self._error(404, f"no such path or model: {self.path}")
            return
        self._json(200, self.app.metadata())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            self._check_route()
            self.app.wait(self.app.delay_seconds)
            if self.app.fail_with is not None:
                raise _HTTPError(self.app.fail_with, "injected failure")
            request, tail = _split(body, self.headers.get(HEADER_LENGTH))
            record = self._record(request, tail)
            self.app.requests.append(record)
            outputs = self.app.infer(record.tensor)
            self._answer(outputs, request.get("outputs"))
        except _HTTPError as exc:
            self._error(exc.status, str(exc))

    def _check_route(self) -> None:
        match = _MODEL_PATH.match(self.path)
        if match is None or match.group(3) is None:
            raise _HTTPError(404, f"no such path: {self.path}")
        if match.group(1) != self.app.model:
            raise _HTTPError(400, f"Request for unknown model: '{match.group(1)}' is not found")
        version = match.group(2)
        if version is not None and version not in self.app.versions:
            raise _HTTPError(400, f"Request for unknown model version: '{version}'")
        expected = f"Bearer {self.app.token}"
        if self.app.token is not None and self.headers.get("Authorization") != expected:
            raise _HTTPError(401, "unauthorized")

    def _record(self, request: dict[str, Any], tail: bytes) -> RecordedRequest:
        inputs = request.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1:
            raise _HTTPError(400, "expected exactly one input")
        spec = inputs[0]
        if spec.get("name") != self.app.input_name:
            raise _HTTPError(400, f"unexpected inference input '{spec.get('name')}'")
        return RecordedRequest(
            path=self.path,
            binary=self.headers.get(HEADER_LENGTH) is not None,
            authorization=self.headers.get("Authorization"),
            datatype=spec.get("datatype"),
            shape=spec.get("shape"),
            tensor=_input_tensor(spec, tail),
            outputs=list(request.get("outputs") or []),
        )

    def _answer(self, outputs: dict[str, npt.NDArray[Any]], asked: Any) -> None:
        wanted: list[dict[str, Any]] = (
            asked if isinstance(asked, list) else [{"name": name} for name in outputs]
        )
        documents: list[dict[str, Any]] = []
        chunks: list[bytes] = []
        for item in wanted:
            name = item.get("name")
            if name not in outputs:
                raise _HTTPError(400, f"unexpected inference output '{name}'")
            if name in self.app.drop_outputs:
                continue
            array = outputs[name]
            datatype = _OUTPUT_DTYPES[name]
            document: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [*array.shape]}
            if (item.get("parameters") or {}).get("binary_data"):
                raw = array.astype(_NUMPY[datatype]).tobytes()
                document["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                document["data"] = array.ravel().tolist()
            documents.append(document)
        version = self.app.versions[-1]
        answer = {"model_name": self.app.model, "model_version": version, "outputs": documents}
        header = json.dumps(answer).encode()
        if not chunks:
            self._reply(200, header, "application/json")
            return
        extra = {HEADER_LENGTH: str(len(header))}
        self._reply(200, header + b"".join(chunks), "application/octet-stream", extra)

    def _json(self, status: int, document: dict[str, Any]) -> None:
        self._reply(status, json.dumps(document).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _reply(
        self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            self.close_connection = True


def _split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    length = int(header_length) if header_length is not None else len(body)
    try:
        request = json.loads(body[:length])
    except ValueError as exc:
        raise _HTTPError(400, "request header is not JSON") from exc
    if not isinstance(request, dict):
        raise _HTTPError(400, "request header is not a JSON object")
    return request, body[length:]


def _input_tensor(spec: dict[str, Any], tail: bytes) -> npt.NDArray[Any]:
    datatype, shape = spec.get("datatype"), spec.get("shape")
    if datatype not in _INPUT_DTYPES:
        raise _HTTPError(400, f"unsupported input datatype {datatype}")
    if not isinstance(shape, list) or len(shape) != 3:
        raise _HTTPError(400, f"input shape must be [N, rows, cols], got {shape}")
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != len(tail):  # one input: its bytes are the whole tail
            raise _HTTPError(400, f"binary_data_size {size} but {len(tail)} bytes follow")
        flat = np.frombuffer(tail, dtype=_INPUT_DTYPES[datatype])
    else:
        flat = np.asarray(spec.get("data"), dtype=_INPUT_DTYPES[datatype]).ravel()
    if flat.size != int(np.prod(shape)):
        raise _HTTPError(400, f"{flat.size} values for input shape {shape}")
    return flat.reshape(shape)
