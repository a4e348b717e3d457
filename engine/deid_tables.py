"""The de-identification mappings: pseudo UIDs, patient pseudonyms, study originals.

Three tables on the shared metadata, every row scoped by ``destination`` (each external
destination sees its own pseudonyms, so two recipients cannot link their data):

* ``deid_uids`` — original UID ↔ pseudo UID, indexed both ways;
* ``deid_patients`` — original patient (id, issuer) → pseudonym, date shift, and the
  original demographics needed to re-identify results;
* ``deid_studies`` — original study UID → the study attributes de-identification
  removed (accession number...), for re-identification.

The patient and study rows hold PHI (names, birth dates, accession numbers) at rest in
the hub's own database, next to the messages that already carry it; the database must
be protected accordingly. Nothing of it is ever sent to a destination.

Rows are created with ``INSERT ... ON CONFLICT DO NOTHING`` and read back in the same
short transaction, so two threads (or two hub processes on PostgreSQL) racing on the
same UID or patient end up with the one row that won.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    String,
    Table,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.expression import Executable

from engine.errors import ConfigError, StoreError
from engine.store.schema import metadata

__all__ = ["DeidStore", "PatientRow", "StudyRow", "deid_patients", "deid_studies", "deid_uids"]

_DESTINATION = 200  # room for "channel/destination"

deid_uids = Table(
    "deid_uids",
    metadata,
    Column("destination", String(_DESTINATION), primary_key=True),
    Column("original_uid", String(64), primary_key=True),
    Column("pseudo_uid", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ux_deid_uids_pseudo", "destination", "pseudo_uid", unique=True),
)

deid_patients = Table(
    "deid_patients",
    metadata,
    Column("destination", String(_DESTINATION), primary_key=True),
    # PatientID, or "~study:<uid>" for an image without one (see deid._patient_key).
    Column("original_patient_id", String(128), primary_key=True),
    Column("issuer", String(64), primary_key=True),
    Column("pseudo_id", String(64), nullable=False),
    Column("pseudo_name", String(64), nullable=False),
    Column("date_shift_days", Integer, nullable=False),
    Column("demographics", JSON, nullable=False),  # DICOM JSON of PATIENT_ATTRIBUTES
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ux_deid_patients_pseudo", "destination", "pseudo_id", unique=True),
)

deid_studies = Table(
    "deid_studies",
    metadata,
    Column("destination", String(_DESTINATION), primary_key=True),
    Column("original_study_uid", String(64), primary_key=True),
    Column("pseudo_patient_id", String(64), nullable=False),
    Column("attributes", JSON, nullable=False),  # DICOM JSON of STUDY_ATTRIBUTES
    Column("created_at", DateTime(timezone=True), nullable=False),
)

_CHUNK = 400  # bound parameters per IN list: far below SQLite's limit
_ATTEMPTS = 5  # a random pseudonym colliding this often means something else is wrong


@dataclass(frozen=True)
class PatientRow:
    """A patient's pseudonym for one destination."""

    pseudo_id: str
    pseudo_name: str
    date_shift_days: int
    demographics: dict[str, Any]


@dataclass(frozen=True)
class StudyRow:
    """What de-identification removed from one study, for one destination."""

    pseudo_patient_id: str
    attributes: dict[str, Any]


K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    """A thread-safe LRU: mappings never change once written, so they can be cached."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


class DeidStore:
    """Reads and creates the mappings; caches what it has read (rows never change)."""

    def __init__(self, engine: Engine, *, cache_size: int = 20_000) -> None:
        self._engine = engine
        dialect = engine.dialect.name
        self._insert_uid = _insert_new(dialect, deid_uids)
        self._insert_patient = _insert_new(dialect, deid_patients)
        self._insert_study = _insert_new(dialect, deid_studies)
        self._uids: _Lru[tuple[str, str], str] = _Lru(cache_size)
        self._patients: _Lru[tuple[str, str, str], PatientRow] = _Lru(1_000)
        self._studies: _Lru[tuple[str, str], bool] = _Lru(1_000)

    # -- UIDs -------------------------------------------------------------------

    def pseudo_uids(
        self, destination: str, originals: Iterable[str], new_uid: Callable[[], str]
    ) -> dict[str, str]:
        """original → pseudo for every UID of ``originals``, creating missing mappings."""
        found: dict[str, str] = {}
        missing = []
        for uid in set(originals):
            cached = self._uids.get((destination, uid))
            if cached is None:
                missing.append(uid)
            else:
                found[uid] = cached
        for _ in range(_ATTEMPTS):
            if not missing:
                return found
            created = self._create_uids(destination, missing, new_uid)
            for original, pseudo in created.items():
                self._uids.put((destination, original), pseudo)
            found.update(created)
            # Absent after the insert: our random pseudo UID collided with another one.
            missing = [uid for uid in missing if uid not in created]
        raise StoreError("de-identification: could not create unique pseudo UIDs")

    def _create_uids(
        self, destination: str, originals: list[str], new_uid: Callable[[], str]
    ) -> dict[str, str]:
        statement = self._insert_uid
        now = datetime.now(UTC)
        with self._begin() as conn:
            for chunk in _chunks(originals):
                rows = [
                    {"destination": destination, "original_uid": uid, "pseudo_uid": new_uid(),
                     "created_at": now}
                    for uid in chunk
                ]  # fmt: skip
                conn.execute(statement, rows)
            return self._select_uids(conn, destination, originals, deid_uids.c.original_uid)

    def original_uids(self, destination: str, pseudos: Iterable[str]) -> dict[str, str]:
        """pseudo → original for the pseudo UIDs of ``pseudos`` this destination was given."""
        with self._begin() as conn:
            return self._select_uids(conn, destination, list(set(pseudos)), deid_uids.c.pseudo_uid)

    @staticmethod
    def _select_uids(
        conn: Connection, destination: str, uids: list[str], by: Any
    ) -> dict[str, str]:
        """``uid → the other side`` for the rows whose column ``by`` is one of ``uids``."""
        other = (
            deid_uids.c.pseudo_uid if by is deid_uids.c.original_uid else deid_uids.c.original_uid
        )
        result: dict[str, str] = {}
        for chunk in _chunks(uids):
            query = select(by, other).where(deid_uids.c.destination == destination, by.in_(chunk))
            result.update({row[0]: row[1] for row in conn.execute(query)})
        return result

    # -- patients -----------------------------------------------------------------

    def patient(
        self,
        destination: str,
        original_id: str,
        issuer: str,
        make: Callable[[], PatientRow],
    ) -> PatientRow:
        """The patient's row, created from ``make()`` the first time the patient is seen."""
        key = (destination, original_id, issuer)
        cached = self._patients.get(key)
        if cached is not None:
            return cached
        where = (
            deid_patients.c.destination == destination,
            deid_patients.c.original_patient_id == original_id,
            deid_patients.c.issuer == issuer,
        )
        for _ in range(_ATTEMPTS):
            candidate = make()
            with self._begin() as conn:
                conn.execute(
                    self._insert_patient,
                    {"destination": destination, "original_patient_id": original_id,
                     "issuer": issuer, "pseudo_id": candidate.pseudo_id,
                     "pseudo_name": candidate.pseudo_name,
                     "date_shift_days": candidate.date_shift_days,
                     "demographics": candidate.demographics, "created_at": datetime.now(UTC)},
                )  # fmt: skip
                row = conn.execute(select(deid_patients).where(*where)).mappings().first()
            if row is not None:  # ours, or the one a concurrent writer made first
                found = _patient_row(row)
                self._patients.put(key, found)
                return found
        raise StoreError("de-identification: could not create a unique patient pseudonym")

    def patient_by_pseudonym(self, destination: str, pseudo_id: str) -> PatientRow | None:
        """The patient given ``pseudo_id`` for ``destination``, if any."""
        query = select(deid_patients).where(
            deid_patients.c.destination == destination, deid_patients.c.pseudo_id == pseudo_id
        )
        with self._begin() as conn:
            row = conn.execute(query).mappings().first()
        return _patient_row(row) if row is not None else None

    # -- studies --------------------------------------------------------------------

    def remember_study(
        self,
        destination: str,
        study_uid: str,
        pseudo_patient_id: str,
        attributes: Callable[[], dict[str, Any]],
    ) -> None:
        """Keep the study's removed ``attributes()`` (built once; the first instance wins)."""
        key = (destination, study_uid)
        if self._studies.get(key):
            return
        with self._begin() as conn:
            conn.execute(
                self._insert_study,
                {"destination": destination, "original_study_uid": study_uid,
                 "pseudo_patient_id": pseudo_patient_id, "attributes": attributes(),
                 "created_at": datetime.now(UTC)},
            )  # fmt: skip
        self._studies.put(key, True)

    def study(self, destination: str, study_uid: str) -> StudyRow | None:
        """The study's row for ``destination``, if the study was de-identified for it."""
        query = select(deid_studies.c.pseudo_patient_id, deid_studies.c.attributes).where(
            deid_studies.c.destination == destination,
            deid_studies.c.original_study_uid == study_uid,
        )
        with self._begin() as conn:
            row = conn.execute(query).first()
        return StudyRow(row[0], dict(row[1])) if row is not None else None

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """One short transaction; database errors become :class:`StoreError` (no values)."""
        try:
            with self._engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"de-identification mapping: {type(exc).__name__}") from exc


def _insert_new(dialect: str, table: Table) -> Executable:
    """``INSERT ... ON CONFLICT DO NOTHING`` (any unique key) in the dialect's own syntax."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise ConfigError(f"de-identification needs SQLite or PostgreSQL, not {dialect}")


def _patient_row(row: Any) -> PatientRow:
    return PatientRow(
        pseudo_id=row["pseudo_id"],
        pseudo_name=row["pseudo_name"],
        date_shift_days=int(row["date_shift_days"]),
        demographics=dict(row["demographics"]),
    )


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
