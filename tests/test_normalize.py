"""Tag morphing: site fills, worklist linking, rules, the audit trail, errors without PHI."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from pydicom import Dataset, FileMetaDataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from sqlalchemy import Engine, create_engine

from engine.errors import ConfigError, TransformError
from engine.normalize import Normalizer, study_metadata
from engine.normalize_config import NormalizeConfig
from engine.study_batch import METADATA_KEYWORDS
from engine.templating import TemplateEnvironment
from engine.worklist import WorklistStore, worklist_items
from engine.worklist_item import WorklistItem

REPO = Path(__file__).resolve().parents[1]
FIXED_NOW = datetime(2024, 3, 15, 10, 30, 0, tzinfo=timezone(timedelta(hours=1)))


# -- fixtures and helpers -------------------------------------------------------------


@pytest.fixture
def templates(tmp_path: Path) -> TemplateEnvironment:
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "body_part.csv").write_text("key,value\nTHORAX,CHEST\nSCHAEDEL,HEAD\n")
    (tables / "study_description.csv").write_text("key,value\nCT THORAX,CT Chest\n")
    return TemplateEnvironment(tmp_path)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'worklist.db'}")
    worklist_items.create(engine)
    yield engine
    engine.dispose()


class CountingStore(WorklistStore):
    """A real store that counts its look-ups (to check the per-study cache)."""

    queries = 0

    def find_item(self, **criteria: Any) -> Dataset | None:
        self.queries += 1
        return super().find_item(**criteria)


@pytest.fixture
def worklist(engine: Engine) -> CountingStore:
    store = CountingStore(engine)
    orders = [
        WorklistItem(
            action="create",
            key="o1",
            attributes={
                "PatientID": "P1",
                "PatientName": "Müller^Hans",
                "PatientBirthDate": "19700101",
                "PatientSex": "M",
                "AccessionNumber": "ACC1",
                "StudyInstanceUID": "1.2.3.1",
                "RequestedProcedureID": "RP1",
                "RequestedProcedureDescription": "CT Chest",
                "ReferringPhysicianName": "Who^Doctor",
                "ScheduledProcedureStepSequence": [
                    {"Modality": "CT", "ScheduledProcedureStepID": "SPS1"}
                ],
            },
        ),
        WorklistItem(
            action="create",
            key="o2",
            attributes={
                "PatientID": "P2",
                "PatientName": "Doe^Jane",
                "AccessionNumber": "ACC2",
                "StudyInstanceUID": "1.2.3.2",
            },
        ),
    ]
    with engine.begin() as conn:
        for order in orders:
            store.apply(conn, order)
    return store


def config(**fields: Any) -> NormalizeConfig:
    return NormalizeConfig.model_validate(fields)


def normalizer(
    templates: TemplateEnvironment, worklist: WorklistStore | None = None, **fields: Any
) -> Normalizer:
    return Normalizer(config(**fields), templates, worklist, clock=lambda: FIXED_NOW)


def image(**attributes: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.3.1.1.1"
    ds.StudyInstanceUID = "1.2.3.1"
    ds.Modality = "CT"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def originals(ds: Dataset, reason: str = "COERCE") -> Dataset:
    """The old values recorded for ``reason`` (the last item with that reason)."""
    items = [
        i
        for i in ds.OriginalAttributesSequence
        if i.get("ReasonForTheAttributeModification") == reason
    ]
    return items[-1].ModifiedAttributesSequence[0]  # type: ignore[no-any-return]


def roundtrip(ds: Dataset) -> Dataset:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return dcmread(BytesIO(buffer.getvalue()))


# -- site fills -----------------------------------------------------------------------


def test_site_values_fill_only_missing_attributes(templates: TemplateEnvironment) -> None:
    norm = normalizer(templates, institution_name="St. Example", issuer_of_patient_id="HOSP")
    missing = image(IssuerOfPatientID="")
    changes = norm.normalize(missing)
    assert missing.InstitutionName == "St. Example"
    assert missing.IssuerOfPatientID == "HOSP"
    assert [c.keyword for c in changes] == ["InstitutionName", "IssuerOfPatientID"]
    recorded = originals(missing)
    # Inserted: recorded empty; emptied before: recorded with its (empty) value.
    assert recorded.InstitutionName is None or recorded.InstitutionName == ""
    assert "IssuerOfPatientID" in recorded

    present = image(InstitutionName="Other Hospital", IssuerOfPatientID="X")
    assert norm.normalize(present) == []
    assert present.InstitutionName == "Other Hospital"
    assert "OriginalAttributesSequence" not in present


def test_original_attributes_item_describes_the_modification(
    templates: TemplateEnvironment,
) -> None:
    norm = normalizer(templates, institution_name="St. Example", source_of_previous_values="CT1")
    ds = image()
    norm.normalize(ds)
    (item,) = ds.OriginalAttributesSequence
    assert item.ModifyingSystem == "MERIDIAN"
    assert item.ReasonForTheAttributeModification == "COERCE"
    assert item.SourceOfPreviousValues == "CT1"
    assert item.AttributeModificationDateTime == "20240315103000.000000+0100"
    assert roundtrip(ds).OriginalAttributesSequence[0].ModifyingSystem == "MERIDIAN"


# -- rules ----------------------------------------------------------------------------


def test_map_rule_with_when_uses_the_mapping_table(templates: TemplateEnvironment) -> None:
    norm = normalizer(
        templates,
        rules=[
            {
                "name": "body part",
                "when": 'ds.Modality == "CT"',
                "map": {"BodyPartExamined": "body_part"},
            }
        ],
    )
    ct = image(BodyPartExamined="THORAX")
    norm.normalize(ct)
    assert ct.BodyPartExamined == "CHEST"
    assert originals(ct).BodyPartExamined == "THORAX"

    mr = image(Modality="MR", BodyPartExamined="THORAX")
    assert norm.normalize(mr) == []
    assert mr.BodyPartExamined == "THORAX"

    unknown = image(BodyPartExamined="KNEE")
    assert norm.normalize(unknown) == []  # not in the table: unchanged
    assert unknown.BodyPartExamined == "KNEE"


def test_strict_map_fails_naming_rule_and_keyword_not_the_value(
    templates: TemplateEnvironment,
) -> None:
    norm = normalizer(
        templates,
        rules=[
            {"name": "body part", "strict": True, "map": {"BodyPartExamined": "body_part"}},
        ],
    )
    with pytest.raises(TransformError) as caught:
        norm.normalize(image(BodyPartExamined="SECRETVALUE"))
    message = str(caught.value)
    assert "'body part'" in message and "BodyPartExamined" in message
    assert "SECRETVALUE" not in message


def test_set_rule_renders_a_template_with_lookup_default(templates: TemplateEnvironment) -> None:
    norm = normalizer(
        templates,
        rules=[
            {
                "name": "study description",
                "set": {
                    "StudyDescription": '{{ lookup("study_description", ds.StudyDescription, '
                    "default=ds.StudyDescription) }}"
                },
            }
        ],
    )
    known = image(StudyDescription="CT THORAX")
    norm.normalize(known)
    assert known.StudyDescription == "CT Chest"
    assert originals(known).StudyDescription == "CT THORAX"
    other = image(StudyDescription="Something else")
    assert norm.normalize(other) == []


def test_remove_rule_keeps_the_removed_value(templates: TemplateEnvironment) -> None:
    norm = normalizer(
        templates,
        rules=[
            {"name": "no comments", "remove": ["ImageComments"], "reason": "CORRECT"},
        ],
    )
    ds = image(ImageComments="patient moved")
    norm.normalize(ds)
    assert "ImageComments" not in ds
    assert originals(ds, "CORRECT").ImageComments == "patient moved"


def test_rules_see_sequences_and_the_order(
    templates: TemplateEnvironment, worklist: CountingStore
) -> None:
    norm = normalizer(
        templates,
        worklist,
        link_worklist=True,
        copy_from_order=[],
        rules=[
            {
                "name": "protocol",
                "when": "ds.ProcedureCodeSequence "
                "and ds.ProcedureCodeSequence[0].CodeValue == 'CT01'",
                "set": {"ProtocolName": "{{ order.RequestedProcedureDescription }} protocol"},
            }
        ],
    )
    code = Dataset()
    code.CodeValue = "CT01"
    ds = image(AccessionNumber="ACC1", ProcedureCodeSequence=[code])
    norm.normalize(ds)
    assert ds.ProtocolName == "CT Chest protocol"


def test_invalid_rule_output_is_a_transform_error_without_the_value(
    templates: TemplateEnvironment,
) -> None:
    norm = normalizer(
        templates,
        rules=[
            {"name": "bad", "set": {"BodyPartExamined": "{{ ds.PatientName }}"}},
        ],
    )
    with pytest.raises(TransformError) as caught:
        norm.normalize(image(PatientName="Doe^John"))
    message = str(caught.value)
    assert "'bad'" in message and "BodyPartExamined" in message
    assert "Doe" not in message and "John" not in message


def test_a_failing_template_names_the_rule_without_values(templates: TemplateEnvironment) -> None:
    norm = normalizer(
        templates,
        rules=[
            {
                "name": "lookup",
                "set": {"StudyDescription": '{{ lookup("body_part", ds.PatientID) }}'},
            },
        ],
    )
    with pytest.raises(TransformError) as caught:
        norm.normalize(image(PatientID="PID-SECRET"))
    assert "'lookup'" in str(caught.value)
    assert "PID-SECRET" not in str(caught.value)


def test_each_change_is_recorded_once_with_the_original_value(
    templates: TemplateEnvironment,
) -> None:
    norm = normalizer(
        templates,
        rules=[
            {"name": "one", "set": {"StudyDescription": "first"}},
            {"name": "two", "set": {"StudyDescription": "second"}, "reason": "CORRECT"},
        ],
    )
    ds = image(StudyDescription="original", OriginalAttributesSequence=[Dataset()])
    changes = norm.normalize(ds)
    assert [c.source for c in changes] == ["rule:one", "rule:two"]
    assert ds.StudyDescription == "second"
    # The item already present is kept; the new one holds the value before any change.
    assert len(ds.OriginalAttributesSequence) == 2
    assert originals(ds).StudyDescription == "original"
    assert "PHI" not in repr(changes[0]) and "original" not in repr(changes[0])


# -- worklist -------------------------------------------------------------------------


def test_linking_by_accession_copies_missing_demographics_only(
    templates: TemplateEnvironment, worklist: CountingStore
) -> None:
    norm = normalizer(templates, worklist, link_worklist=True)
    ds = image(AccessionNumber="ACC1", PatientID="P1", PatientName="", StudyInstanceUID="9.9")
    ds.PatientSex = "F"  # present: never overwritten by the order
    changes = norm.normalize(ds)
    assert ds.PatientName == "Müller^Hans"
    assert ds.PatientBirthDate == "19700101"
    assert ds.PatientSex == "F"
    assert ds.ReferringPhysicianName == "Who^Doctor"
    assert ds.RequestedProcedureDescription == "CT Chest"
    request = ds.RequestAttributesSequence[0]
    assert (request.AccessionNumber, request.RequestedProcedureID) == ("ACC1", "RP1")
    assert request.ScheduledProcedureStepID == "SPS1"
    assert request.StudyInstanceUID == "1.2.3.1"
    assert {c.source for c in changes} == {"worklist", "charset"}
    assert "PatientName" in originals(ds)


def test_linking_falls_back_to_the_study_uid(
    templates: TemplateEnvironment, worklist: CountingStore
) -> None:
    norm = normalizer(templates, worklist, link_worklist=True)
    ds = image(StudyInstanceUID="1.2.3.2")  # no accession number in the image
    norm.normalize(ds)
    assert (ds.PatientID, ds.AccessionNumber) == ("P2", "ACC2")

    unknown_accession = image(AccessionNumber="NOPE", StudyInstanceUID="1.2.3.2")
    norm.normalize(unknown_accession)
    assert unknown_accession.PatientID == "P2"
    assert unknown_accession.AccessionNumber == "NOPE"  # present: kept


def test_unlinked_image_is_left_alone(
    templates: TemplateEnvironment, worklist: CountingStore
) -> None:
    norm = normalizer(templates, worklist, link_worklist=True)
    ds = image(AccessionNumber="NOPE", StudyInstanceUID="7.7.7")
    assert norm.normalize(ds) == []


def test_one_worklist_query_per_study(
    templates: TemplateEnvironment, worklist: CountingStore
) -> None:
    norm = normalizer(templates, worklist, link_worklist=True)
    for number in range(50):
        norm.normalize(image(AccessionNumber="ACC1", SOPInstanceUID=f"1.2.3.1.1.{number}"))
    assert worklist.queries == 1


def test_unicode_from_the_order_switches_an_ascii_image_to_utf8(
    templates: TemplateEnvironment, worklist: CountingStore
) -> None:
    norm = normalizer(templates, worklist, link_worklist=True)
    ds = image(AccessionNumber="ACC1", StudyDescription="Thorax")
    norm.normalize(ds)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    read = roundtrip(ds)
    assert read.PatientName == "Müller^Hans"
    assert read.StudyDescription == "Thorax"

    latin1 = image(AccessionNumber="ACC1", SpecificCharacterSet="ISO_IR 100")
    norm.normalize(latin1)
    assert latin1.SpecificCharacterSet == "ISO_IR 100"  # ü fits Latin-1: unchanged


def test_link_worklist_needs_a_store(templates: TemplateEnvironment) -> None:
    with pytest.raises(ConfigError):
        normalizer(templates, None, link_worklist=True)


# -- configuration --------------------------------------------------------------------


def test_check_names_the_rule(templates: TemplateEnvironment) -> None:
    cases = [
        ([{"name": "r1", "map": {"BodyPartExamined": "no_such_table"}}], "'r1'"),
        ([{"name": "r2", "set": {"StudyDescription": "{{ ds.StudyDescriptoin }}"}}], "'r2'"),
        (
            [
                {
                    "name": "r3",
                    "when": "ds.Modality == 'CT'",
                    "set": {"StudyDescription": "{{ nope() }}"},
                }
            ],
            "'r3'",
        ),
        ([{"name": "r4", "set": {"StudyDescription": '{{ lookup("missing", "x") }}'}}], "'r4'"),
    ]
    for rules, name in cases:
        with pytest.raises(ConfigError, match=name):
            normalizer(templates, rules=rules).check()


def test_syntax_errors_fail_at_construction_naming_the_rule(
    templates: TemplateEnvironment,
) -> None:
    with pytest.raises(ConfigError, match="'bad when'"):
        normalizer(
            templates, rules=[{"name": "bad when", "when": "ds.(", "remove": ["ImageComments"]}]
        )
    with pytest.raises(ConfigError, match="'bad set'"):
        normalizer(templates, rules=[{"name": "bad set", "set": {"StudyDescription": "{{ x"}}])


def test_check_passes_a_good_config_even_when_data_would_fail(
    templates: TemplateEnvironment,
) -> None:
    norm = normalizer(
        templates,
        rules=[
            {
                "name": "ok",
                "map": {"BodyPartExamined": "body_part"},
                "set": {
                    "StudyDescription": '{{ lookup("study_description", ds.StudyDescription) }}'
                },
            },
        ],
    )
    norm.check()


@pytest.mark.parametrize(
    "fields",
    [
        {"rules": [{"name": "x", "set": {"NotAKeyword": "1"}}]},
        {"rules": [{"name": "x", "set": {"Rows": "1"}}]},  # US: not text
        {"rules": [{"name": "x", "set": {"OriginalAttributesSequence": ""}}]},
        {"rules": [{"name": "x"}]},  # does nothing
        {"rules": [{"name": "x", "remove": ["A"]}, {"name": "x", "remove": ["B"]}]},
        {"copy_from_order": ["PatientNmae"]},
        {"institution_name": "x" * 65},
        {"unknown": True},
    ],
)
def test_invalid_configs_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        config(**fields)


def test_the_documented_example_works_with_the_shipped_tables(
    engine: Engine, worklist: CountingStore
) -> None:
    text = """
normalize:
  institution_name: "St. Example Hospital"
  issuer_of_patient_id: "HOSP"
  link_worklist: true
  copy_from_order: [PatientName, PatientID, PatientBirthDate, PatientSex, AccessionNumber,
                    RequestedProcedureDescription, ReferringPhysicianName]
  rules:
    - name: body part from the protocol
      when: 'ds.Modality == "CT"'
      map: {BodyPartExamined: body_part}
    - name: study description
      set:
        StudyDescription: >-
          {{ lookup("study_description", ds.StudyDescription, default=ds.StudyDescription) }}
"""
    parsed = NormalizeConfig.model_validate(yaml.safe_load(text)["normalize"])
    norm = Normalizer(parsed, TemplateEnvironment(REPO / "transforms"), worklist)
    norm.check()
    ds = image(AccessionNumber="ACC1", BodyPartExamined="THORAX", StudyDescription="CT THORAX KM")
    norm.normalize(ds)
    assert ds.BodyPartExamined == "CHEST"
    assert ds.StudyDescription == "CT Chest with contrast"
    assert ds.InstitutionName == "St. Example Hospital"


def test_study_metadata_for_routing(templates: TemplateEnvironment) -> None:
    code = Dataset()
    code.CodeValue = "CT01"
    ds = image(
        BodyPartExamined="CHEST",
        AccessionNumber="A1",
        ProcedureCodeSequence=[code],
        StudyDate="20240315",
    )
    metadata = study_metadata(ds)
    assert metadata["Modality"] == "CT"
    assert metadata["ProcedureCode"] == "CT01"
    assert metadata["StudyDate"] == "20240315"
    assert metadata["StationName"] == ""
    # The batch contract's routing attributes, plus the procedure code.
    assert set(metadata) == {*METADATA_KEYWORDS, "ProcedureCode"}


def test_the_normalizer_offers_study_metadata(templates: TemplateEnvironment) -> None:
    ds = image(BodyPartExamined="THORAX")
    assert normalizer(templates).study_metadata(ds) == study_metadata(ds)


def test_an_ended_order_still_links_its_late_images(
    templates: TemplateEnvironment, worklist: CountingStore, engine: Engine
) -> None:
    with engine.begin() as conn:
        worklist.apply(conn, WorklistItem(action="cancel", key="o2"))
    assert worklist.find_item(accession_number="ACC2") is not None
    assert worklist.find_item(accession_number="ACC2", study_instance_uid="1.2.3.1") is None
    assert worklist.find_item() is None
    ds = image(StudyInstanceUID="1.2.3.2")
    normalizer(templates, worklist, link_worklist=True).normalize(ds)
    assert ds.PatientID == "P2"


def test_a_code_extension_charset_that_fits_is_kept(
    templates: TemplateEnvironment, worklist: CountingStore
) -> None:
    ds = image(AccessionNumber="ACC1", SpecificCharacterSet=["", "ISO 2022 IR 100"])
    normalizer(templates, worklist, link_worklist=True).normalize(ds)
    assert list(ds.SpecificCharacterSet) == ["", "ISO 2022 IR 100"]
