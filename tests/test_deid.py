"""De-identification (PS3.15 E.1-1 Basic Profile) and re-identification, SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import DataElement, Dataset, FileMetaDataset, Sequence
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    UltrasoundImageStorage,
)
from sqlalchemy import Engine, create_engine

from engine.deid import DEIDENTIFICATION_METHOD, Deidentifier
from engine.deid_profile import BASIC_PROFILE, DeidConfig, effective_actions
from engine.deid_tables import deid_patients, deid_studies, deid_uids
from engine.errors import PermanentError, TransformError
from tests.support.databases import store_url

TODAY = date(2024, 6, 1)
AI = "ai-external"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    for url in store_url(request.param, tmp_path):
        if url.startswith("sqlite"):
            (tmp_path / "var").mkdir(exist_ok=True)
        engine = create_engine(url)
        for table in (deid_uids, deid_patients, deid_studies):
            table.create(engine)
        yield engine
        engine.dispose()


def deidentifier(engine: Engine, **options: Any) -> Deidentifier:
    return Deidentifier(engine, today=lambda: TODAY, **options)


# -- synthetic data ------------------------------------------------------------------


def person(name: str) -> Dataset:
    item = Dataset()
    item.PersonName = name
    item.ReferencedSOPInstanceUID = "1.2.840.99.9"
    return item


# The PHI-bearing attributes of a CT image (values looked for in the output by PHI_TEXT).
CT_ATTRIBUTES = {
    "SpecificCharacterSet": "ISO_IR 100",
    "SOPClassUID": CTImageStorage,
    "Modality": "CT",
    "PatientName": "Müller^Hans",
    "IssuerOfPatientID": "HOSP",
    "PatientBirthDate": "19700101",
    "PatientSex": "M",
    "PatientAge": "054Y",
    "PatientAddress": "1 Main Street",
    "OtherPatientIDs": "OTHER-ID-9",
    "AccessionNumber": "ACC777",
    "StudyID": "S42",
    "StudyTime": "101500",
    "StudyDescription": "CT Thorax Müller",
    "SeriesDescription": "Axial PID123",
    "ReferringPhysicianName": "Who^Doctor",
    "PerformingPhysicianName": "Perf^Doc",
    "OperatorsName": "Op^Erator",
    "InstitutionName": "St. Example",
    "InstitutionAddress": "2 Hospital Road",
    "StationName": "CT_ROOM_1",
    "DeviceSerialNumber": "SN-0001",
    "ImageComments": "patient Hans Müller moved",
    "BurnedInAnnotation": "NO",
}


def ct_image(
    *,
    study: str = "1.2.840.99.1",
    series: str = "1.2.840.99.1.1",
    sop: str = "1.2.840.99.1.1.1",
    study_date: str = "20240110",
    patient_id: str = "PID123",
    **extra: Any,
) -> Dataset:
    ds = Dataset()
    for keyword, value in {**CT_ATTRIBUTES, **extra}.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = f"{study}.0"
    ds.PatientID = patient_id
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.AcquisitionDateTime = f"{study_date}101600.123+0100"
    ds.add_new(0x00091010, "LO", "private PHI")
    ds.add_new(0x60003000, "OW", b"\x00\x01")
    add_sequences(ds)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "CT_ROOM_1"
    return ds


def add_sequences(ds: Dataset) -> None:
    request = Dataset()
    request.AccessionNumber = "ACC777"
    request.RequestedProcedureID = "RP1"
    ds.RequestAttributesSequence = [request]
    ds.OtherPatientIDsSequence = [Dataset()]
    ds.OtherPatientIDsSequence[0].PatientID = "OTHER-ID-9"
    ds.ProcedureCodeSequence = [person("Nested^Person")]  # a PN where none is expected
    original = Dataset()
    original.ModifiedAttributesSequence = [Dataset()]
    original.ModifiedAttributesSequence[0].PatientName = "Old^Name"
    ds.OriginalAttributesSequence = [original]


PHI_TEXT = ["Müller", "Hans", "PID123", "1 Main Street", "OTHER-ID-9", "ACC777", "S42",
            "Who", "Perf", "Op^Erator", "St. Example", "2 Hospital Road", "CT_ROOM_1",
            "SN-0001", "private PHI", "Nested", "Old^Name", "19700101", "RP1"]  # fmt: skip


def all_values(ds: Dataset) -> Iterator[tuple[DataElement, Any]]:
    for elem in ds:
        yield elem, elem.value
        if elem.VR == "SQ":
            for item in elem.value:
                yield from all_values(item)


def texts(ds: Dataset) -> list[str]:
    return [str(value) for elem, value in all_values(ds) if elem.VR != "SQ"]


def days_between(first: str, second: str) -> int:
    parse = datetime.strptime
    return (parse(second[:8], "%Y%m%d") - parse(first[:8], "%Y%m%d")).days


# -- the basic profile -----------------------------------------------------------------


def test_no_phi_remains_anywhere(engine: Engine) -> None:
    out = deidentifier(engine).deidentify(ct_image(), destination=AI)
    everything = " | ".join(texts(out)) + " | ".join(texts(out.file_meta))
    for phi in PHI_TEXT:
        assert phi not in everything, phi
    for elem, _ in all_values(out):
        assert not elem.tag.is_private
        assert elem.tag.group != 0x6000
        if elem.VR == "PN" and elem.keyword != "PatientName":
            assert not elem.value
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethod == DEIDENTIFICATION_METHOD
    codes = [c.CodeValue for c in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107"]
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.SOPClassUID == CTImageStorage


def value_for(vr: str, index: int) -> Any:
    """A valid value carrying PHI-like content for every VR the table uses."""
    values: dict[str, Any] = {
        "PN": "Doe^John", "LO": "PHI-LO", "SH": "PHI-SH", "CS": "PHI", "AE": "PHIAE",
        "LT": "PHI text", "ST": "PHI text", "UT": "PHI text", "UC": "PHI", "UR": "http://x",
        "DA": "20240110", "TM": "101010", "DT": "20240110101010", "AS": "045Y", "DS": "1.5",
        "IS": "7", "US": 1, "SS": 1, "UL": 1, "SL": 1, "FL": 1.0, "FD": 1.0, "AT": 0x00100010,
        "OB": b"\x01\x02", "OW": b"\x01\x02", "UN": b"\x01\x02",
        "UI": f"1.2.840.99.77.{index}",
    }  # fmt: skip
    return values[vr]


def every_table_attribute() -> Dataset:
    ds = Dataset()
    for index, keyword in enumerate(BASIC_PROFILE):
        vr = dictionary_VR(keyword)
        if vr == "SQ":
            inner = Dataset()
            inner.PersonName = "Nested^Name"
            inner.ReferencedSOPInstanceUID = f"1.2.840.99.88.{index}"
            ds.add(DataElement(keyword, vr, Sequence([inner])))
        elif " or " not in vr:
            ds.add(DataElement(keyword, vr, value_for(vr, index)))
    return ds


def test_every_attribute_of_the_table_gets_its_action(engine: Engine) -> None:
    source = every_table_attribute()
    out = deidentifier(engine).deidentify(source, destination=AI)
    actions = effective_actions(DeidConfig())
    checked = set()
    for tag, action in actions.items():
        if tag not in source or keyword_for_tag(tag) in ("PatientName", "PatientID"):
            continue
        checked.add(action)
        keyword, elem = keyword_for_tag(tag), source[tag]
        if action == "X":
            assert tag not in out, keyword
        elif action == "Z":
            assert not out[tag].value, keyword
        elif action == "D":
            assert out[tag].value in ("ANONYMIZED", "0", "000D", "000000"), keyword
        elif action == "U" and elem.VR == "UI":
            assert out[tag].value.startswith("2.25."), keyword
        elif action == "U":  # a reference sequence: kept, UIDs inside replaced
            inner = out[tag].value[0]
            assert inner.ReferencedSOPInstanceUID.startswith("2.25."), keyword
            assert not inner.get("PersonName"), keyword
        elif action == "C":
            assert out[tag].value != elem.value, keyword
    assert out.PatientID.startswith("ANON") and str(out.PatientName).startswith("ANON^")
    assert checked >= {"X", "Z", "U", "C"}


def test_the_original_is_never_touched(engine: Engine) -> None:
    ds = ct_image()
    before = ds.to_json_dict()
    deidentifier(engine).deidentify(ds, destination=AI)
    assert ds.to_json_dict() == before
    assert ds.file_meta.SourceApplicationEntityTitle == "CT_ROOM_1"


def test_uids_are_replaced_consistently_and_keep_the_study_structure(engine: Engine) -> None:
    deid = deidentifier(engine)
    first = deid.deidentify(ct_image(), destination=AI)
    referencing = ct_image(sop="1.2.840.99.1.1.2")
    reference = Dataset()
    reference.ReferencedSOPClassUID = CTImageStorage
    reference.ReferencedSOPInstanceUID = "1.2.840.99.1.1.1"
    referencing.ReferencedImageSequence = [reference]
    second = deid.deidentify(referencing, destination=AI)
    other_study = deid.deidentify(
        ct_image(study="1.2.840.99.2", series="1.2.840.99.2.1", sop="1.2.840.99.2.1.1"),
        destination=AI,
    )
    assert first.StudyInstanceUID == second.StudyInstanceUID != "1.2.840.99.1"
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert second.ReferencedImageSequence[0].ReferencedSOPClassUID == CTImageStorage
    assert other_study.StudyInstanceUID != first.StudyInstanceUID
    assert other_study.PatientID == first.PatientID  # same patient, same pseudonym
    assert other_study.PatientName == first.PatientName
    for uid in (first.StudyInstanceUID, first.SOPInstanceUID):
        assert uid.startswith("2.25.") and len(uid) <= 64


def test_dates_shift_by_one_offset_per_patient(engine: Engine) -> None:
    deid = deidentifier(engine)
    first = deid.deidentify(ct_image(study_date="20240110"), destination=AI)
    later = deid.deidentify(
        ct_image(study="1.2.840.99.2", sop="1.2.840.99.2.1.1", study_date="20240301"),
        destination=AI,
    )
    assert days_between(first.StudyDate, later.StudyDate) == days_between("20240110", "20240301")
    shift = days_between("20240110", first.StudyDate)
    assert -365 <= shift <= -30
    assert first.StudyTime == "101500"  # whole days: times unchanged
    assert first.AcquisitionDateTime.endswith("101600.123+0100")
    assert days_between("20240110", first.AcquisitionDateTime) == shift
    assert not first.get("PatientBirthDate")


def test_destinations_get_separate_pseudonyms(engine: Engine) -> None:
    deid = deidentifier(engine)
    one = deid.deidentify(ct_image(), destination=AI)
    two = deid.deidentify(ct_image(), destination="research")
    assert one.PatientID != two.PatientID
    assert one.StudyInstanceUID != two.StudyInstanceUID


def test_a_new_deidentifier_on_the_same_database_gives_the_same_mapping(engine: Engine) -> None:
    first = deidentifier(engine).deidentify(ct_image(), destination=AI)
    again = deidentifier(engine).deidentify(ct_image(), destination=AI)
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "SOPInstanceUID", "StudyDate"):
        assert first[keyword].value == again[keyword].value, keyword


def test_racing_threads_agree_on_new_mappings(engine: Engine) -> None:
    # Each thread has its own Deidentifier (no shared cache): only the database decides.
    workers = 6
    barrier = threading.Barrier(workers)
    results: list[Dataset] = []
    errors: list[BaseException] = []

    def run() -> None:
        deid = deidentifier(engine)
        barrier.wait()
        try:
            results.append(deid.deidentify(ct_image(), destination=AI))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({(r.PatientID, r.StudyInstanceUID, r.SOPInstanceUID) for r in results}) == 1


# -- options -------------------------------------------------------------------------


def test_options_retain_and_clean(engine: Engine) -> None:
    deid = deidentifier(
        engine,
        retain_device_identity=True,
        retain_patient_characteristics=True,
        clean_descriptors=True,
    )
    out = deid.deidentify(ct_image(), destination=AI)
    assert (out.StationName, out.DeviceSerialNumber) == ("CT_ROOM_1", "SN-0001")
    assert (out.PatientSex, out.PatientAge) == ("M", "054Y")
    assert out.StudyDescription == "CT Thorax"  # the patient's name erased, the rest kept
    assert out.SeriesDescription == "Axial"
    assert out.ImageComments == "patient moved"
    codes = {c.CodeValue for c in out.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113107", "113105", "113108", "113109"}


# -- burned-in annotation ----------------------------------------------------------------


def test_burned_in_annotation_is_refused(engine: Engine) -> None:
    deid = deidentifier(engine)
    with pytest.raises(PermanentError, match="burned-in annotation"):
        deid.deidentify(ct_image(BurnedInAnnotation="YES"), destination=AI)
    unmarked_us = ct_image(Modality="US", SOPClassUID=UltrasoundImageStorage)
    del unmarked_us.BurnedInAnnotation
    with pytest.raises(PermanentError, match="burned-in"):
        deid.deidentify(unmarked_us, destination=AI)
    marked_us = ct_image(Modality="US", SOPClassUID=UltrasoundImageStorage)
    assert deid.deidentify(marked_us, destination=AI).Modality == "US"


# -- re-identification ---------------------------------------------------------------------


def ai_result(image: Dataset) -> Dataset:
    """An SR the AI made about the de-identified ``image``, as AIs do."""
    sr = Dataset()
    sr.SOPClassUID = BasicTextSRStorage
    sr.SOPInstanceUID = "2.25.1111"  # the AI's own UIDs
    sr.SeriesInstanceUID = "2.25.2222"
    sr.StudyInstanceUID = image.StudyInstanceUID
    sr.PatientID = image.PatientID
    sr.PatientName = image.PatientName
    sr.PatientBirthDate = ""
    sr.AccessionNumber = ""
    sr.StudyDate = image.StudyDate
    sr.ContentDate = TODAY.strftime("%Y%m%d")  # written by the AI: real today
    sr.Modality = "SR"
    sr.PatientIdentityRemoved = "YES"
    sr.DeidentificationMethod = image.DeidentificationMethod
    sop = Dataset()
    sop.ReferencedSOPClassUID = image.SOPClassUID
    sop.ReferencedSOPInstanceUID = image.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = image.SeriesInstanceUID
    series.ReferencedSOPSequence = [sop]
    study = Dataset()
    study.StudyInstanceUID = image.StudyInstanceUID
    study.ReferencedSeriesSequence = [series]
    sr.CurrentRequestedProcedureEvidenceSequence = [study]
    sr.file_meta = FileMetaDataset()
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return sr


def test_reidentification_round_trip(engine: Engine) -> None:
    deid = deidentifier(engine)
    image = deid.deidentify(ct_image(), destination=AI)
    result = ai_result(image)
    back = deid.reidentify(result, destination=AI)
    assert back.StudyInstanceUID == "1.2.840.99.1"
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == "1.2.840.99.1"
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == "1.2.840.99.1.1"
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.840.99.1.1.1"
    assert series.ReferencedSOPSequence[0].ReferencedSOPClassUID == CTImageStorage
    assert (back.SOPInstanceUID, back.SeriesInstanceUID) == ("2.25.1111", "2.25.2222")
    assert back.file_meta.MediaStorageSOPInstanceUID == "2.25.1111"
    assert (back.PatientID, back.IssuerOfPatientID) == ("PID123", "HOSP")
    assert back.PatientName == "Müller^Hans"
    assert back.PatientBirthDate == "19700101"
    assert back.AccessionNumber == "ACC777"
    assert back.StudyDate == "20240110"
    assert back.ContentDate == "20240601"  # the AI's own date is not moved into the future
    assert back.PatientIdentityRemoved == "NO"
    assert "DeidentificationMethod" not in back
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert result.StudyInstanceUID == image.StudyInstanceUID  # the input is left alone


def test_reidentification_finds_the_patient_through_the_study(engine: Engine) -> None:
    deid = deidentifier(engine)
    result = ai_result(deid.deidentify(ct_image(), destination=AI))
    result.PatientID = ""
    assert deid.reidentify(result, destination=AI).PatientID == "PID123"


def test_unknown_results_are_refused_without_values(engine: Engine) -> None:
    deid = deidentifier(engine)
    image = deid.deidentify(ct_image(), destination=AI)
    with pytest.raises(TransformError, match="no patient or study") as caught:
        deid.reidentify(ai_result(image), destination="another-destination")
    assert image.PatientID not in str(caught.value)


def test_shifted_dates_are_restored_across_studies(engine: Engine) -> None:
    deid = deidentifier(engine)
    deid.deidentify(ct_image(), destination=AI)
    later = deid.deidentify(
        ct_image(study="1.2.840.99.2", sop="1.2.840.99.2.1.1", study_date="20240301"),
        destination=AI,
    )
    result = ai_result(later)
    result.StudyDate = ""
    result.SeriesDate = later.SeriesDate
    back = deid.reidentify(result, destination=AI)
    assert back.SeriesDate == "20240301"
    assert back.StudyDate == "20240301"  # from the study's originals
    assert back.StudyInstanceUID == "1.2.840.99.2"
    assert TODAY - timedelta(days=1) < datetime.strptime(back.ContentDate, "%Y%m%d").date()


def test_from_config_applies_every_option(engine: Engine) -> None:
    config = DeidConfig(
        uid_root="1.2.826.0.1.3680043.8.498.",
        refuse_unmarked_modalities=[],
        pseudonym_prefix="RSRCH",
        min_date_shift_days=10,
        max_date_shift_days=10,
    )
    deid = Deidentifier.from_config(engine, config, today=lambda: TODAY)
    unmarked_us = ct_image(Modality="US", SOPClassUID=UltrasoundImageStorage)
    del unmarked_us.BurnedInAnnotation
    out = deid.deidentify(unmarked_us, destination=AI)
    assert out.PatientID.startswith("RSRCH")
    assert out.StudyInstanceUID.startswith("1.2.826.0.1.3680043.8.498.")
    assert days_between("20240110", out.StudyDate) == -10
