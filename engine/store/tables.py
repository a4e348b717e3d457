"""Tables of the message store: messages, destination queues, duplicate keys."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from engine.store.schema import Id, metadata

__all__ = ["channel_states", "duplicate_keys", "messages", "queue_entries"]


messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("origin", String(200), nullable=False),
    Column("message_type", String(32)),
    Column("sender", String(200)),
    Column("control_id", String(200)),
    Column("patient_id", String(64)),
    Column("accession", String(64)),
    # Content at each stage: what came in, what the transform made, what we answered.
    Column("raw", Text, nullable=False),
    Column("transformed", Text),
    Column("response", Text),
    Column("error", Text),
    Index("ix_messages_channel_id", "channel", "id"),
    Index("ix_messages_status", "status"),
    Index("ix_messages_received_at", "received_at"),
    Index("ix_messages_patient_id", "patient_id"),
    Index("ix_messages_accession", "accession"),
)

queue_entries = Table(
    "queue_entries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", Id, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("destination", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("payload", Text, nullable=False),
    # Entries of one destination with the same key are delivered in arrival order
    # (engine.queue); NULL is one shared key. Set when the entry is queued.
    Column("order_key", String(200)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("response", Text),
    Column("error", Text),
    # Several nodes on one store: the node delivering a QUEUED entry and until when
    # its claim holds (renewed while it lives; expired, another node takes over).
    # NULL on a single node and on entries no node holds (engine.store.queue_claims).
    Column("claimed_by", String(64)),
    Column("lease_until", DateTime(timezone=True)),
    Index("ix_queue_pending", "channel", "destination", "status", "id"),
    # The head of each key (oldest QUEUED entry), for parallel delivery lanes.
    Index("ix_queue_key_head", "channel", "destination", "status", "order_key", "id"),
    Index("ix_queue_message", "message_id"),
    Index("ix_queue_claimed_by", "claimed_by"),
)

# A resent message (same channel, sender, MSH-10 and content) is answered with
# the first answer and not applied again. The content hash matters: some EHRs
# reuse control IDs after a restart, and a new order must never be dropped.
duplicate_keys = Table(
    "duplicate_keys",
    metadata,
    Column("channel", String(64), nullable=False),
    Column("sender", String(200), nullable=False),
    Column("control_id", String(200), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("message_id", Id, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("channel", "sender", "control_id", "content_hash", name="uq_duplicate_key"),
)

# The state analysts put each channel in (engine.channel_sync): every node follows
# it, and a restarted hub comes back to it. ``generation`` counts redeploys.
channel_states = Table(
    "channel_states",
    metadata,
    Column("channel", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("changed_on", String(64), nullable=False),
)
