"""The template test bench: dry-run a channel (saved or unsaved) on one message.

Nothing the bench does is stored, queued or sent (see :mod:`engine.testbench`); the
only write is the access-log entry when a stored message's content is used. The work
(reading files, compiling, rendering) runs in FastAPI's worker threads, never on the
hub's event loop: these routes are plain ``def``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Self

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select

from admin.access_log import log_access
from admin.context import AdminContext, context
from admin.security import CurrentSession, Session, require_role
from engine.channel_files import ChannelValidationError, find_file
from engine.errors import ConfigError
from engine.store.tables import messages
from engine.testbench import (
    TestBench,
    check_template_name,
    list_templates,
    load_channel_text,
    read_template,
)

__all__ = ["BenchRequest", "channel_errors", "router"]

router = APIRouter(prefix="/api/testbench", tags=["testbench"])
Ctx = Annotated[AdminContext, Depends(context)]
Analyst = Annotated[Session, Depends(require_role("analyst"))]

_MAX_MESSAGE = 10 * 1024 * 1024  # characters; the MLLP source's limit is far lower
_MAX_TEXT = 1024 * 1024  # a channel file or a template


class BenchRequest(BaseModel):
    """Body of ``POST /api/testbench``: a channel, a message, optional unsaved edits."""

    model_config = ConfigDict(extra="forbid")

    channel: str = Field(min_length=1, max_length=63)
    message: str | None = Field(
        default=None, max_length=_MAX_MESSAGE, description="pasted message (HL7: CR, LF, CRLF)"
    )
    message_id: int | None = Field(default=None, description="a stored message's raw content")
    channel_yaml: str | None = Field(
        default=None, max_length=_MAX_TEXT, description="unsaved channel file text"
    )
    templates: dict[str, str] = Field(
        default_factory=dict, description="template name -> text, used instead of the file"
    )

    @field_validator("templates")
    @classmethod
    def _template_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            try:
                check_template_name(name)
            except ConfigError as exc:
                raise ValueError(str(exc)) from exc
            if len(text) > _MAX_TEXT:
                raise ValueError(f"template {name} is longer than {_MAX_TEXT} characters")
        return value

    @model_validator(mode="after")
    def _one_message(self) -> Self:
        if (self.message is None) == (self.message_id is None):
            raise ValueError("give either message or message_id")
        return self


def channel_errors(exc: ChannelValidationError) -> dict[str, Any]:
    """The 422 ``detail`` for an invalid channel file: ``{"errors": [ChannelError]}``."""
    errors = [
        {
            "file": Path(error.path).name,
            "line": error.line if error.line is not None else 1,
            "field": error.field,
            "message": error.reason,
        }
        for error in exc.errors
    ]
    return {"errors": errors}


@router.post("")
def run_bench(body: BenchRequest, session: Analyst, ctx: Ctx) -> dict[str, Any]:
    """Dry-run ``channel`` on the message: each step's result, nothing stored or sent."""
    stored = None if body.message_id is None else _stored_message(ctx, session, body.message_id)
    text, file_name = _channel_text(ctx, body)
    try:
        channel = load_channel_text(text, file_name)
        bench = TestBench(channel, ctx.services, text=text, templates=body.templates)
    except ChannelValidationError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, channel_errors(exc)) from exc
    except ConfigError as exc:  # the data type is refused, or the hub's uid_root is bad
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    message = stored if stored is not None else body.message
    assert message is not None  # one of the two, checked by the model
    return asdict(bench.run(bench.message_bytes(message)))


def _channel_text(ctx: Ctx, body: BenchRequest) -> tuple[str, str]:
    """The channel file text (unsaved or on disk) and the file name errors should name."""
    path = find_file(ctx.services.settings.channels_dir, body.channel)
    if body.channel_yaml is not None:
        return body.channel_yaml, path.name if path is not None else f"{body.channel}.yaml"
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such channel in the channels folder")
    try:
        return path.read_text(encoding="utf-8"), path.name
    except (OSError, UnicodeDecodeError) as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"cannot read {path.name}: {exc}"
        ) from exc


def _stored_message(ctx: Ctx, session: Session, message_id: int) -> str:
    """A stored message's content as received; needs PHI access, and is access-logged."""
    if not session.user.can_view_phi:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "using a stored message needs PHI access")
    with ctx.services.engine.connect() as conn:
        raw = conn.execute(select(messages.c.raw).where(messages.c.id == message_id)).scalar()
    if raw is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such message")
    ctx.run_write(log_access(session.user.username, "testbench", message_id))
    return str(raw)  # decoded text: message_bytes encodes it as its sender would


@router.get("/templates")
def templates(_: CurrentSession, ctx: Ctx) -> list[dict[str, str]]:
    """The templates of the transforms folder, by name."""
    folder = ctx.services.settings.resolved_transforms_dir()
    return [{"name": name} for name in list_templates(folder)]


@router.get("/templates/{name:path}")
def template(name: str, _: CurrentSession, ctx: Ctx) -> dict[str, str]:
    """One template's text (read-only); 404 for a name outside the transforms folder."""
    folder = ctx.services.settings.resolved_transforms_dir()
    try:
        text = read_template(folder, name)
    except ConfigError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"cannot read {name}") from exc
    if text is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such template")
    return {"name": name, "text": text}
