"""Submitting a radiologist's report: ``POST /api/reports``.

The report enters the report channel (``admin.report_channel``, results-to-ehr by
default) exactly as a report forwarded by another channel does: the channel's
runtime reads, transforms and stores it, and its destinations send the ORU^R01 and
FHIR resources to the EHR. The answer comes only after the message is committed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.responses import JSONResponse
from pydicom import Dataset
from sqlalchemy import select

from admin.access_log import log_access
from admin.context import AdminContext, context
from admin.report_submission import ReportSubmission, build_report
from admin.security import Session, require_role
from connectors.base import Origin
from engine.errors import EngineError, MessageError
from engine.states import MessageStatus
from engine.store.tables import messages

if TYPE_CHECKING:
    from engine.pipeline import ChannelRuntime

__all__ = ["router"]

router = APIRouter(prefix="/api/reports", tags=["reports"])
Ctx = Annotated[AdminContext, Depends(context)]
Analyst = Annotated[Session, Depends(require_role("analyst"))]


@router.post("", status_code=status.HTTP_201_CREATED)
async def submit_report(body: ReportSubmission, session: Analyst, ctx: Ctx) -> Any:
    """Hand the report to the report channel; 201 ``{message_id, status}`` once it is stored.

    422 when the report is incomplete, contradicts the study's order, or the channel
    stored it as ERROR (it will not be sent); 503 when the channel is not running.
    A resubmission of the very same report (same ``reported_at`` and content) is a
    duplicate: 200 with the first message's id.
    """
    runtime = _report_runtime(ctx)
    try:
        order = await asyncio.to_thread(_order, ctx, body)
    except EngineError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "worklist unavailable") from exc
    try:
        report = build_report(body, order)
    except MessageError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, exc.reason) from exc
    origin = Origin("admin-api", f"admin:{session.user.username}", runtime.name)
    try:
        processed = await runtime.submit(report.model_dump_json().encode("utf-8"), origin)
    except EngineError as exc:  # the store is down: nothing was kept
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "message store unavailable"
        ) from exc
    if processed.message_id is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "message store unavailable")
    message_id = processed.message_id
    await asyncio.to_thread(ctx.run_write, log_access(session.user.username, "report", message_id))
    if processed.duplicate:
        stored = await asyncio.to_thread(_stored_status, ctx, message_id)
        answer = {"message_id": message_id, "status": stored, "duplicate": True}
        return JSONResponse(answer, status.HTTP_200_OK)
    if processed.status == MessageStatus.ERROR:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"report stored as message {message_id} with status ERROR and not sent: "
            f"{processed.error}",
        )
    assert processed.status is not None  # a new message always has one
    return {"message_id": message_id, "status": processed.status.value, "duplicate": False}


def _report_runtime(ctx: AdminContext) -> ChannelRuntime:
    """The report channel's runtime, if it takes messages now; 503 otherwise.

    Looked up where ``type: channel`` destinations find their target: a channel is
    there while its source runs (deployed and started), as for a forwarded report.
    """
    name = ctx.settings.report_channel
    if ctx.hub is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the hub is not running")
    runtime: ChannelRuntime | None = ctx.services.channels.get(name)
    if runtime is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"report channel {name} is not deployed or not started",
        )
    if runtime.channel.file.inbound.data_type != "report":
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"report channel {name} does not take reports (its data type is not report)",
        )
    return runtime


def _order(ctx: AdminContext, body: ReportSubmission) -> Dataset | None:
    """The study's order in the worklist: by accession number, else by Study Instance UID."""
    worklist = ctx.services.worklist
    if body.accession_number:
        return worklist.find_item(accession_number=body.accession_number)
    return worklist.find_item(study_instance_uid=body.study_instance_uid)


def _stored_status(ctx: AdminContext, message_id: int) -> str | None:
    with ctx.services.engine.connect() as conn:
        found = conn.execute(select(messages.c.status).where(messages.c.id == message_id))
        value = found.scalar()
    return None if value is None else str(value)
