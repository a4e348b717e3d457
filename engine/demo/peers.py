"""The EHR side of the demo: an MLLP receiver that ACKs, and a FHIR server that records.

Both are deliberately small and independent of the hub's own code (plain
sockets, the standard library's HTTP server), each serving in a daemon
thread on a free localhost port. They keep what they received in memory
for the demo to show.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FhirReceiver", "MllpReceiver"]

START, END = b"\x0b", b"\x1c\x0d"
_LOCALHOST = "127.0.0.1"


def ack_for(message: bytes) -> bytes:
    """An AA ACK (v2.5.1) echoing the message's MSH-10 in MSA-2."""
    msh = message.split(b"\r", 1)[0].decode("latin-1")
    fields = msh.split("|")
    control_id = fields[9] if len(fields) > 9 else ""
    sender, facility = (fields[2], fields[3]) if len(fields) > 3 else ("", "")
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    segments = [
        f"MSH|^~\\&|DEMO_EHR|HOSP|{sender}|{facility}|{now}||ACK^R01^ACK|A{control_id}|P|2.5.1",
        f"MSA|AA|{control_id}",
    ]
    return ("\r".join(segments) + "\r").encode("latin-1")


class _MllpHandler(socketserver.BaseRequestHandler):
    server: _MllpServer

    def handle(self) -> None:
        buffer = b""
        sock: socket.socket = self.request
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while END in buffer:
                raw, buffer = buffer.split(END, 1)
                message = raw[raw.find(START) + 1 :]
                self.server.owner.record(message)
                sock.sendall(START + ack_for(message) + END)


class _MllpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: MllpReceiver) -> None:
        self.owner = owner
        super().__init__((_LOCALHOST, 0), _MllpHandler)


class MllpReceiver:
    """An EHR's HL7 interface: answers AA to every message and keeps them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[str] = []
        self._server = _MllpServer(self)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True).start()

    def record(self, message: bytes) -> None:
        """Keep one received message (called from the connection threads)."""
        with self._lock:
            self._received.append(message.decode("utf-8", errors="replace"))

    def received(self) -> list[str]:
        """Every message received so far, segments separated by ``\\r``."""
        with self._lock:
            return list(self._received)

    def stop(self) -> None:
        """Stop listening."""
        self._server.shutdown()
        self._server.server_close()


class FhirReceiver:
    """An EHR's FHIR R4 endpoint: takes transaction Bundles at ``POST /fhir``.

    Each entry is answered as a conditional update would be (``201 Created``
    the first time a request URL is seen, ``200 OK`` with the next version
    after that) and the resources are kept by type.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, tuple[str, int]] = {}  # request url -> (id, version)
        self._resources: dict[str, dict[str, Any]] = {}  # "Type/id" -> resource
        self.transactions = 0
        self._server = ThreadingHTTPServer((_LOCALHOST, 0), _FhirHandler)
        self._server.owner = self  # type: ignore[attr-defined]
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True).start()

    @property
    def url(self) -> str:
        """The FHIR base URL (a ``fhir`` destination's ``base_url``)."""
        return f"http://{_LOCALHOST}:{self.port}/fhir"

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """Store a transaction's resources; the transaction-response Bundle."""
        answers = []
        with self._lock:
            self.transactions += 1
            for number, entry in enumerate(bundle.get("entry") or []):
                resource = dict(entry.get("resource") or {})
                kind = str(resource.get("resourceType", "Resource"))
                key = str((entry.get("request") or {}).get("url") or f"{kind}#{number}")
                known = self._versions.get(key)
                logical_id = known[0] if known else str(len(self._versions) + 1)
                version = known[1] + 1 if known else 1
                self._versions[key] = (logical_id, version)
                self._resources[f"{kind}/{logical_id}"] = {**resource, "id": logical_id}
                status = "200 OK" if known else "201 Created"
                location = f"{kind}/{logical_id}/_history/{version}"
                answers.append({"response": {"status": status, "location": location}})
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}

    def resources(self, kind: str) -> list[dict[str, Any]]:
        """The current version of every resource of ``kind`` received."""
        with self._lock:
            return [r for key, r in self._resources.items() if key.startswith(f"{kind}/")]

    def stop(self) -> None:
        """Stop listening."""
        self._server.shutdown()
        self._server.server_close()


class _FhirHandler(BaseHTTPRequestHandler):
    server_version = "MeridianDemoEHR/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the demo prints what matters."""

    def do_POST(self) -> None:
        owner: FhirReceiver = self.server.owner  # type: ignore[attr-defined]
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if self.path.rstrip("/") != "/fhir" or not isinstance(body, dict):
            self._reply(400, {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "invalid", "diagnostics": "POST a Bundle to /fhir"}
            ]})  # fmt: skip
            return
        self._reply(200, owner.transaction(body))

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
