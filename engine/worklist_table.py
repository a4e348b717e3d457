"""The ``worklist_items`` table: one Modality Worklist item per row.

The full item is kept as DICOM JSON in ``attributes``; the matching keys of
PS3.4 K.6 are copied into indexed columns so a C-FIND becomes one indexed SQL
query. Text columns are never NULL ('' when absent): ordering and keyset
paging then behave the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    Table,
)

from engine.store.schema import metadata

__all__ = ["worklist_items"]


def _text(name: str, length: int) -> Column[str]:
    return Column(name, String(length), nullable=False, server_default="")


# PN values: 3 component groups of at most 64 characters plus separators.
# The *_match columns hold the upper-cased form (see worklist_dataset.match_form),
# which may be longer (German sharp s becomes SS).
worklist_items = Table(
    "worklist_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item_key", String(200), nullable=False, unique=True),
    _text("status", 16),
    Column("active", Boolean, nullable=False),
    _text("patient_id", 64),
    _text("patient_name", 200),
    _text("patient_name_match", 400),
    _text("accession_number", 64),
    _text("modality", 16),
    _text("station_ae", 16),
    _text("sps_start_date", 8),
    # Normalized to 12 digits HHMMSSffffff so that text order is time order.
    _text("sps_start_time", 12),
    _text("study_instance_uid", 64),
    _text("requested_procedure_id", 64),
    _text("sps_id", 64),
    _text("performing_physician_match", 400),
    Column("attributes", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The two queries modalities send all day long.
    Index("ix_worklist_items_modality_date", "modality", "sps_start_date"),
    Index("ix_worklist_items_station_date", "station_ae", "sps_start_date"),
    # Result order and keyset paging; also serves date-only queries.
    Index("ix_worklist_items_schedule", "sps_start_date", "sps_start_time", "id"),
    # Equality and (on PostgreSQL, thanks to the pattern ops) prefix wildcards.
    Index(
        "ix_worklist_items_patient_id",
        "patient_id",
        postgresql_ops={"patient_id": "varchar_pattern_ops"},
    ),
    Index(
        "ix_worklist_items_patient_name",
        "patient_name_match",
        postgresql_ops={"patient_name_match": "varchar_pattern_ops"},
    ),
    Index(
        "ix_worklist_items_accession",
        "accession_number",
        postgresql_ops={"accession_number": "varchar_pattern_ops"},
    ),
    Index("ix_worklist_items_study_uid", "study_instance_uid"),
    Index("ix_worklist_items_requested_procedure", "requested_procedure_id"),
    Index("ix_worklist_items_sps_id", "sps_id"),
)
