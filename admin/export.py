"""``GET /api/messages/export``: the messages a search finds, as a file to download.

Two formats:

* ``ndjson``: one JSON object per line and message, with its summary and its
  content at every stage (``raw``, ``transformed``, ``response``, ``error``);
* ``hl7``: the HL7 v2 content of one stage (``raw`` by default), re-sendable
  as is: segments end with CR, each message ends with LF (no MLLP framing).
  Messages whose content at that stage is not HL7 v2 are left out.

Exporting is disclosing patient data: it needs PHI access, and every exported
message is written to the access log (action ``export``) before the first
byte is sent. The file is streamed: rows are read a page at a time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import StreamingResponse
from pydantic import Field
from sqlalchemy import Connection, Engine, insert, select

from admin.context import AdminContext, context
from admin.hl7_segments import is_hl7
from admin.messages_api import Filters, check_search_allowed, conditions_of
from admin.security import CurrentSession
from admin.tables import admin_access_log
from engine.store.tables import messages

__all__ = ["MAX_EXPORT", "router"]

router = APIRouter(prefix="/api/messages", tags=["messages"])
Ctx = Annotated[AdminContext, Depends(context)]

#: Most messages one export holds.
MAX_EXPORT = 10_000
_PAGE = 200
_SEGMENT_BREAK = re.compile(r"\r\n|\r|\n")
_MEDIA = {"ndjson": "application/x-ndjson", "hl7": "text/plain; charset=utf-8"}


class ExportQuery(Filters):
    """The search filters, the file format, and how many messages at most (newest first)."""

    format: Literal["ndjson", "hl7"] = "ndjson"
    stage: Literal["raw", "transformed", "response"] = Field(
        default="raw", description="the content an `hl7` export holds"
    )
    limit: int = Field(default=1000, ge=1, le=MAX_EXPORT)


@router.get("/export")
def export(session: CurrentSession, ctx: Ctx, q: Annotated[ExportQuery, Query()]) -> Any:
    """Download the matching messages (PHI access needed; each one is access-logged)."""
    if not session.user.can_view_phi:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "exporting messages needs PHI access")
    check_search_allowed(q, session)
    query = (
        select(messages.c.id).where(*conditions_of(q)).order_by(messages.c.id.desc()).limit(q.limit)
    )
    with ctx.services.engine.connect() as conn:
        ids = [int(value) for value in conn.execute(query).scalars()]
    ctx.run_write(_log_export(session.user.username, ids))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    filename = f"meridian-messages-{stamp}.{q.format}"
    return StreamingResponse(
        _lines(ctx.services.engine, ids, q),
        media_type=_MEDIA[q.format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _log_export(username: str, ids: list[int]) -> Callable[[Connection], None]:
    def op(conn: Connection) -> None:
        if not ids:
            return
        stamp = datetime.now(UTC)
        rows = [
            {"at": stamp, "username": username, "action": "export", "message_id": message_id}
            for message_id in ids
        ]
        conn.execute(insert(admin_access_log), rows)

    return op


def _lines(engine: Engine, ids: list[int], q: ExportQuery) -> Iterator[str]:
    """The file, one message at a time, reading ``_PAGE`` messages per query."""
    for start in range(0, len(ids), _PAGE):
        page = ids[start : start + _PAGE]
        with engine.connect() as conn:
            rows = conn.execute(
                select(messages).where(messages.c.id.in_(page)).order_by(messages.c.id.desc())
            ).mappings()
            found = [dict(row) for row in rows]
        for row in found:
            line = _ndjson(row) if q.format == "ndjson" else _hl7(row.get(q.stage))
            if line:
                yield line


def _ndjson(row: dict[str, Any]) -> str:
    return json.dumps({name: _jsonable(value) for name, value in row.items()}) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        # SQLite gives naive datetimes back; everything stored is UTC.
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.isoformat()
    return value


def _hl7(content: str | None) -> str:
    if not content or not is_hl7(content):
        return ""
    segments = [line for line in _SEGMENT_BREAK.split(content.lstrip("\ufeff \t")) if line]
    return "\r".join(segments) + "\r\n"
