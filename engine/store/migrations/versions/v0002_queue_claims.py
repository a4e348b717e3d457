"""Queue claims: the node delivering an entry and its lease (several nodes, one store).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 23:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("queue_entries") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_queue_claimed_by", "queue_entries", ["claimed_by"], unique=False)


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index("ix_queue_claimed_by", table_name="queue_entries")
    with op.batch_alter_table("queue_entries") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("claimed_by")
