"""A real FHIR R4 server on localhost (stdlib ``ThreadingHTTPServer`` in a thread), for tests.

Endpoints (base ``/fhir``):

- ``POST /fhir`` with a transaction Bundle (see :mod:`tests.support.fhir_store`
  for the semantics and the independent fhir.resources R4B validation);
- ``GET /fhir/Type/id`` and ``GET /fhir/Type?identifier=system|value``;
- ``POST /auth/token``: the SMART Backend Services token endpoint
  (client_credentials with a JWT client assertion, verified with the
  registered public key; see :mod:`tests.support.smart_token`).

Authentication of the FHIR endpoints (``auth``): ``none``, ``basic``
(``username``/``password``), ``bearer`` (the static ``token``) or ``smart``
(tokens this server issued, not expired, not revoked). A refusal is a 401
with an OperationOutcome.

Knobs, set between requests: ``fail_with`` (answer FHIR requests with that
status), ``delay_seconds``, ``token_lifetime`` (``expires_in`` of new tokens),
:meth:`revoke_tokens`; :meth:`stop` / :meth:`start` take it down and bring it
back on the same port (the data stays).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs

from tests.support.fhir_store import FhirError, FhirStore, outcome, parse_search
from tests.support.smart_token import InvalidClient, SmartClient, verify_assertion
from tests.support.storescp import free_port

__all__ = ["AuthMode", "FhirServer", "RecordedRequest", "TokenRequest"]

FHIR_JSON = "application/fhir+json"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
AuthMode = Literal["none", "basic", "bearer", "smart"]


@dataclass(frozen=True)
class RecordedRequest:
    """One FHIR request as the server saw it (for assertions)."""

    method: str
    path: str
    authorization: str | None
    status: int


@dataclass(frozen=True)
class TokenRequest:
    """One call of the token endpoint."""

    client_id: str | None
    scope: str | None
    granted: bool
    reason: str | None = None


@dataclass
class FhirServer:
    """The server; use as a context manager or call :meth:`start` / :meth:`stop`."""

    auth: AuthMode = "none"
    username: str = "meridian"
    password: str = "s3cret"
    token: str = "static-token"
    smart_clients: dict[str, SmartClient] = field(default_factory=dict)
    token_lifetime: int | None = 300
    port: int = field(default_factory=free_port)
    fail_with: int | None = None
    delay_seconds: float = 0.0
    store: FhirStore = field(default_factory=FhirStore)
    requests: list[RecordedRequest] = field(default_factory=list)
    token_requests: list[TokenRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._httpd: ThreadingHTTPServer | None = None
        self._tokens: dict[str, float] = {}  # access token -> expiry (time.time())
        self._seen_jti: set[str] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The FHIR base (what a ``fhir`` destination's ``base_url`` is)."""
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def token_url(self) -> str:
        """The SMART token endpoint."""
        return f"http://127.0.0.1:{self.port}/auth/token"

    def start(self) -> None:
        """Listen (again) on ``port``."""
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        httpd.app = self  # type: ignore[attr-defined]
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        self._httpd = httpd

    def stop(self) -> None:
        """Stop listening (the resources and tokens are kept)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FhirServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def revoke_tokens(self) -> None:
        """Forget every issued token: the next request with one gets a 401."""
        with self._lock:
            self._tokens.clear()

    # --- request handling (called from the handler threads) ----------------------

    def authorized(self, header: str | None) -> bool:
        """Whether the Authorization header passes the configured mode."""
        if self.auth == "none":
            return True
        if self.auth == "basic":
            expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return header == f"Basic {expected}"
        if header is None or not header.startswith("Bearer "):
            return False
        token = header.removeprefix("Bearer ")
        if self.auth == "bearer":
            return token == self.token
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and time.time() < expiry

    def fhir(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        """Status and JSON body of a FHIR request (auth already checked)."""
        if self.fail_with is not None:
            return self.fail_with, outcome(f"simulated failure {self.fail_with}", "transient")
        try:
            if method == "POST" and path.rstrip("/") == "/fhir":
                return 200, self.store.transaction(body)
            if method == "GET":
                return self._get(path)
        except FhirError as exc:
            return exc.status, exc.body
        return 404, outcome(f"{method} {path} is not supported here", "not-supported")

    def _get(self, path: str) -> tuple[int, dict[str, Any]]:
        kind, token = parse_search(path)
        if token is not None:
            matches = self.store.search(kind, token)
            entries = [{"resource": resource} for resource in matches]
            bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(matches)}
            return 200, {**bundle, "entry": entries}
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "fhir":
            resource = self.store.read(parts[1], parts[2])
            if resource is not None:
                return 200, resource
        return 404, outcome(f"{path} not found", "not-found")

    def issue_token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The token endpoint: an access token, or an OAuth error (RFC 6749 5.2)."""
        scope = form.get("scope")
        if form.get("grant_type") != "client_credentials":
            return self._refuse(scope, 400, "unsupported_grant_type", "client_credentials")
        if form.get("client_assertion_type") != JWT_BEARER or not scope:
            return self._refuse(scope, 400, "invalid_request", "assertion type or scope")
        try:
            with self._lock:
                client = verify_assertion(
                    form.get("client_assertion", ""),
                    clients=self.smart_clients,
                    audience=self.token_url,
                    now=time.time(),
                    seen=self._seen_jti,
                )
        except InvalidClient as exc:
            return self._refuse(scope, 401, "invalid_client", str(exc))
        access_token = secrets.token_urlsafe(16)
        lifetime = self.token_lifetime
        with self._lock:
            self._tokens[access_token] = time.time() + (lifetime or 300)
        self.token_requests.append(TokenRequest(client.client_id, scope, granted=True))
        body: dict[str, Any] = {"access_token": access_token, "token_type": "bearer"}
        if lifetime is not None:
            body["expires_in"] = lifetime
        return 200, {**body, "scope": scope}

    def _refuse(
        self, scope: str | None, status: int, error: str, reason: str
    ) -> tuple[int, dict[str, Any]]:
        self.token_requests.append(TokenRequest(None, scope, granted=False, reason=reason))
        return status, {"error": error, "error_description": reason}


class _Handler(BaseHTTPRequestHandler):
    server_version = "MeridianTestFHIR/1.0"

    @property
    def app(self) -> FhirServer:
        app: FhirServer = self.server.app  # type: ignore[attr-defined]
        return app

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows failures, not access logs."""

    def do_GET(self) -> None:
        self._fhir("GET", None)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") == "/auth/token":
            form = {key: values[0] for key, values in parse_qs(raw.decode("ascii")).items()}
            status, body = self.app.issue_token(form)
            self._reply(status, body, "application/json")
            return
        try:
            parsed = json.loads(raw)
        except ValueError:
            self._reply(400, outcome("the body is not JSON", "structure"), FHIR_JSON)
            return
        self._fhir("POST", parsed)

    def _fhir(self, method: str, body: Any) -> None:
        app = self.app
        if app.delay_seconds:
            time.sleep(app.delay_seconds)
        authorization = self.headers.get("Authorization")
        if app.authorized(authorization):
            status, answer = app.fhir(method, self.path, body)
        else:
            status, answer = 401, outcome("authentication required", "login")
        app.requests.append(RecordedRequest(method, self.path, authorization, status))
        self._reply(status, answer, FHIR_JSON)

    def _reply(self, status: int, body: dict[str, Any], content_type: str) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="fhir"')
        self.end_headers()
        self.wfile.write(data)
