"""FHIR R4 destination: a report's resources as one conditional transaction to the EHR.

The payload is the output of ``transforms/report_to_fhir.j2``: ``{"resources":
[...]}``. Each send validates every resource (fhirclient R4 models), builds a
transaction Bundle of conditional updates keyed on each resource's first
identifier, and POSTs it to ``base_url`` (see :mod:`connectors.fhir_bundle`
for validation, idempotence and references). A resend, or the final report
after the preliminary one, updates the same resources.

Outcomes, mapped where httpx hands them over:

- 2xx -> ``Delivery(response="DiagnosticReport <id> version <v> (k resources)")``;
- 408, 429, 5xx, connection errors, timeouts -> RecoverableError;
- every other status (400 invalid, 401/403, 404, 412 several matches, 422)
  -> PermanentError with the OperationOutcome's diagnostics (200 characters
  at most). Servers may quote the resource in them: the text is stored with
  the message, like any error, and is not logged by this module;
- an invalid payload -> PermanentError before anything is sent.

Authentication: none, basic, bearer (:mod:`connectors.http_common`), or SMART
Backend Services (:mod:`connectors.fhir_auth`), whose token is kept between
sends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from connectors.base import Delivery
from connectors.fhir_auth import SmartBackendAuth, SmartBackendConfig
from connectors.fhir_bundle import (
    Entry,
    TransactionResult,
    build_transaction,
    id_and_version,
    parse_resources,
    read_transaction_response,
    validate_resource,
)
from connectors.http_common import (
    BasicAuth,
    BearerAuth,
    HttpTarget,
    HttpUrl,
    NoAuth,
    TlsVerify,
    async_client,
)
from engine.errors import PermanentError, RecoverableError

__all__ = [
    "BasicAuth",
    "BearerAuth",
    "FhirAuth",
    "FhirConfig",
    "FhirDestination",
    "NoAuth",
    "SmartBackendConfig",
]

FHIR_JSON = "application/fhir+json"
_RETRYABLE_STATUSES = {408, 429}
_DETAIL_LIMIT = 200

FhirAuth = Annotated[
    NoAuth | BasicAuth | BearerAuth | SmartBackendConfig, Field(discriminator="type")
]


class FhirConfig(BaseModel):
    """A FHIR R4 server (``type: fhir``); transactions are POSTed to ``base_url``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["fhir"]
    base_url: HttpUrl = Field(description="the FHIR base (service root), http:// or https://")
    auth: FhirAuth = Field(default_factory=NoAuth)
    timeout_seconds: float = Field(default=60, gt=0, description="each HTTP request")
    verify_tls: TlsVerify = Field(
        default=True, description="verify the server certificate; a path names a CA bundle"
    )
    create_only: list[str] = Field(
        default_factory=lambda: ["ImagingStudy"],
        description="resource types created when absent but never overwritten (ifNoneExist)",
    )

    def http_target(self) -> HttpTarget:
        """The connection settings in the shape the shared HTTP client takes.

        SMART is not an :class:`HttpTarget` auth (it keeps state between sends):
        the destination applies it per request instead.
        """
        auth = NoAuth() if isinstance(self.auth, SmartBackendConfig) else self.auth
        return HttpTarget(
            url=self.base_url,
            auth=auth,
            timeout_seconds=self.timeout_seconds,
            verify_tls=self.verify_tls,
        )


class FhirDestination:
    """Delivers report resources to a FHIR R4 server as one conditional transaction.

    ``clock`` (monotonic seconds) decides when a cached SMART token is due for
    renewal; tests pass a fake one.
    """

    def __init__(self, config: FhirConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._target = config.http_target()
        self._create_only = frozenset(config.create_only)
        self._smart = (
            SmartBackendAuth(config.auth, clock=clock)
            if isinstance(config.auth, SmartBackendConfig)
            else None
        )

    async def send(self, payload: str) -> Delivery:
        """Validate, then POST the transaction; see the module docstring for the errors."""
        resources = parse_resources(payload)
        for index, resource in enumerate(resources):
            validate_resource(index, resource)
        bundle, entries = build_transaction(resources, create_only=self._create_only)
        response = await self._post(bundle)
        return _delivery(response, entries, self.config.base_url)

    async def close(self) -> None:
        """Nothing held between sends but the SMART token (each send uses its own client)."""

    async def _post(self, bundle: dict[str, Any]) -> httpx.Response:
        where = f"FHIR transaction to {self.config.base_url}"
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        body = json.dumps(bundle, ensure_ascii=False).encode("utf-8")
        try:
            async with async_client(self._target) as client:
                return await client.post(
                    self.config.base_url,
                    content=body,
                    headers=headers,
                    # Not None: that would switch off the client's own basic/bearer auth.
                    auth=self._smart or httpx.USE_CLIENT_DEFAULT,
                )
        except httpx.TimeoutException as exc:
            raise RecoverableError(f"{where} timed out") from exc
        except httpx.TransportError as exc:
            failed = f"{where} failed: {type(exc).__name__}"
            raise RecoverableError(failed + _elsewhere(exc, self.config.base_url)) from exc


def _elsewhere(exc: httpx.TransportError, base_url: str) -> str:
    """`` at <url>`` when the failed request was not the FHIR one (the SMART token endpoint)."""
    try:
        url = str(exc.request.url)
    except RuntimeError:  # no request attached
        return ""
    return "" if url == base_url else f" at {url}"


def _delivery(response: httpx.Response, entries: list[Entry], base_url: str) -> Delivery:
    status = response.status_code
    where = f"FHIR transaction to {base_url}: HTTP {status}"
    if status >= 500 or status in _RETRYABLE_STATUSES:
        raise RecoverableError(_with_diagnostics(where, response))
    if not 200 <= status < 300:
        raise PermanentError(_with_diagnostics(where, response))
    results = read_transaction_response(_json(response), entries)
    return Delivery(response=_summary(results, len(entries)), detail=_detail(status, results))


def _summary(results: list[TransactionResult], count: int) -> str:
    """``DiagnosticReport 123 version 2 (5 resources)``: the report the EHR now holds."""
    for result in results:
        if result.resource_type == "DiagnosticReport":
            logical_id, version = id_and_version(result)
            return f"DiagnosticReport {logical_id} version {version} ({count} resources)"
    return f"{count} resources"


def _detail(status: int, results: list[TransactionResult]) -> str:
    if not results:
        return f"HTTP {status}; no transaction-response Bundle"
    created = sum(1 for result in results if result.status.startswith("201"))
    return f"HTTP {status}; {created} created, {len(results) - created} updated or unchanged"


def _with_diagnostics(where: str, response: httpx.Response) -> str:
    text = _diagnostics(_json(response))
    return f"{where}: {text[:_DETAIL_LIMIT]}" if text else where


def _diagnostics(body: Any) -> str:
    """The issues of an OperationOutcome: diagnostics, else details.text, joined."""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ""
    texts = []
    for issue in body.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details")
        text = issue.get("diagnostics")
        if not text and isinstance(details, dict):
            text = details.get("text")
        if isinstance(text, str) and text:
            texts.append(text)
    return "; ".join(texts)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:  # empty, HTML error page
        return None
