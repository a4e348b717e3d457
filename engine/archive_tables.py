"""The image archive's index: its tables and the write that indexes one received instance.

One row per archived instance, one per assembly unit.

An *assembly unit* is what the quiet period groups: a study, or a series when
the channel says ``group_by: series``; its ``assembly_key`` is that study's or
series' instance UID. Units and instances belong to one channel: two channels
receiving the same instance each keep their own copy and their own batches.

Batches: a unit's first completed batch is 1; an instance arriving after the
unit completed reopens it (``RECEIVING``) with ``batch`` + 1, and only the
instances of that batch are handed on (a follow-up, never lost).
``completed_batch`` is the last batch closed by the quiet period,
``dispatched_batch`` the last one the channel took; ``dispatch_pending`` is
true while they differ (an indexed flag, so the assembler's poll never scans
the whole table).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    case,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from engine.store.schema import Id, metadata

__all__ = [
    "COMPLETE",
    "RECEIVING",
    "Stored",
    "archive_instances",
    "archive_studies",
    "index_instance",
]

RECEIVING = "RECEIVING"
COMPLETE = "COMPLETE"

_UID = String(64)

archive_instances = Table(
    "archive_instances",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel", String(64), nullable=False),
    Column("sop_instance_uid", _UID, nullable=False),
    Column("study_instance_uid", _UID, nullable=False),
    Column("series_instance_uid", _UID, nullable=False),
    Column("assembly_key", _UID, nullable=False),
    Column("sop_class_uid", _UID, nullable=False),
    Column("transfer_syntax_uid", _UID, nullable=False),
    Column("path", Text, nullable=False, comment="relative to the archive root"),
    Column("size", BigInteger, nullable=False),
    Column("calling_aet", String(16), nullable=False),
    Column("called_aet", String(16), nullable=False),
    Column("batch", Integer, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    # For search later; PHI: never logged.
    Column("patient_id", String(64)),
    Column("accession_number", String(64)),
    Column("modality", String(16)),
    UniqueConstraint("channel", "sop_instance_uid", name="uq_archive_instances_sop"),
    Index("ix_archive_instances_batch", "channel", "assembly_key", "batch"),
    Index("ix_archive_instances_study", "study_instance_uid"),
    Index("ix_archive_instances_patient_id", "patient_id"),
    Index("ix_archive_instances_accession", "accession_number"),
    Index("ix_archive_instances_modality", "modality"),
)

archive_studies = Table(
    "archive_studies",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel", String(64), nullable=False),
    Column("assembly_key", _UID, nullable=False),
    Column("study_instance_uid", _UID, nullable=False),
    Column("status", String(16), nullable=False),
    Column("batch", Integer, nullable=False),
    Column("completed_batch", Integer, nullable=False, default=0),
    Column("dispatched_batch", Integer, nullable=False, default=0),
    Column("dispatch_pending", Boolean, nullable=False, default=False),
    Column("instance_count", Integer, nullable=False, default=0),
    Column("first_received_at", DateTime(timezone=True), nullable=False),
    Column("last_received_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True)),
    UniqueConstraint("channel", "assembly_key", name="uq_archive_studies_key"),
    Index("ix_archive_studies_quiet", "channel", "status", "last_received_at"),
    Index("ix_archive_studies_pending", "channel", "dispatch_pending"),
    Index("ix_archive_studies_study", "study_instance_uid"),
)

_I = archive_instances
_S = archive_studies


class Stored(StrEnum):
    """What archiving an instance did."""

    STORED = "stored"
    REPLACED = "replaced"
    DUPLICATE = "duplicate"


# -- the write of one received instance (run by the group committer) ----------------------
#
# Statements are built once per dialect with bind parameters: building and
# cache-keying a fresh INSERT ... ON CONFLICT per image cost more than running it.

_INSTANCE_COLUMNS = tuple(c.name for c in archive_instances.c if c.name != "id")


@dataclass(frozen=True)
class _Statements:
    upsert_unit: Any
    insert_new: Any
    insert: Any
    find: Any
    replace: Any
    uncount: Any


@functools.cache
def _statements(dialect: str) -> _Statements:
    upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    reopened = _S.c.status == COMPLETE
    unit = upsert(_S).values(
        channel=bindparam("channel"),
        assembly_key=bindparam("assembly_key"),
        study_instance_uid=bindparam("study_instance_uid"),
        status=RECEIVING,
        batch=1,
        completed_batch=0,
        dispatched_batch=0,
        dispatch_pending=False,
        instance_count=bindparam("counts"),
        first_received_at=bindparam("now"),
        last_received_at=bindparam("now"),
    )
    values: dict[str, Any] = {name: bindparam(name) for name in _INSTANCE_COLUMNS}
    same_instance = (
        _I.c.channel == bindparam("channel"),
        _I.c.sop_instance_uid == bindparam("sop_instance_uid"),
    )
    return _Statements(
        upsert_unit=unit.on_conflict_do_update(
            index_elements=[_S.c.channel, _S.c.assembly_key],
            set_={
                "status": RECEIVING,
                "batch": case((reopened, _S.c.batch + 1), else_=_S.c.batch),
                "completed_at": case((reopened, None), else_=_S.c.completed_at),
                "last_received_at": bindparam("now"),
                "instance_count": _S.c.instance_count + bindparam("counts"),
            },
        ).returning(_S.c.batch),
        insert_new=upsert(_I)
        .values(values)
        .on_conflict_do_nothing(index_elements=[_I.c.channel, _I.c.sop_instance_uid])
        .returning(_I.c.id),
        insert=insert(_I).values(values),
        find=select(_I.c.id, _I.c.assembly_key, _I.c.path).where(*same_instance),
        replace=update(_I)
        .where(_I.c.id == bindparam("existing_id"))
        .values({name: bindparam(name) for name in _INSTANCE_COLUMNS if name != "channel"}),
        uncount=update(_S)
        .where(
            _S.c.channel == bindparam("unit_channel"), _S.c.assembly_key == bindparam("unit_key")
        )
        .values(instance_count=_S.c.instance_count - 1),
    )


def index_instance(
    conn: Connection, row: dict[str, Any], now: datetime, duplicates: str, *, fresh: bool
) -> tuple[Stored, str | None]:
    """Index one written file; returns the outcome and a replaced file to remove, if any.

    ``fresh``: no file was at the instance's path before this write, so (file
    first, then row) no row can exist: two statements, an upsert of the unit
    and an insert. Otherwise, or if a concurrent copy of the same instance
    won the race, the instance row is looked up and the duplicate policy
    applies.
    """
    sql = _statements(conn.dialect.name)
    if fresh:
        batch = _upsert_unit(conn, sql, row, now, counts=True)
        params = {**row, "batch": batch, "received_at": now}
        if conn.execute(sql.insert_new, params).first() is not None:
            return Stored.STORED, None
        # Lost a race with a copy of itself.
        conn.execute(sql.uncount, {"unit_channel": row["channel"], "unit_key": row["assembly_key"]})
    return _index_existing(conn, sql, row, now, duplicates)


def _index_existing(
    conn: Connection, sql: _Statements, row: dict[str, Any], now: datetime, duplicates: str
) -> tuple[Stored, str | None]:
    existing = conn.execute(sql.find, row).first()
    if existing is None:  # an orphan file from a crash, now indexed
        batch = _upsert_unit(conn, sql, row, now, counts=True)
        conn.execute(sql.insert, {**row, "batch": batch, "received_at": now})
        return Stored.STORED, None
    if duplicates == "ignore":
        return Stored.DUPLICATE, None
    moved = existing.assembly_key != row["assembly_key"]
    batch = _upsert_unit(conn, sql, row, now, counts=moved)
    if moved:
        unit = {"unit_channel": row["channel"], "unit_key": existing.assembly_key}
        conn.execute(sql.uncount, unit)
    params = {**row, "batch": batch, "received_at": now, "existing_id": existing.id}
    conn.execute(sql.replace, params)
    return Stored.REPLACED, (existing.path if existing.path != row["path"] else None)


def _upsert_unit(
    conn: Connection, sql: _Statements, row: dict[str, Any], now: datetime, *, counts: bool
) -> int:
    """Open or extend the instance's unit in one statement; returns its current batch.

    A completed unit reopens with the next batch number (a follow-up).
    """
    params = {
        "channel": row["channel"],
        "assembly_key": row["assembly_key"],
        "study_instance_uid": row["study_instance_uid"],
        "counts": 1 if counts else 0,
        "now": now,
    }
    return int(conn.execute(sql.upsert_unit, params).scalar_one())
