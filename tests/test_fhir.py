"""Reports back to the EHR over FHIR: report_to_fhir.j2 and the fhir destination.

The destination talks to a real FHIR server on localhost (tests/support/fhir_server.py)
that validates every resource it receives with fhir.resources (R4B), independently of
the fhirclient models the hub validates with.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhirclient.models.diagnosticreport import DiagnosticReport
from pydantic import ValidationError

from connectors.base import Delivery
from connectors.fhir import FhirConfig, FhirDestination
from engine.errors import ConfigError, PermanentError, RecoverableError
from engine.report import StudyReport
from engine.templating import TemplateEnvironment
from engine.transform import TransformConfig, Transformer
from tests.support.fhir_server import AuthMode, FhirServer
from tests.support.smart_token import make_client

ROOT = Path(__file__).resolve().parent.parent
STUDY_UID = "1.2.826.0.1.3680043.8.498.1234"
ACCESSION = "ACC-2024-0042"
PATIENT_ID = "MRN-778899"
RAD = "http://terminology.hl7.org/CodeSystem/v2-0074"
FINDINGS = "http://meridian.example/fhir/CodeSystem/findings"
CRITICAL = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def run(coro: Coroutine[Any, Any, Delivery]) -> Delivery:
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


@pytest.fixture(scope="module")
def transformer() -> Transformer:
    env = TemplateEnvironment(ROOT / "transforms")
    transformer = Transformer(TransformConfig(template="report_to_fhir.j2", output="json"), env)
    transformer.check()
    return transformer


def study_report(status: str = "P", **changes: Any) -> StudyReport:
    """A CT head report: AI findings (preliminary) and a measured hematoma volume."""
    fields: dict[str, Any] = {
        "study_instance_uid": STUDY_UID,
        "accession_number": ACCESSION,
        "placer_order_number": "PLC-55",
        "filler_order_number": "FIL-77",
        "patient": {"id": PATIENT_ID, "issuer": "HOSP", "name": "DOE^JANE"},
        "procedure": {"code": "30799-1", "description": "CT Head WO contrast", "modality": "CT"},
        "status": status,
        "text": 'Acute "hyperdense" region, left.\nSuggest follow-up.',
        "observations": [
            {"code": "hematoma-volume", "label": "Hematoma volume", "value": 12.5, "unit": "mL"}
        ],
        "findings": [
            {"code": "hyperdense-region", "label": "Hyperdense region", "score": 0.93,
             "critical": True, "measurements": {"area_mm2": 120.0}},
        ],
        "ai_models": ["hyperdense-ct 2024.1"],
        "observed_at": datetime(2024, 5, 1, 9, 0, tzinfo=UTC),
        "reported_at": datetime(2024, 5, 1, 9, 30, tzinfo=UTC),
    }  # fmt: skip
    fields.update(changes)
    return StudyReport.model_validate(fields)


def render(transformer: Transformer, report: StudyReport, **variables: Any) -> str:
    (payload,) = transformer.run({"report": report.model_dump(mode="json"), **variables})
    return payload


def resources_of(payload: str) -> dict[str, list[dict[str, Any]]]:
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in json.loads(payload)["resources"]:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    return by_type


def destination(
    server: FhirServer, auth: dict[str, Any] | None = None, **kw: Any
) -> FhirDestination:
    config = FhirConfig.model_validate(
        {"type": "fhir", "base_url": server.url, "auth": auth or {"type": "none"},
         "timeout_seconds": kw.pop("timeout_seconds", 10)}
    )  # fmt: skip
    return FhirDestination(config, **kw)


@pytest.fixture
def server() -> Iterator[FhirServer]:
    with FhirServer() as running:
        yield running


# --- the template ---------------------------------------------------------------------


def test_template_renders_r4_resources(transformer: Transformer) -> None:
    by_type = resources_of(render(transformer, study_report()))
    assert sorted(by_type) == ["DiagnosticReport", "ImagingStudy", "Observation"]
    for resources in by_type.values():
        for resource in resources:  # both validators agree
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    (report,) = by_type["DiagnosticReport"]
    DiagnosticReport(report, strict=True)
    assert report["status"] == "preliminary"
    assert report["identifier"][0]["system"] == "urn:meridian:accession"
    assert report["identifier"][0]["value"] == ACCESSION
    assert report["category"][0]["coding"][0]["system"] == RAD
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    assert report["code"]["coding"][0]["system"] == "http://loinc.org"
    assert report["subject"] == {
        "type": "Patient", "identifier": {"system": "urn:meridian:issuer:HOSP", "value": PATIENT_ID}
    }  # fmt: skip
    assert report["basedOn"][0]["identifier"]["value"] == "PLC-55"
    assert report["issued"] == "2024-05-01T09:30:00Z"
    assert report["conclusion"] == 'Acute "hyperdense" region, left.\nSuggest follow-up.'
    assert len(report["result"]) == 2
    (study,) = by_type["ImagingStudy"]
    assert study["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}
    volume, finding = by_type["Observation"]
    assert volume["valueQuantity"] == {
        "value": 12.5, "unit": "mL", "system": "http://unitsofmeasure.org", "code": "mL"
    }  # fmt: skip
    assert finding["interpretation"][0]["coding"][0]["system"] == CRITICAL
    assert finding["interpretation"][0]["coding"][0]["code"] == "AA"
    assert finding["code"]["coding"][0]["system"] == FINDINGS


def test_template_variables_and_local_codes(transformer: Transformer) -> None:
    report = study_report(
        "F",
        author="SMITH^ANNA",
        procedure={"code": "CTHEAD", "description": "CT head", "modality": "CT"},
        observations=[{"code": "impression", "label": "Impression", "value": "bleed"}],
        findings=[],
        placer_order_number=None,
    )
    payload = render(
        transformer,
        report,
        accession_system="urn:oid:1.2.3.4.5",
        issuer_systems={"HOSP": "urn:oid:1.2.3.4.6"},
    )
    by_type = resources_of(payload)
    (diagnostic,) = by_type["DiagnosticReport"]
    assert diagnostic["status"] == "final"
    assert diagnostic["identifier"][0]["system"] == "urn:oid:1.2.3.4.5"
    assert diagnostic["subject"]["identifier"]["system"] == "urn:oid:1.2.3.4.6"
    assert diagnostic["code"]["coding"][0]["system"] == "urn:meridian:procedure"
    assert diagnostic["resultsInterpreter"] == [{"display": "SMITH^ANNA"}]
    assert diagnostic["basedOn"][0]["identifier"]["value"] == "FIL-77"  # filler when no placer
    assert by_type["Observation"][0]["valueString"] == "bleed"
    no_code = study_report(procedure={"code": "", "description": "", "modality": ""})
    (diagnostic,) = resources_of(render(transformer, no_code))["DiagnosticReport"]
    assert diagnostic["code"]["coding"][0]["code"] == "18748-4"


# --- delivery -----------------------------------------------------------------------


def test_preliminary_then_final_updates_one_report(
    transformer: Transformer, server: FhirServer
) -> None:
    fhir = destination(server)
    first = run(fhir.send(render(transformer, study_report("P"))))
    (created,) = server.store.all("DiagnosticReport")
    assert first.response == f"DiagnosticReport {created['id']} version 1 (4 resources)"
    final = study_report(
        "F",
        author="SMITH^ANNA",
        observations=[
            {"code": "hematoma-volume", "label": "Hematoma volume", "value": 14.0, "unit": "mL"}
        ],
    )
    second = run(fhir.send(render(transformer, final)))
    assert second.response == f"DiagnosticReport {created['id']} version 2 (4 resources)"
    store = server.store
    (report,) = store.all("DiagnosticReport")
    assert report["status"] == "final"
    assert report["resultsInterpreter"] == [{"display": "SMITH^ANNA"}]
    assert report["basedOn"][0]["type"] == "ServiceRequest"
    assert report["basedOn"][0]["identifier"]["value"] == "PLC-55"
    (study,) = store.all("ImagingStudy")
    assert report["imagingStudy"][0]["reference"] == f"ImagingStudy/{study['id']}"
    observations = {f"Observation/{o['id']}": o for o in store.all("Observation")}
    assert len(observations) == 2
    assert sorted(ref["reference"] for ref in report["result"]) == sorted(observations)
    volume = next(o for o in observations.values() if "valueQuantity" in o)
    assert (volume["status"], volume["valueQuantity"]["value"]) == ("final", 14.0)
    assert volume["meta"]["versionId"] == "2"
    assert volume["derivedFrom"][0]["reference"] == f"ImagingStudy/{study['id']}"
    assert store.invalid == []


def test_resend_is_idempotent(transformer: Transformer, server: FhirServer) -> None:
    fhir = destination(server)
    payload = render(transformer, study_report("F"))
    first = run(fhir.send(payload))
    again = run(fhir.send(payload))
    assert again.response == first.response  # nothing changed: no new version
    assert again.detail == "HTTP 200; 0 created, 4 updated or unchanged"
    counts = {kind: len(server.store.all(kind)) for kind in ("DiagnosticReport", "Observation")}
    assert counts == {"DiagnosticReport": 1, "Observation": 2}
    # Every resource of both sends passed fhir.resources validation (4 + the Bundle, twice).
    assert (server.store.validated, server.store.invalid) == (10, [])


def test_identifiers_with_search_delimiters(transformer: Transformer, server: FhirServer) -> None:
    # | , $ and \ are escaped in the conditional URL: the resend still finds the report.
    payload = render(transformer, study_report(accession_number="A|1,2$3\\4"))
    run(destination(server).send(payload))
    run(destination(server).send(payload))
    (report,) = server.store.all("DiagnosticReport")
    assert report["identifier"][0]["value"] == "A|1,2$3\\4"
    assert len(server.store.all("Observation")) == 2


def test_existing_imaging_study_is_referenced_not_overwritten(
    transformer: Transformer, server: FhirServer
) -> None:
    pacs_study = {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}],
        "status": "available",
        "numberOfSeries": 3,
        "subject": {"display": "from the imaging manager"},
    }
    entry = {"resource": pacs_study, "request": {"method": "POST", "url": "ImagingStudy"}}
    server.store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [entry]})
    run(destination(server).send(render(transformer, study_report())))
    (study,) = server.store.all("ImagingStudy")
    assert (study["numberOfSeries"], study["meta"]["versionId"]) == (3, "1")
    (report,) = server.store.all("DiagnosticReport")
    assert report["imagingStudy"][0]["reference"] == f"ImagingStudy/{study['id']}"


# --- authentication ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "auth", "header"),
    [
        ("basic", {"type": "basic", "username": "meridian", "password": "s3cret"}, "Basic "),
        ("bearer", {"type": "bearer", "token": "static-token"}, "Bearer static-token"),
    ],
)
def test_basic_and_bearer(
    transformer: Transformer, mode: AuthMode, auth: dict[str, str], header: str
) -> None:
    payload = render(transformer, study_report())
    with FhirServer(auth=mode) as server:
        run(destination(server, auth).send(payload))
        assert (server.requests[-1].authorization or "").startswith(header)
        wrong = dict(auth, password="nope") if mode == "basic" else dict(auth, token="nope")
        with pytest.raises(PermanentError, match="HTTP 401: authentication required"):
            run(destination(server, wrong).send(payload))


class FakeClock:
    """Monotonic seconds the test moves forward (token expiry without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["RS384", "ES384"])
def smart(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[FhirServer, dict[str, Any]]]:
    client, key_path = make_client(tmp_path, request.param)
    with FhirServer(auth="smart", smart_clients={client.client_id: client}) as server:
        auth = {
            "type": "smart_backend",
            "token_url": server.token_url,
            "client_id": client.client_id,
            "private_key_path": str(key_path),
            "key_id": client.key_id,
            "algorithm": request.param,
            "scope": "system/DiagnosticReport.write system/Observation.write",
        }
        yield server, auth


def test_smart_token_is_cached_and_refreshed_after_expiry(
    transformer: Transformer, smart: tuple[FhirServer, dict[str, Any]]
) -> None:
    server, auth = smart
    clock = FakeClock()
    fhir = destination(server, auth, clock=clock)
    payload = render(transformer, study_report())
    run(fhir.send(payload))
    run(fhir.send(payload))
    assert len(server.token_requests) == 1  # cached across sends
    assert server.token_requests[0].scope == auth["scope"]
    assert server.requests[0].authorization == server.requests[1].authorization
    clock.now += 300  # the token's lifetime: renewed before use, no 401 needed
    run(fhir.send(payload))
    assert [t.granted for t in server.token_requests] == [True, True]
    assert server.requests[2].authorization != server.requests[1].authorization
    assert [r.status for r in server.requests] == [200, 200, 200]


def test_smart_401_retries_once_with_a_new_token(
    transformer: Transformer, smart: tuple[FhirServer, dict[str, Any]]
) -> None:
    server, auth = smart
    fhir = destination(server, auth)
    payload = render(transformer, study_report())
    run(fhir.send(payload))
    server.revoke_tokens()  # the EHR restarted: the cached token is refused
    delivery = run(fhir.send(payload))
    assert delivery.response is not None and delivery.response.startswith("DiagnosticReport")
    assert [r.status for r in server.requests] == [200, 401, 200]
    assert len(server.token_requests) == 2
    server.auth = "bearer"  # now no token of ours will do: one retry, then give up
    with pytest.raises(PermanentError, match="HTTP 401"):
        run(fhir.send(payload))
    assert [r.status for r in server.requests[3:]] == [401, 401]
    assert len(server.token_requests) == 3


def test_smart_refused_client_and_unreachable_token_endpoint(
    transformer: Transformer, smart: tuple[FhirServer, dict[str, Any]], tmp_path: Path
) -> None:
    server, auth = smart
    _, other_key = make_client(tmp_path, auth["algorithm"], client_id="impostor")
    payload = render(transformer, study_report())
    with pytest.raises(PermanentError, match="HTTP 401: invalid_client: bad signature"):
        run(destination(server, dict(auth, private_key_path=str(other_key))).send(payload))
    assert server.requests == []  # nothing reached the FHIR endpoint
    server.stop()
    with pytest.raises(RecoverableError, match=r"failed: ConnectError at .*/auth/token"):
        run(destination(server, auth).send(payload))


def test_smart_without_expires_in_is_not_cached(
    transformer: Transformer, smart: tuple[FhirServer, dict[str, Any]]
) -> None:
    server, auth = smart
    server.token_lifetime = None
    fhir = destination(server, auth)
    payload = render(transformer, study_report())
    run(fhir.send(payload))
    run(fhir.send(payload))
    assert len(server.token_requests) == 2


def test_smart_config_errors(tmp_path: Path) -> None:
    _, ec_key = make_client(tmp_path, "ES384")
    smart = {
        "type": "smart_backend", "token_url": "https://ehr.example/token", "client_id": "hub",
        "private_key_path": str(ec_key), "key_id": "k1", "algorithm": "RS384",
    }  # fmt: skip
    config = FhirConfig.model_validate(
        {"type": "fhir", "base_url": "https://ehr.example/fhir", "auth": smart}
    )
    with pytest.raises(ConfigError, match="RS384 needs an RSA key"):
        FhirDestination(config)
    with pytest.raises(ValidationError, match="is not a file"):
        FhirConfig.model_validate(
            {"type": "fhir", "base_url": "https://ehr.example/fhir",
             "auth": dict(smart, private_key_path=str(tmp_path / "missing.pem"))}
        )  # fmt: skip
    with pytest.raises(ValidationError, match="http:// or https://"):
        FhirConfig.model_validate({"type": "fhir", "base_url": "ftp://ehr.example/fhir"})
    assert "s3cret" not in repr(
        FhirConfig.model_validate(
            {"type": "fhir", "base_url": "https://ehr.example/fhir",
             "auth": {"type": "basic", "username": "u", "password": "s3cret"}}
        )
    )  # fmt: skip


# --- failures -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_are_recoverable(
    transformer: Transformer, server: FhirServer, status: int
) -> None:
    server.fail_with = status
    with pytest.raises(RecoverableError, match=f"HTTP {status}: simulated failure"):
        run(destination(server).send(render(transformer, study_report())))


def test_down_or_slow_server_is_recoverable(transformer: Transformer, server: FhirServer) -> None:
    payload = render(transformer, study_report())
    server.delay_seconds = 0.5
    with pytest.raises(RecoverableError, match="timed out"):
        run(destination(server, timeout_seconds=0.1).send(payload))
    server.stop()
    with pytest.raises(RecoverableError, match=r"failed: ConnectError$"):
        run(destination(server).send(payload))
    server.start()  # back up: the same payload goes through
    server.delay_seconds = 0
    assert run(destination(server).send(payload)).response is not None


def test_rejected_by_the_server_is_permanent_with_its_diagnostics(
    transformer: Transformer, server: FhirServer
) -> None:
    # fhirclient accepts an empty string; FHIR (and fhir.resources) does not.
    document = json.loads(render(transformer, study_report()))
    document["resources"][-1]["conclusion"] = ""
    with pytest.raises(PermanentError) as caught:
        run(destination(server).send(json.dumps(document)))
    message = str(caught.value)
    assert message.startswith(f"FHIR transaction to {server.url}: HTTP 400: Bundle: ")
    assert "conclusion" in message
    assert len(message.split("HTTP 400: ", 1)[1]) <= 200
    assert server.store.invalid and server.store.all("DiagnosticReport") == []


def test_several_matches_is_permanent(transformer: Transformer, server: FhirServer) -> None:
    by_type = resources_of(render(transformer, study_report()))
    twice = [
        {"resource": by_type["DiagnosticReport"][0], "request": {"method": "POST", "url": url}}
        for url in ("DiagnosticReport", "DiagnosticReport")
    ]
    server.store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": twice})
    with pytest.raises(PermanentError, match="HTTP 412: entry 3: 2 DiagnosticReport match"):
        run(destination(server).send(render(transformer, study_report())))


def _broken(transformer: Transformer, change: str) -> str:
    document = json.loads(render(transformer, study_report()))
    report = document["resources"][-1]
    if change == "status":
        report["status"] = "done"
    elif change == "missing":
        del report["code"]
    elif change == "type":
        report["subject"]["identifier"]["value"] = 778899
    elif change == "unknown":
        report["impression"] = PATIENT_ID
    elif change == "date":
        report["issued"] = "2024-05-01 09:30"
    elif change == "identifier":
        del report["identifier"]
    elif change == "resource type":
        report["resourceType"] = "Report"
    return json.dumps(document)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("status", "resource 3 (DiagnosticReport): status: not a code of the required value set"),
        ("missing", "resource 3 (DiagnosticReport): code: required element missing"),
        ("type", "subject.identifier.value: wrong type (int, expecting str)"),
        ("unknown", "resource 3 (DiagnosticReport): impression: not an element of this type"),
        ("date", "resource 3 (DiagnosticReport): issued: not in the format of its type"),
        ("identifier", "no identifier with a system and a value"),
        ("resource type", "resource 3 (Report): not an R4 domain resource type"),
    ],
)
def test_invalid_output_is_permanent_before_sending(
    transformer: Transformer, server: FhirServer, change: str, reason: str
) -> None:
    with pytest.raises(PermanentError) as caught:
        run(destination(server).send(_broken(transformer, change)))
    message = str(caught.value)
    assert reason in message
    for phi in (PATIENT_ID, "778899", ACCESSION, "2024-05-01"):
        assert phi not in message
    assert server.requests == []


@pytest.mark.parametrize("payload", ["not json", "[]", '{"resources": []}', '{"resources": [1]}'])
def test_payload_that_is_not_a_resource_list(server: FhirServer, payload: str) -> None:
    with pytest.raises(PermanentError):
        run(destination(server).send(payload))
    assert server.requests == []
