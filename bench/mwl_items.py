"""The synthetic worklist of bench/mwl.py: items, typical queries, and both servers' data.

The same items go into Meridian's :class:`WorklistStore` (:func:`load_store`)
and into dcmtk ``wlmscpfs`` data files (:func:`write_wl_files`), so both
servers answer the same queries over the same worklist.
"""

from __future__ import annotations

import random
import struct
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian
from sqlalchemy import create_engine

from connectors.dicom_mwl import MODALITY_WORKLIST_FIND
from engine.worklist import WorklistStore, worklist_items
from engine.worklist_item import WorklistItem

CALLED_AE = "MERIDIAN"
SEED = 20240105

# (modality, share of the daily volume, stations)
MODALITIES = [
    ("CT", 0.28, ["CT1", "CT2", "CT3", "CT4"]),
    ("MR", 0.18, ["MR1", "MR2", "MR3"]),
    ("CR", 0.22, ["CR1", "CR2", "CR3"]),
    ("US", 0.16, ["US1", "US2", "US3", "US4"]),
    ("MG", 0.08, ["MG1", "MG2"]),
    ("NM", 0.08, ["NM1"]),
]
FAMILY = ["Smith", "Jones", "Garcia", "Müller", "Nguyen", "Kowalski", "Rossi", "Dubois",
          "Larsen", "Yilmaz", "Brown", "Schäfer", "Novak", "Silva", "Martin", "Olsen"]  # fmt: skip
GIVEN = ["Anna", "Ben", "Chloé", "David", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jonas",
         "Karin", "Liam", "Maria", "Noah", "Olga", "Paul", "René", "Sara"]  # fmt: skip


# -- synthetic items ------------------------------------------------------------


def synthetic_item(index: int, n: int, per_day: int, today: date) -> dict[str, Any]:
    """Item ``index`` of ``n``: the same attributes every run (seeded by index)."""
    rng = random.Random(SEED * 1_000_003 + index)
    days = max(1, n // per_day)
    ahead = min(7, days // 4)  # mostly history, up to a week scheduled ahead
    day = today + timedelta(days=(index % days) - (days - 1 - ahead))
    modality, stations = _pick_modality(rng)
    minutes = 7 * 60 + rng.randrange(0, 12 * 60, 5)
    patient = rng.randrange(max(1, n // 3))
    return {
        "PatientID": f"P{patient:07d}",
        "PatientName": f"{FAMILY[patient % len(FAMILY)]}^{GIVEN[patient % len(GIVEN)]}",
        "PatientBirthDate": f"{1930 + patient % 80}{1 + patient % 12:02d}{1 + patient % 28:02d}",
        "PatientSex": "MF"[patient % 2],
        "AccessionNumber": f"A{index:09d}",
        "RequestedProcedureID": f"RP{index:08d}",
        "RequestedProcedureDescription": f"{modality} examination",
        "StudyInstanceUID": f"1.2.826.0.1.3680043.10.1434.{SEED}.{index}",
        "ReferringPhysicianName": "Referrer^Rita",
        "ScheduledProcedureStepSequence": [
            {
                "Modality": modality,
                "ScheduledStationAETitle": rng.choice(stations),
                "ScheduledProcedureStepStartDate": day.strftime("%Y%m%d"),
                "ScheduledProcedureStepStartTime": f"{minutes // 60:02d}{minutes % 60:02d}00",
                "ScheduledProcedureStepID": f"SPS{index:08d}",
                "ScheduledProcedureStepDescription": f"{modality} examination",
                "ScheduledPerformingPhysicianName": "Tech^Tom",
            }
        ],
    }


def _pick_modality(rng: random.Random) -> tuple[str, list[str]]:
    roll = rng.random()
    for modality, share, stations in MODALITIES:
        if roll < share:
            return modality, stations
        roll -= share
    return MODALITIES[-1][0], MODALITIES[-1][2]


def typical_queries(count: int, n: int, today: date) -> list[Dataset]:
    """What modalities ask all day: 40% modality+today, 30% station+today, 15% PID, 15% ACC."""
    rng = random.Random(SEED)
    day = today.strftime("%Y%m%d")
    queries = []
    for number in range(count):
        kind = number % 20
        if kind < 8:
            queries.append(_query(step={"Modality": rng.choice(MODALITIES)[0]}, date_=day))
        elif kind < 14:
            station = rng.choice(rng.choice(MODALITIES)[2])
            queries.append(_query(step={"ScheduledStationAETitle": station}, date_=day))
        elif kind < 17:
            queries.append(_query(PatientID=f"P{rng.randrange(max(1, n // 3)):07d}"))
        else:
            queries.append(_query(AccessionNumber=f"A{rng.randrange(n):09d}"))
    return queries


def _query(step: dict[str, str] | None = None, date_: str = "", **keys: str) -> Dataset:
    """A modality's identifier: its matching keys plus the usual return keys."""
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "AccessionNumber", "RequestedProcedureID", "RequestedProcedureDescription",
                    "StudyInstanceUID", "ReferringPhysicianName"):  # fmt: skip
        setattr(ds, keyword, keys.get(keyword, ""))
    item = Dataset()
    for keyword in ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartTime",
                    "ScheduledProcedureStepID", "ScheduledProcedureStepDescription",
                    "ScheduledPerformingPhysicianName"):  # fmt: skip
        setattr(item, keyword, (step or {}).get(keyword, ""))
    item.ScheduledProcedureStepStartDate = date_
    ds.ScheduledProcedureStepSequence = [item]
    return ds


def load_store(db: Path, n: int, per_day: int, today: date) -> float:
    """Apply N create actions through WorklistStore.apply; returns the seconds taken."""
    engine = create_engine(f"sqlite:///{db}")
    worklist_items.create(engine)
    store = WorklistStore(engine)
    started = time.perf_counter()
    for first in range(0, n, 5000):
        with engine.begin() as conn:
            for index in range(first, min(n, first + 5000)):
                attributes = synthetic_item(index, n, per_day, today)
                item = WorklistItem(action="create", key=f"ORD{index}", attributes=attributes)
                store.apply(conn, item)
    engine.dispose()
    return time.perf_counter() - started


def _element(tag: int, vr: str, value: str) -> bytes:
    """One explicit VR little endian element with a 2-byte length (text VRs only)."""
    raw = value.encode("latin-1")  # every synthetic value fits ISO_IR 100
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


def _encode(attributes: dict[str, Any]) -> bytes:
    """A dataset (text values and sequences) as explicit VR little endian bytes.

    Hand-rolled because pydicom's writer made 100k files take minutes; the
    result is checked by wlmscpfs answering with the same matches as Meridian.
    """
    encoded = b""
    for tag, keyword in sorted((_tag(k), k) for k in attributes):
        value = attributes[keyword]
        if dictionary_VR(keyword) != "SQ":
            encoded += _element(tag, dictionary_VR(keyword), value)
            continue
        items = b"".join(
            struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
            + _encode(item)
            + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            for item in value
        )
        encoded += struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, 0xFFFFFFFF)
        encoded += items + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return encoded


def _file_meta(instance_uid: str) -> bytes:
    group = (
        struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2)
        + b"\x00\x01"
        + _element(0x00020002, "UI", MODALITY_WORKLIST_FIND)
        + _element(0x00020003, "UI", instance_uid)
        + _element(0x00020010, "UI", ExplicitVRLittleEndian)
        + _element(0x00020012, "UI", PYDICOM_IMPLEMENTATION_UID)
    )
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group))
    return b"\0" * 128 + b"DICM" + length + group


def write_wl_files(root: Path, n: int, per_day: int, today: date) -> float:
    """The same items as wlmscpfs data files (``root/<called AE>/*.wl`` and a lockfile)."""
    folder = root / CALLED_AE
    folder.mkdir(parents=True)
    (folder / "lockfile").touch()
    started = time.perf_counter()
    for index in range(n):
        attributes = {
            "SpecificCharacterSet": "ISO_IR 100",
            **synthetic_item(index, n, per_day, today),
        }
        instance_uid = f"{attributes['StudyInstanceUID']}.1"
        (folder / f"item{index:07d}.wl").write_bytes(_file_meta(instance_uid) + _encode(attributes))
    return time.perf_counter() - started
