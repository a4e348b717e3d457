"""The resource store and transaction semantics of the test FHIR server.

Written from the FHIR R4 specification (RESTful API: conditional update,
conditional create, transaction processing rules), not from the hub's client:

- every incoming resource is validated with fhir.resources' R4B models (an
  independent validator: fhirclient is what the hub uses); a failure is a
  400 OperationOutcome naming the entry and the element;
- ``PUT Type?identifier=system|value``: no match -> create (201), one match
  -> update (200; a new version unless nothing changed), several -> 412;
- ``POST Type`` with ``ifNoneExist``: no match -> create, one -> that
  resource unchanged (200), several -> 412; a plain ``POST`` creates;
- ``urn:uuid:`` references are rewritten to the ``Type/id`` of the entry with
  that fullUrl; one that matches no entry is a 400;
- all or nothing: every entry is checked and resolved before any is stored.
"""

from __future__ import annotations

import copy
import itertools
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

__all__ = ["FhirError", "FhirStore", "outcome", "split_token"]


class FhirError(Exception):
    """An HTTP error with an OperationOutcome."""

    def __init__(self, status: int, diagnostics: str, code: str = "processing") -> None:
        super().__init__(diagnostics)
        self.status = status
        self.body = outcome(diagnostics, code)


def outcome(diagnostics: str, code: str = "processing") -> dict[str, Any]:
    """An OperationOutcome with one error issue."""
    issue = {"severity": "error", "code": code, "diagnostics": diagnostics}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def split_token(token: str) -> tuple[str | None, str]:
    """``system|value`` of a token search parameter, with FHIR's ``\\`` escapes undone."""
    parts: list[str] = [""]
    chars = iter(token)
    for char in chars:
        if char == "\\":
            parts[-1] += next(chars, "")
        elif char == "|":
            parts.append("")
        else:
            parts[-1] += char
    if len(parts) == 1:
        return None, parts[0]
    return parts[0], "|".join(parts[1:])


@dataclass
class _Plan:
    """What one transaction entry will do once every entry has been checked."""

    resource_type: str
    logical_id: str
    resource: dict[str, Any] | None  # None: keep the existing resource as it is
    created: bool


@dataclass
class FhirStore:
    """Versioned resources by type and id; thread safe."""

    invalid: list[str] = field(default_factory=list)
    validated: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._ids = itertools.count(1)

    # --- reading (for the HTTP GETs and for assertions) ---------------------------

    def read(self, resource_type: str, logical_id: str) -> dict[str, Any] | None:
        """The current version, or None."""
        with self._lock:
            versions = self._versions.get((resource_type, logical_id))
            return copy.deepcopy(versions[-1]) if versions else None

    def history(self, resource_type: str, logical_id: str) -> list[dict[str, Any]]:
        """Every version, oldest first."""
        with self._lock:
            return copy.deepcopy(self._versions.get((resource_type, logical_id), []))

    def all(self, resource_type: str) -> list[dict[str, Any]]:
        """The current version of every resource of a type."""
        with self._lock:
            return [
                copy.deepcopy(versions[-1])
                for (kind, _), versions in self._versions.items()
                if kind == resource_type
            ]

    def search(self, resource_type: str, token: str) -> list[dict[str, Any]]:
        """Resources of a type with an identifier matching ``system|value`` (or ``value``)."""
        system, value = split_token(token)
        return [r for r in self.all(resource_type) if _has_identifier(r, system, value)]

    # --- the transaction ---------------------------------------------------------

    def transaction(self, bundle: Any) -> dict[str, Any]:
        """Process a transaction Bundle; the transaction-response Bundle, or FhirError."""
        entries = self._check_bundle(bundle)
        with self._lock:
            plans = [self._plan(index, entry) for index, entry in enumerate(entries)]
            targets = {
                entry["fullUrl"]: f"{plan.resource_type}/{plan.logical_id}"
                for entry, plan in zip(entries, plans, strict=True)
                if isinstance(entry.get("fullUrl"), str)
            }
            for plan in plans:
                if plan.resource is not None:
                    plan.resource = _resolve(plan.resource, targets)
            answers = [self._apply(plan) for plan in plans]
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}

    def _check_bundle(self, bundle: Any) -> list[dict[str, Any]]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise FhirError(400, "the body is not a Bundle", "structure")
        if bundle.get("type") != "transaction":
            raise FhirError(400, "only transaction Bundles are accepted here", "not-supported")
        self._validate("Bundle", bundle, "Bundle")
        entries = bundle.get("entry") or []
        for index, entry in enumerate(entries):
            resource = entry.get("resource")
            kind = resource.get("resourceType") if isinstance(resource, dict) else None
            if not isinstance(kind, str):
                raise FhirError(400, f"entry {index}: no resource", "required")
            self._validate(kind, resource, f"entry {index} ({kind})")
        return list(entries)

    def _validate(self, kind: str, resource: dict[str, Any], where: str) -> None:
        """fhir.resources R4B: the independent check of everything that comes in."""
        try:
            model = get_fhir_model_class(kind)
            model.model_validate(resource)
        except ValidationError as exc:
            faults = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in exc.errors(include_input=False, include_url=False)
            )
            self.invalid.append(f"{where}: {faults}")
            raise FhirError(400, f"{where}: {faults}", "invalid") from exc
        except ValueError as exc:  # not a model name
            self.invalid.append(f"{where}: unknown resource type")
            raise FhirError(400, f"{where}: unknown resource type", "not-supported") from exc
        self.validated += 1

    def _plan(self, index: int, entry: dict[str, Any]) -> _Plan:
        resource = copy.deepcopy(entry["resource"])
        kind = resource["resourceType"]
        request = entry.get("request") or {}
        method, url = request.get("method"), str(request.get("url", ""))
        path, _, query = url.partition("?")
        if path != kind:
            raise FhirError(400, f"entry {index}: request.url does not name {kind}")
        if method == "PUT" and query:
            return self._conditional(index, kind, query, resource, update=True)
        if method == "POST" and request.get("ifNoneExist"):
            return self._conditional(index, kind, request["ifNoneExist"], resource, update=False)
        if method == "POST":
            return _Plan(kind, str(next(self._ids)), resource, created=True)
        raise FhirError(400, f"entry {index}: {method} {path} is not supported", "not-supported")

    def _conditional(
        self, index: int, kind: str, query: str, resource: dict[str, Any], *, update: bool
    ) -> _Plan:
        params = parse_qs(query, keep_blank_values=True)
        if list(params) != ["identifier"] or len(params["identifier"]) != 1:
            raise FhirError(400, f"entry {index}: only ?identifier=system|value is supported")
        system, value = split_token(params["identifier"][0])
        matches = [
            key
            for key, versions in self._versions.items()
            if key[0] == kind and _has_identifier(versions[-1], system, value)
        ]
        if len(matches) > 1:
            raise FhirError(
                412, f"entry {index}: {len(matches)} {kind} match {query}", "multiple-matches"
            )
        if not matches:
            return _Plan(kind, str(next(self._ids)), resource, created=True)
        return _Plan(kind, matches[0][1], resource if update else None, created=False)

    def _apply(self, plan: _Plan) -> dict[str, Any]:
        versions = self._versions.setdefault((plan.resource_type, plan.logical_id), [])
        status = "201 Created" if plan.created else "200 OK"
        if plan.resource is not None and not _same(plan.resource, versions):
            stored = dict(plan.resource, id=plan.logical_id)
            stored["meta"] = {
                "versionId": str(len(versions) + 1),
                "lastUpdated": datetime.now(UTC).isoformat(timespec="milliseconds"),
            }
            versions.append(stored)
        version = versions[-1]["meta"]["versionId"]
        return {
            "response": {
                "status": status,
                "location": f"{plan.resource_type}/{plan.logical_id}/_history/{version}",
                "etag": f'W/"{version}"',
            }
        }


def _has_identifier(resource: dict[str, Any], system: str | None, value: str) -> bool:
    return any(
        identifier.get("value") == value and (system is None or identifier.get("system") == system)
        for identifier in resource.get("identifier") or []
    )


def _same(resource: dict[str, Any], versions: list[dict[str, Any]]) -> bool:
    """True when an update changes nothing (no new version, as HAPI does)."""
    if not versions:
        return False
    current = {k: v for k, v in versions[-1].items() if k not in ("id", "meta")}
    incoming = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    return current == incoming


def _resolve(node: Any, targets: dict[str, str]) -> Any:
    """``urn:uuid:`` references -> ``Type/id`` of the entry; unknown ones are an error."""
    if isinstance(node, list):
        return [_resolve(item, targets) for item in node]
    if not isinstance(node, dict):
        return node
    resolved = {key: _resolve(value, targets) for key, value in node.items()}
    reference = node.get("reference")
    if isinstance(reference, str) and reference.startswith("urn:"):
        if reference not in targets:
            raise FhirError(400, f"reference {reference} matches no entry of the Bundle")
        resolved["reference"] = targets[reference]
    return resolved


def parse_search(url: str) -> tuple[str, str | None]:
    """``Type`` and the identifier token of ``/fhir/Type?identifier=...`` (None if absent)."""
    parts = urlsplit(url)
    tokens = parse_qs(parts.query).get("identifier")
    return parts.path.rsplit("/", 1)[-1], tokens[0] if tokens else None
