"""Tables of the image archive's index: one row per archived instance, one per assembly unit.

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
)

from engine.store.schema import metadata

__all__ = ["COMPLETE", "RECEIVING", "archive_instances", "archive_studies"]

RECEIVING = "RECEIVING"
COMPLETE = "COMPLETE"

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
_Id = BigInteger().with_variant(Integer(), "sqlite")
_UID = String(64)

archive_instances = Table(
    "archive_instances",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
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
    Column("id", _Id, primary_key=True, autoincrement=True),
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
