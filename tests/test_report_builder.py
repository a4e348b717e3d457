"""Preliminary reports drafted from AI results and their order; the report data type."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydicom import Dataset

from connectors.base import Origin
from connectors.report_builder import build_report
from engine.ai_result import AIFinding, AIResult
from engine.datatypes.report import ReportDataType
from engine.errors import ParseError
from engine.report import StudyReport

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def order() -> Dataset:
    ds = Dataset()
    ds.PatientID = "P123"
    ds.IssuerOfPatientID = "HOSP"
    ds.PatientName = "DOE^JANE"
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "F"
    ds.AccessionNumber = "ACC9"
    ds.PlacerOrderNumberImagingServiceRequest = "PL9"
    ds.RequestedProcedureDescription = "CT Head"
    code = Dataset()
    code.CodeValue = "CTHEAD"
    code.CodingSchemeDesignator = "LOCAL"
    ds.RequestedProcedureCodeSequence = [code]
    step = Dataset()
    step.Modality = "CT"
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def result() -> AIResult:
    return AIResult(
        study_instance_uid="1.2.3",
        accession_number="ACC9",
        model="meridian-hyperdense",
        model_version="1.0.0",
        findings=[
            AIFinding(
                code="hyperdense-region", label="Hyperdense region", score=0.91, critical=True
            )
        ],
        produced_at=NOW,
        source="json",
    )


def test_preliminary_report_takes_patient_and_procedure_from_the_order() -> None:
    report = build_report(result(), order(), now=NOW)
    assert report.status == "P"
    assert (report.patient.id, report.patient.issuer, report.patient.name) == (
        "P123", "HOSP", "DOE^JANE",
    )  # fmt: skip
    assert report.placer_order_number == "PL9"
    assert (report.procedure.code, report.procedure.modality) == ("CTHEAD", "CT")
    assert report.text.startswith("PRELIMINARY") and "CRITICAL" in report.text
    assert report.observations[0].critical and report.observations[0].value == 0.91
    assert report.ai_models == ["meridian-hyperdense 1.0.0"]


def test_report_data_type_reads_a_report_and_keys_it_by_accession_and_status() -> None:
    raw = build_report(result(), order(), now=NOW).model_dump_json().encode()
    message = ReportDataType("results-to-ehr").read(raw, Origin("channel", "a", "b"))
    assert message.record.accession == "ACC9"
    assert message.record.control_id == f"ACC9|P|{NOW.isoformat()}"
    assert StudyReport.model_validate(message.context["report"]).status == "P"


def test_report_data_type_refuses_other_content_without_quoting_it() -> None:
    with pytest.raises(ParseError) as caught:
        ReportDataType("r").read(b'{"patient": {"id": "SECRET-ID"}}', Origin("c", "a", "b"))
    assert "SECRET-ID" not in str(caught.value)
