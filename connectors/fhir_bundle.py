"""From a template's ``{"resources": [...]}`` to an idempotent FHIR R4 transaction, and back.

**Validation.** Every resource is read with fhirclient's R4 model of its
``resourceType`` (strict: unknown, missing and mistyped elements, malformed
dates), then the ``status`` codes are checked against their required value
sets (fhirclient leaves codes unchecked). A fault is a PermanentError naming
the resource's position, type and the element path, never a value.

**Idempotence.** A resource's *business key* is its first identifier with a
system and a value. Each resource becomes a conditional entry on that key, so
sending the same report twice (or the final after the preliminary) updates
instead of duplicating:

- ``PUT Type?identifier=system|value`` (conditional update: create if no
  match, update if one, 412 if several), for what the hub owns;
- ``POST`` with ``ifNoneExist: identifier=system|value`` (conditional
  create) for the types in ``create_only`` (the ImagingStudy by default: it
  belongs to the imaging manager and must not be overwritten with our copy).

One transaction Bundle makes the report atomic: the EHR never shows a
DiagnosticReport whose Observations are missing.

**References inside one payload.** The template refers to another resource
of the same payload with a *logical* reference: ``{"type": "Observation",
"identifier": <its business key>}``. Here each entry gets a ``urn:uuid:``
fullUrl (a UUIDv5 of its key, so the same report gives the same Bundle) and
such references gain ``"reference": "urn:uuid:..."``, which the server
rewrites to the real ``Type/id`` (R4 transaction rules). We did not use
conditional references (``Observation?identifier=...``): servers resolve them
before processing the entries, so on a first send the Observation created by
the same transaction is not found, and support for them varies. Logical
references to resources outside the payload (Patient, ServiceRequest) stay
logical.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fhirclient.models.domainresource import DomainResource
from fhirclient.models.fhirabstractbase import FHIRValidationError

from engine.errors import PermanentError

__all__ = [
    "Entry",
    "TransactionResult",
    "build_transaction",
    "parse_resources",
    "read_transaction_response",
    "validate_resource",
]

#: Required bindings of ``status`` (R4 value sets) for the types a report uses.
_DIAGNOSTIC_REPORT_STATUS = (
    "registered partial preliminary final amended corrected appended cancelled "
    "entered-in-error unknown"
)
_OBSERVATION_STATUS = (
    "registered preliminary final amended corrected cancelled entered-in-error unknown"
)
_IMAGING_STUDY_STATUS = "registered available cancelled entered-in-error unknown"
_REQUEST_STATUS = "draft active on-hold revoked completed entered-in-error unknown"
STATUS_CODES: dict[str, frozenset[str]] = {
    "DiagnosticReport": frozenset(_DIAGNOSTIC_REPORT_STATUS.split()),
    "Observation": frozenset(_OBSERVATION_STATUS.split()),
    "ImagingStudy": frozenset(_IMAGING_STUDY_STATUS.split()),
    "ServiceRequest": frozenset(_REQUEST_STATUS.split()),
}
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_QUOTED = re.compile(r'"([^"]{1,64})"')
_CLASS = re.compile(r"<class '(?:[\w.]*\.)?(\w+)'>")
_LOCATION = re.compile(r"(?:^|/)([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/([^/]+))?/?$")
_ETAG = re.compile(r'^(?:W/)?"([^"]+)"$')


@dataclass(frozen=True, slots=True)
class Entry:
    """One resource of the transaction with its business key."""

    resource_type: str
    system: str
    value: str
    resource: dict[str, Any]

    @property
    def token(self) -> str:
        """The ``identifier`` search parameter (FHIR-escaped, URL-encoded)."""
        escaped = f"{_escape(self.system)}|{_escape(self.value)}"
        return "identifier=" + quote(escaped, safe=":/")

    @property
    def full_url(self) -> str:
        """A ``urn:uuid:`` stable for the key: the same report gives the same Bundle."""
        name = f"{self.resource_type}|{self.system}|{self.value}"
        return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}"


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """What the server answered for one entry (``location`` may be absolute)."""

    resource_type: str
    status: str
    location: str | None
    etag: str | None


def parse_resources(payload: str) -> list[dict[str, Any]]:
    """The ``resources`` list of a payload (PermanentError if it is not one)."""
    try:
        document = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise PermanentError(f"payload is not JSON (line {exc.lineno})") from exc
    resources = document.get("resources") if isinstance(document, dict) else None
    if not isinstance(resources, list) or not resources:
        raise PermanentError('payload must be {"resources": [...]} with at least one resource')
    for index, resource in enumerate(resources):
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise PermanentError(f"resource {index}: not an object with a resourceType")
    return resources


def validate_resource(index: int, resource: dict[str, Any]) -> None:
    """fhirclient R4 model (strict) + required ``status`` codes; PermanentError if invalid."""
    kind = resource["resourceType"]
    where = f"resource {index} ({kind})"
    model = _model(kind)
    if model is None:
        raise PermanentError(f"{where}: not an R4 domain resource type")
    try:
        model(copy.deepcopy(resource), strict=True)  # fhirclient may keep the dict's parts
    except FHIRValidationError as exc:
        raise PermanentError(f"{where}: {'; '.join(_faults(exc))}") from None
    codes = STATUS_CODES.get(kind)
    if codes is not None and resource.get("status") not in codes:
        raise PermanentError(f"{where}: status: not a code of the required value set")


def build_transaction(
    resources: list[dict[str, Any]], *, create_only: frozenset[str]
) -> tuple[dict[str, Any], list[Entry]]:
    """The transaction Bundle and its entries (in Bundle order)."""
    entries = [_entry(index, resource) for index, resource in enumerate(resources)]
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if entry.full_url in seen:
            raise PermanentError(
                f"resource {index} ({entry.resource_type}): its identifier is used twice"
            )
        seen.add(entry.full_url)
    targets = {(e.resource_type, e.system, e.value): e.full_url for e in entries}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [_bundle_entry(entry, targets, create_only) for entry in entries],
    }
    return bundle, entries


def read_transaction_response(body: Any, entries: list[Entry]) -> list[TransactionResult]:
    """The per-entry answers of a transaction-response Bundle ([] if unreadable)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        return []
    answers = body.get("entry")
    if not isinstance(answers, list) or len(answers) != len(entries):
        return []
    results = []
    for entry, answer in zip(entries, answers, strict=True):
        response = answer.get("response") if isinstance(answer, dict) else None
        response = response if isinstance(response, dict) else {}
        results.append(
            TransactionResult(
                resource_type=entry.resource_type,
                status=str(response.get("status", "")),
                location=_str(response.get("location")),
                etag=_str(response.get("etag")),
            )
        )
    return results


def id_and_version(result: TransactionResult) -> tuple[str, str]:
    """The logical id and version of an entry's answer ("?" where the server gave none)."""
    match = _LOCATION.search(result.location or "")
    logical_id = match.group(2) if match else "?"
    version = match.group(3) if match and match.group(3) else None
    if version is None:
        etag = _ETAG.match(result.etag or "")
        version = etag.group(1) if etag else "?"
    return logical_id, version


def _entry(index: int, resource: dict[str, Any]) -> Entry:
    identifiers = resource.get("identifier") or []
    if isinstance(identifiers, dict):  # a few types have a single identifier
        identifiers = [identifiers]
    for identifier in identifiers:
        system, value = identifier.get("system"), identifier.get("value")
        if isinstance(system, str) and system and isinstance(value, str) and value:
            return Entry(resource["resourceType"], system, value, resource)
    raise PermanentError(
        f"resource {index} ({resource['resourceType']}): no identifier with a system and a "
        "value, so a resend could not update it"
    )


def _bundle_entry(
    entry: Entry, targets: dict[tuple[str, str, str], str], create_only: frozenset[str]
) -> dict[str, Any]:
    resource = _link(copy.deepcopy(entry.resource), targets)
    if entry.resource_type in create_only:
        request = {"method": "POST", "url": entry.resource_type, "ifNoneExist": entry.token}
    else:
        request = {"method": "PUT", "url": f"{entry.resource_type}?{entry.token}"}
    return {"fullUrl": entry.full_url, "resource": resource, "request": request}


def _link(node: Any, targets: dict[tuple[str, str, str], str]) -> Any:
    """Give logical references to resources of the same Bundle their ``urn:uuid:``."""
    if isinstance(node, list):
        return [_link(item, targets) for item in node]
    if not isinstance(node, dict):
        return node
    linked = {key: _link(value, targets) for key, value in node.items()}
    identifier = node.get("identifier")
    if (
        isinstance(node.get("type"), str)
        and isinstance(identifier, dict)
        and "reference" not in node
    ):
        key = (node["type"], identifier.get("system"), identifier.get("value"))
        if key in targets:
            linked["reference"] = targets[key]
    return linked


def _model(kind: str) -> Callable[..., Any] | None:
    """fhirclient's class for ``kind`` if it is a resource (``fhirclient.models.<kind>``)."""
    if not _RESOURCE_TYPE.fullmatch(kind):
        return None
    try:
        module = importlib.import_module(f"fhirclient.models.{kind.lower()}")
    except ImportError:
        return None
    model: Any = getattr(module, kind, None)
    if (
        isinstance(model, type)
        and issubclass(model, DomainResource)
        and getattr(model, "resource_type", None) == kind
    ):
        return model
    return None


def _faults(error: FHIRValidationError, path: tuple[str, ...] = ()) -> list[str]:
    """One PHI-free line per fault: ``subject.identifier.value: wrong type (int, expecting str)``.

    fhirclient nests an error per element on the path; the leaves are the faults.
    """
    here = (*path, error.path) if error.path else path
    faults: list[str] = []
    for sub in error.errors:
        if isinstance(sub, FHIRValidationError):
            faults.extend(_faults(sub, here))
        else:
            faults.append(_fault(".".join(here), sub))
    return faults


def _fault(where: str, error: Exception) -> str:
    """Our own wording: only element and type names are taken from fhirclient's message."""
    message = str(error)
    names = _QUOTED.findall(message)
    if isinstance(error, KeyError):  # a missing element is reported on its parent
        return f"{_join(where, names[0] if names else '?')}: required element missing"
    if isinstance(error, AttributeError):
        return f"{_join(where, names[0] if names else '?')}: not an element of this type"
    where = where or "resource"
    if isinstance(error, TypeError):
        if "list property" in message:
            return f"{where}: expecting a list"
        if "only takes dict" in message:
            return f"{where}: expecting an object"
        classes = _CLASS.findall(message)
        if len(classes) >= 2:
            return f"{where}: wrong type ({classes[0]}, expecting {classes[-1]})"
        return f"{where}: wrong type"
    if isinstance(error, ValueError):
        return f"{where}: not in the format of its type"
    return f"{where}: invalid ({type(error).__name__})"


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _escape(text: str) -> str:
    """FHIR search escaping of ``\\ | , $`` in a token's parts."""
    for char in ("\\", "|", ",", "$"):
        text = text.replace(char, "\\" + char)
    return text


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
