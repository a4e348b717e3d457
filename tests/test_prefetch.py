"""Prior prefetch against a real Orthanc (C-FIND + C-MOVE) moving to a dcmtk storescp."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from connectors.base import Delivery
from connectors.prefetch import (
    Order,
    PrefetchConfig,
    PrefetchDestination,
    Prior,
    select_priors,
    words,
)
from engine.errors import PermanentError, RecoverableError
from tests.support.dicom_files import Patient, make_ct_instance, write_dataset
from tests.support.orthanc import OrthancProcess, orthanc_available, running_orthanc
from tests.support.storescp import StoreSCP, free_port

PATIENT = "PRE0001"
OTHER_PATIENT = "PRE0002"
WORKSTATION = "WORKSTATION"


def days_ago(days: int) -> str:
    return f"{date.today() - timedelta(days=days):%Y%m%d}"


@dataclass(frozen=True)
class Study:
    """A study uploaded into Orthanc: its UIDs and what it is."""

    uid: str
    sop_uids: tuple[str, ...]


@dataclass(frozen=True)
class Archive:
    """Orthanc loaded with the test patients' studies, and the workstation it moves to."""

    orthanc: OrthancProcess
    workstation: StoreSCP
    studies: dict[str, Study]


def upload_study(
    orthanc: OrthancProcess, directory: Path, *, patient: str, modality: str, when: str,
    description: str, body_part: str, instances: int = 2,
) -> Study:  # fmt: skip
    uid, series = generate_uid(), generate_uid()
    sop_uids = []
    for number in range(1, instances + 1):
        ds = make_ct_instance(
            uid, series, number=number, patient=Patient(patient_id=patient),
            study_description=description, body_part=body_part,
        )  # fmt: skip
        ds.Modality = modality
        ds.StudyDate = when
        orthanc.upload(write_dataset(ds, directory / f"{ds.SOPInstanceUID}.dcm"))
        sop_uids.append(str(ds.SOPInstanceUID))
    return Study(uid, tuple(sop_uids))


# name, modality, age in days, StudyDescription, BodyPartExamined
PATIENT_STUDIES = [
    ("ct_chest_recent", "CT", 30, "CT CHEST W CONTRAST", "CHEST"),
    ("mr_brain", "MR", 200, "MRI BRAIN", "HEAD"),
    ("ct_abdomen", "CT", 400, "CT ABDOMEN PELVIS", "ABDOMEN"),
    ("ct_chest_old", "CT", 800, "CT THORAX", "CHEST"),
    ("ct_ancient", "CT", 4000, "CT CHEST", "CHEST"),  # beyond the default lookback
    ("current", "CT", 0, "CT CHEST W/O CONTRAST", "CHEST"),  # the order's own study
]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    if not orthanc_available():
        pytest.skip("Orthanc is not installed")
    root = tmp_path_factory.mktemp("prefetch")
    workstation = StoreSCP(root / "workstation", aet=WORKSTATION)
    modalities = {"ws": (WORKSTATION, "127.0.0.1", workstation.port)}
    with running_orthanc(root / "orthanc", modalities=modalities) as orthanc, workstation:
        files = root / "files"
        studies = {
            name: upload_study(
                orthanc, files, patient=PATIENT, modality=modality, when=days_ago(age),
                description=description, body_part=body_part,
            )
            for name, modality, age, description, body_part in PATIENT_STUDIES
        }  # fmt: skip
        studies["other_patient"] = upload_study(
            orthanc, files, patient=OTHER_PATIENT, modality="CT", when=days_ago(5),
            description="CT CHEST", body_part="CHEST",
        )  # fmt: skip
        yield Archive(orthanc, workstation, studies)


@pytest.fixture
def pacs(archive: Archive) -> Archive:
    archive.workstation.clear()
    return archive


def order(
    *, action: str = "create", modality: str = "CT", description: str = "CT CHEST W/O CONTRAST",
    study_uid: str | None = None, patient: str = PATIENT,
) -> str:  # fmt: skip
    attributes: dict[str, Any] = {
        "PatientID": patient,
        "PatientName": "Prior^Patty",
        "AccessionNumber": "ACC-PRE-1",
        "RequestedProcedureDescription": description,
        "ScheduledProcedureStepSequence": [{"Modality": modality}],
    }
    if study_uid:
        attributes["StudyInstanceUID"] = study_uid
    return json.dumps({"action": action, "key": "RIS|1", "attributes": attributes})


def destination(port: int, **overrides: Any) -> PrefetchDestination:
    config = PrefetchConfig.model_validate(
        {
            "type": "prefetch",
            "host": "127.0.0.1",
            "port": port,
            "ae_title": "ORTHANC",
            "move_destination": WORKSTATION,
            "timeout_seconds": 5,
            **overrides,
        }
    )
    return PrefetchDestination(config)


def run(pacs: Archive, payload: str, **overrides: Any) -> Delivery:
    dest = destination(pacs.orthanc.dicom_port, **overrides)
    return asyncio.run(asyncio.wait_for(dest.send(payload), timeout=60))


def received(pacs: Archive, *names: str) -> bool:
    expected = {uid for name in names for uid in pacs.studies[name].sop_uids}
    return pacs.workstation.received_sop_uids() == expected


# -- against Orthanc ----------------------------------------------------------------------


def test_newest_priors_of_the_same_modality_excluding_the_current_study(pacs: Archive) -> None:
    current = pacs.studies["current"].uid
    delivery = run(pacs, order(study_uid=current), max_studies=2)
    assert delivery.response == "moved 2 of 2 priors"
    assert received(pacs, "ct_chest_recent", "ct_abdomen")
    detail = delivery.detail or ""
    recent, abdomen = pacs.studies["ct_chest_recent"].uid, pacs.studies["ct_abdomen"].uid
    assert detail.index(recent) < detail.index(abdomen)  # newest first
    assert "Prior" not in detail and PATIENT not in detail  # UIDs only, no PHI


def test_configured_modalities_override_the_orders(pacs: Archive) -> None:
    delivery = run(pacs, order(study_uid=pacs.studies["current"].uid), modalities=["mr"])
    assert delivery.response == "moved 1 of 1 priors"
    assert received(pacs, "mr_brain")


def test_body_part_match_keeps_priors_sharing_a_word(pacs: Archive) -> None:
    payload = order(study_uid=pacs.studies["current"].uid, description="CT CHEST W/O CONTRAST")
    delivery = run(pacs, payload, body_part_match=True, max_studies=5)
    # CHEST: the recent CT by its description, the old "CT THORAX" by its series'
    # BodyPartExamined (Orthanc leaves it empty at study level); not the abdomen, not the MR.
    assert delivery.response == "moved 2 of 2 priors"
    assert received(pacs, "ct_chest_recent", "ct_chest_old")


def test_body_part_match_stops_asking_once_enough_are_chosen(pacs: Archive) -> None:
    payload = order(study_uid=pacs.studies["current"].uid, description="CT CHEST")
    delivery = run(pacs, payload, body_part_match=True, max_studies=1)
    assert delivery.response == "moved 1 of 1 priors"
    assert received(pacs, "ct_chest_recent")


def test_default_lookback_and_max_studies(pacs: Archive) -> None:
    delivery = run(pacs, order(study_uid=pacs.studies["current"].uid), max_studies=10)
    assert delivery.response == "moved 3 of 3 priors"
    assert received(pacs, "ct_chest_recent", "ct_abdomen", "ct_chest_old")


def test_issuer_of_patient_id_narrows_the_query_when_asked(
    pacs: Archive, tmp_path: Path
) -> None:
    studies = {}
    for issuer in ("HOSP_A", "HOSP_B"):
        ds = make_ct_instance(generate_uid(), generate_uid(), patient=Patient(patient_id="SHARED1"))
        ds.IssuerOfPatientID = issuer
        pacs.orthanc.upload(write_dataset(ds, tmp_path / f"{issuer}.dcm"))
        studies[issuer] = str(ds.SOPInstanceUID)
    payload = json.loads(order(patient="SHARED1"))
    payload["attributes"]["IssuerOfPatientID"] = "HOSP_A"
    delivery = run(pacs, json.dumps(payload), match_issuer=True)
    assert delivery.response == "moved 1 of 1 priors"
    assert pacs.workstation.received_sop_uids() == {studies["HOSP_A"]}


def test_issuer_is_ignored_by_default(pacs: Archive, tmp_path: Path) -> None:
    # Most PACS do not keep IssuerOfPatientID on images: matching it would find nothing.
    ds = make_ct_instance(generate_uid(), generate_uid(), patient=Patient(patient_id="NOISSUER"))
    pacs.orthanc.upload(write_dataset(ds, tmp_path / "no-issuer.dcm"))
    payload = json.loads(order(patient="NOISSUER"))
    payload["attributes"]["IssuerOfPatientID"] = "HOSP_A"
    assert run(pacs, json.dumps(payload)).response == "moved 1 of 1 priors"


def test_lookback_limits_the_query(pacs: Archive) -> None:
    delivery = run(pacs, order(study_uid=pacs.studies["current"].uid), lookback_days=100)
    assert delivery.response == "moved 1 of 1 priors"
    assert received(pacs, "ct_chest_recent")


def test_only_the_ordered_patients_studies(pacs: Archive) -> None:
    delivery = run(pacs, order(patient=OTHER_PATIENT))
    assert delivery.response == "moved 1 of 1 priors"
    assert received(pacs, "other_patient")


def test_no_priors_moves_nothing(pacs: Archive) -> None:
    delivery = run(pacs, order(patient="NOBODY"))
    assert delivery.response == "moved 0 of 0 priors"
    assert pacs.workstation.received() == []


@pytest.mark.parametrize("action", ["update", "cancel", "discontinue", "status"])
def test_only_create_prefetches(pacs: Archive, action: str) -> None:
    assert run(pacs, order(action=action)).response == "nothing to prefetch"
    assert pacs.workstation.received() == []


def test_unknown_move_destination_is_permanent(pacs: Archive) -> None:
    with pytest.raises(PermanentError, match=r"refused for 1 studies: study [\d.]+: status 0x"):
        run(
            pacs,
            order(study_uid=pacs.studies["current"].uid),
            max_studies=1,
            move_destination="NOWHERE",
        )


def test_pacs_down_is_recoverable() -> None:
    dest = destination(free_port())
    with pytest.raises(RecoverableError, match="unreachable"):
        asyncio.run(dest.send(order()))


def test_not_a_worklist_item_is_permanent(pacs: Archive) -> None:
    with pytest.raises(PermanentError, match="not a worklist item"):
        run(pacs, '{"action": "create"}')


# -- selection rules ----------------------------------------------------------------------


def prior(uid: str, when: str, modalities: str, description: str = "", body: str = "") -> Prior:
    return Prior(uid, when, "", frozenset(modalities.split()), description, body)


def config(**overrides: Any) -> PrefetchConfig:
    base = {"type": "prefetch", "host": "pacs", "port": 104, "ae_title": "PACS"}
    return PrefetchConfig.model_validate({**base, "move_destination": "WS", **overrides})


def test_words_ignore_noise_and_short_tokens() -> None:
    assert words("CT CHEST W/O CONTRAST") == {"CHEST"}
    assert words("MRI L-SPINE without contrast, 3 views") == {"SPINE"}


def test_select_priors_rules() -> None:
    the_order = Order("P", None, "1.9", frozenset({"CT"}), "CT CHEST")
    priors = [
        prior("1.1", "20200101", "CT", "CT ABDOMEN"),
        prior("1.2", "20230101", "CT PT", "PET-CT WHOLE BODY", "CHEST"),
        prior("1.3", "20220101", "MR", "MR CHEST"),
        prior("1.9", "20240101", "CT", "CT CHEST"),  # the order's own study
        prior("1.4", "", "CT", "CT CHEST"),  # undated: last
        prior("1.5", "20210101", "", "CT CHEST"),  # no ModalitiesInStudy: not eligible
    ]
    uids = [p.study_uid for p in select_priors(priors, the_order, config())]
    assert uids == ["1.2", "1.1", "1.4"]
    uids = [p.study_uid for p in select_priors(priors, the_order, config(body_part_match=True))]
    assert uids == ["1.2", "1.4"]
    uids = [p.study_uid for p in select_priors(priors, the_order, config(modalities=["MR"]))]
    assert uids == ["1.3"]


def test_order_without_modality_accepts_any() -> None:
    the_order = Order("P", None, None, frozenset(), "")
    priors = [prior("1.1", "20200101", "CT"), prior("1.2", "20210101", "MR")]
    assert [p.study_uid for p in select_priors(priors, the_order, config())] == ["1.2", "1.1"]


def test_series_body_parts_are_asked_lazily() -> None:
    the_order = Order("P", None, None, frozenset({"CT"}), "CT KNEE")
    priors = [
        prior("1.1", "20240101", "CT", "CT LOWER EXTREMITY"),
        prior("1.2", "20230101", "CT", "CT KNEE RIGHT"),
        prior("1.3", "20220101", "CT", "CT LOWER EXTREMITY"),
    ]
    asked: list[str] = []

    def series_body_parts(uid: str) -> str:
        asked.append(uid)
        return "KNEE" if uid == "1.1" else "ANKLE"

    chosen = select_priors(
        priors, the_order, config(body_part_match=True, max_studies=2), series_body_parts
    )
    assert [p.study_uid for p in chosen] == ["1.1", "1.2"]
    assert asked == ["1.1"]  # 1.2 matched by description; 1.3 never needed
