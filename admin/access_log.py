"""Writes to ``admin_access_log``: who viewed or reprocessed which message, who acted on
which channel (``channel.deploy``, ``channel.save``...), and when."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection, insert

from admin.tables import admin_access_log

__all__ = ["log_access"]


def log_access(
    username: str, action: str, message_id: int | None, *, channel: str | None = None
) -> Callable[[Connection], None]:
    """A write op recording one access (inside the transaction doing the work, if any)."""

    def op(conn: Connection) -> None:
        conn.execute(
            insert(admin_access_log).values(
                at=datetime.now(UTC),
                username=username,
                action=action,
                message_id=message_id,
                channel=channel,
            )
        )

    return op
