"""Channels: list with state and queues, view/edit/validate/diff the YAML, lifecycle actions.

File edits are validated exactly as ``meridian serve`` validates at start and
written atomically; an invalid text is refused with every error and its line
(422 ``{"detail": {"errors": [ChannelError...]}}``) and the file is left as it
was. Lifecycle actions (deploy, undeploy, start, stop, pause) run in the hub's
loop, one at a time; without a running hub they answer 503. Saves and actions
are written to the access log with the user and the channel.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from admin.access_log import log_access
from admin.channel_info import HubView, channel_infos
from admin.context import AdminContext, context
from admin.security import CurrentSession, Session, require_role
from engine.channel_control import ChannelStateError, UnknownChannel
from engine.channel_files import (
    ChannelValidationError,
    find_file,
    git_diff,
    git_head_text,
    save,
    scan,
    valid_file_name,
    validate_text,
)
from engine.errors import ChannelFileError, ConfigError, ConnectorError

__all__ = ["router"]

router = APIRouter(prefix="/api/channels", tags=["channels"])
Ctx = Annotated[AdminContext, Depends(context)]
Analyst = Annotated[Session, Depends(require_role("analyst"))]
Action = Literal["deploy", "undeploy", "start", "stop", "pause"]

_MAX_TEXT = 1_000_000
_INVALID: dict[int | str, dict[str, Any]] = {
    422: {"description": 'invalid channel file: {"detail": {"errors": [...]}}'}
}


class FileText(BaseModel):
    """Body of ``PUT /api/channels/{name}/file``."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=_MAX_TEXT)


class ValidateRequest(BaseModel):
    """Body of ``POST /api/channels/validate``; ``file`` names the file the text is for."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=_MAX_TEXT)
    file: str | None = Field(default=None, max_length=200)


class DiffRequest(BaseModel):
    """Body of ``POST /api/channels/{name}/diff``; without ``text`` the file on disk is used."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(default=None, max_length=_MAX_TEXT)


class NewChannel(BaseModel):
    """Body of ``POST /api/channels``: a new file in the channels folder."""

    model_config = ConfigDict(extra="forbid")
    file: str = Field(max_length=200)
    text: str = Field(max_length=_MAX_TEXT)


# -- reading -------------------------------------------------------------------------


@router.get("")
async def list_channels(_: CurrentSession, ctx: Ctx) -> list[dict[str, Any]]:
    """Every channel: files in the channels folder, deployed ones, ones with messages."""
    hub = HubView.of(ctx.hub)  # read in the hub's loop: its state does not move under us
    return await asyncio.to_thread(channel_infos, ctx.services.engine, _directory(ctx), hub)


@router.get("/{name}")
async def get_channel(name: str, _: CurrentSession, ctx: Ctx) -> dict[str, Any]:
    """One channel (404 if no file, deployment or message knows it)."""
    return await _info(ctx, name)


@router.get("/{name}/file")
def get_file(name: str, _: CurrentSession, ctx: Ctx) -> dict[str, Any]:
    """The channel's YAML, whether Git tracks it, and whether it differs from ``HEAD``."""
    path = _file_of(ctx, name)
    text = path.read_text(encoding="utf-8")
    view = git_head_text(path)
    return {
        "name": name,
        "file": path.name,
        "text": text,
        "tracked_in_git": view.tracked,
        "modified": view.head_text != text,
    }


@router.post("/validate")
def validate(body: ValidateRequest, _: CurrentSession, ctx: Ctx) -> dict[str, Any]:
    """Validate an editor's text as the hub would at start (nothing is written).

    With ``file`` the folder's rules apply too: an existing file keeps its channel
    name, a new one must not take a name another file defines (as saving would).
    """
    directory = _directory(ctx)
    file = Path(body.file).name if body.file else "channel.yaml"
    current = next((s.name for s in scan(directory) if s.path.name == file), None)
    _channel, errors = validate_text(
        body.text,
        directory / file,
        templates=ctx.services.templates,
        directory=directory if body.file else None,
        expected_name=current,
    )
    return {"valid": not errors, "errors": [_error(e) for e in errors]}


@router.post("/{name}/diff")
def diff(name: str, body: DiffRequest, _: CurrentSession, ctx: Ctx) -> dict[str, Any]:
    """Unified diff from the file at Git ``HEAD`` (empty if untracked) to ``text`` or the disk."""
    path = _file_of(ctx, name)
    text = body.text if body.text is not None else path.read_text(encoding="utf-8")
    tracked, patch = git_diff(path, text)
    return {"tracked_in_git": tracked, "diff": patch}


# -- writing -------------------------------------------------------------------------


@router.put("/{name}/file", responses=_INVALID)
def put_file(name: str, body: FileText, session: Analyst, ctx: Ctx) -> dict[str, Any]:
    """Replace the channel's file if ``text`` is valid (the running channel is unchanged)."""
    path = _file_of(ctx, name)
    _check(ctx, body.text, path, expected_name=name)
    save(path, body.text)
    ctx.run_write(log_access(session.user.username, "channel.save", None, channel=name))
    return {"saved": True, "file": path.name}


@router.post("", status_code=status.HTTP_201_CREATED, responses=_INVALID)
async def create_channel(body: NewChannel, session: Analyst, ctx: Ctx) -> dict[str, Any]:
    """A new channel file (undeployed until deployed); 409 if the file exists."""
    if not valid_file_name(body.file):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "file: a plain name ending in .yaml or .yml (letters, digits, '.', '_', '-')",
        )
    path = _directory(ctx) / body.file
    if path.exists():
        raise HTTPException(status.HTTP_409_CONFLICT, f"{body.file} already exists")
    channel = await asyncio.to_thread(_check, ctx, body.text, path)
    await asyncio.to_thread(save, path, body.text)
    who = session.user.username
    await ctx.services.committer.run_async(
        log_access(who, "channel.create", None, channel=channel.name)
    )
    return await _info(ctx, channel.name)


@router.post("/{name}/{action}", responses=_INVALID)
async def lifecycle(name: str, action: Action, session: Analyst, ctx: Ctx) -> dict[str, Any]:
    """deploy (re-read the file, replace and start), undeploy, start, stop or pause.

    409 if the action does not apply to the channel's state (or its source cannot
    start: a port or AE title in use), 404 for an unknown channel, 503 without a hub.
    """
    hub = ctx.hub
    if hub is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the hub is not running")
    operations = {
        "deploy": hub.deploy_channel,
        "undeploy": hub.undeploy_channel,
        "start": hub.start_channel,
        "stop": hub.stop_channel,
        "pause": hub.pause_channel,
    }
    try:
        await operations[action](name)
    except UnknownChannel as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ChannelValidationError as exc:
        raise _invalid(exc.errors) from exc
    except (ChannelStateError, ConfigError, ConnectorError) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    who = session.user.username
    await ctx.services.committer.run_async(log_access(who, f"channel.{action}", None, channel=name))
    return await _info(ctx, name)


# -- helpers -------------------------------------------------------------------------


def _directory(ctx: AdminContext) -> Path:
    return ctx.services.settings.channels_dir


def _file_of(ctx: AdminContext, name: str) -> Path:
    path = find_file(_directory(ctx), name)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no file defines channel {name}")
    return path


async def _info(ctx: AdminContext, name: str) -> dict[str, Any]:
    hub = HubView.of(ctx.hub)
    found = await asyncio.to_thread(channel_infos, ctx.services.engine, _directory(ctx), hub, name)
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown channel {name}")
    return found[0]


def _check(ctx: AdminContext, text: str, path: Path, expected_name: str | None = None) -> Any:
    """The validated channel of ``text``; 422 with every error otherwise."""
    channel, errors = validate_text(
        text,
        path,
        templates=ctx.services.templates,
        directory=_directory(ctx),
        expected_name=expected_name,
    )
    if errors or channel is None:
        raise _invalid(errors)
    return channel


def _invalid(errors: list[ChannelFileError]) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, {"errors": [_error(e) for e in errors]}
    )


def _error(error: ChannelFileError) -> dict[str, Any]:
    """A ChannelError: the file's name (never the server's path), line, field, message."""
    return {
        "file": Path(error.path).name,
        "line": error.line if error.line is not None else 1,
        "field": error.field,
        "message": error.reason,
    }
