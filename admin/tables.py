"""Tables of the admin API: users, sessions and the access log, on the store's metadata."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, ForeignKey, Index, String, Table

from engine.store.schema import Id, metadata

__all__ = ["admin_access_log", "admin_alert_acks", "admin_sessions", "admin_users"]

admin_users = Table(
    "admin_users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    # argon2id encoded hash (parameters and salt included); never the password.
    Column("password_hash", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("can_view_phi", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
)

# Server-side sessions: the cookie holds only a random token; logout and expiry
# take effect at once because the row is what counts.
admin_sessions = Table(
    "admin_sessions",
    metadata,
    Column("token", String(64), primary_key=True),
    Column("user_id", Id, ForeignKey("admin_users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_admin_sessions_expires", "expires_at"),
)

# Who looked at or acted on which message, and when (HIPAA-style access trail).
admin_access_log = Table(
    "admin_access_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("username", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("message_id", Id),
    # The channel acted on (deploy, file save...); null for message accesses.
    Column("channel", String(64)),
    Index("ix_admin_access_log_message", "message_id"),
    Index("ix_admin_access_log_at", "at"),
)

# Who acknowledged an alert (engine/ai_timeouts.py ``alerts``) and when; kept
# beside the alert, not in it, so the engine's table keeps its schema.
admin_alert_acks = Table(
    "admin_alert_acks",
    metadata,
    Column("alert_id", Id, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("username", String(64), nullable=False),
)
