"""Channel files as an editor sees them: find, validate from text, save durably, diff with Git.

Validation is the loader's own (:func:`engine.loader.check_channel_text`: the YAML,
the channel, every connector's config) plus what ``meridian serve`` checks before
it starts (templates, filter expressions, normalize rules) and the folder-wide
rule that a channel name is defined by one file only. Every error carries the
line it points at.
"""

from __future__ import annotations

import difflib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.config import Channel
from engine.errors import ChannelFileError, ConfigError
from engine.files import write_durably
from engine.loader import channel_files, check_channel_text
from engine.templating import TemplateEnvironment
from engine.yaml_lines import LocatedYAML, load_located

__all__ = [
    "ChannelValidationError",
    "FileSummary",
    "GitView",
    "find_file",
    "git_diff",
    "git_head_text",
    "load_validated",
    "save",
    "scan",
    "valid_file_name",
    "validate_text",
]

_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.ya?ml$")
_GIT_TIMEOUT = 10.0


class ChannelValidationError(ConfigError):
    """A channel file (or an editor's text) is invalid; ``errors`` lists every problem found."""

    def __init__(self, errors: list[ChannelFileError]) -> None:
        self.errors = errors
        super().__init__(str(errors[0]) if errors else "invalid channel file")


@dataclass(frozen=True)
class FileSummary:
    """One file of the channels folder, read without validation (it may be broken)."""

    path: Path
    name: str
    data: dict[str, Any] | None  # the parsed mapping; None if the YAML does not parse


def scan(directory: Path) -> list[FileSummary]:
    """Every channel file of ``directory``; a file without a readable name goes by its stem."""
    if not directory.is_dir():
        return []
    summaries = []
    for path in channel_files(directory):
        data = _mapping(path)
        name = data.get("name") if data is not None else None
        summaries.append(FileSummary(path, name if isinstance(name, str) else path.stem, data))
    return summaries


def find_file(directory: Path, name: str) -> Path | None:
    """The file of channel ``name`` in ``directory`` (the first one, in name order)."""
    for summary in scan(directory):
        if summary.name == name:
            return summary.path
    return None


def valid_file_name(file: str) -> bool:
    """True for a plain ``*.yaml``/``*.yml`` name (no folder, no leading dot)."""
    return bool(_FILE_NAME.match(file))


def validate_text(
    text: str,
    path: Path,
    *,
    templates: TemplateEnvironment,
    directory: Path | None,
    expected_name: str | None = None,
) -> tuple[Channel | None, list[ChannelFileError]]:
    """Validate ``text`` as file ``path`` exactly as the hub does at start; every error found.

    ``directory`` (the channels folder) enables the unique-name check against the
    other files; ``expected_name`` requires the channel to keep that name.
    """
    channel, errors = check_channel_text(text, path)
    located = _located(text, path)
    if located is not None:
        errors += _name_errors(located, path, directory, expected_name)
        if channel is not None:
            errors += _template_errors(channel, located, templates)
    return (channel if not errors else None), errors


def load_validated(path: Path, *, templates: TemplateEnvironment, directory: Path) -> Channel:
    """Read and validate ``path`` from disk (for a deploy); ChannelValidationError if invalid."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ChannelValidationError(
            [ChannelFileError(str(path), None, "(file)", f"cannot read: {exc.strerror}")]
        ) from exc
    channel, errors = validate_text(text, path, templates=templates, directory=directory)
    if errors or channel is None:
        raise ChannelValidationError(errors)
    return channel


def save(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically and durably (temp file, fsync, rename)."""
    write_durably(path, text.encode("utf-8"))


# -- Git -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GitView:
    """A file's committed version: None when not in a Git repository or not tracked."""

    head_text: str | None

    @property
    def tracked(self) -> bool:
        """True if ``HEAD`` has the file."""
        return self.head_text is not None


def git_head_text(path: Path) -> GitView:
    """The file as committed at ``HEAD`` of the repository holding its folder."""
    folder = path.parent.resolve()
    top = _git(folder, "rev-parse", "--show-toplevel")
    if top is None:
        return GitView(None)
    try:
        relative = (folder / path.name).relative_to(Path(top.decode().strip()).resolve())
    except ValueError:
        return GitView(None)
    content = _git(folder, "show", f"HEAD:{relative.as_posix()}")
    return GitView(content.decode("utf-8", errors="replace") if content is not None else None)


def git_diff(path: Path, text: str) -> tuple[bool, str]:
    """(tracked, unified diff from the committed file to ``text``; "" if identical)."""
    view = git_head_text(path)
    old = view.head_text or ""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        text.splitlines(keepends=True),
        fromfile=f"a/{path.name}",
        tofile=f"b/{path.name}",
    )
    # A last line without newline would glue onto the next diff line.
    return view.tracked, "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _git(cwd: Path, *args: str) -> bytes | None:
    """stdout of ``git args`` in ``cwd``; None if git fails or is missing."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            timeout=_GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


# -- helpers -------------------------------------------------------------------------


def _mapping(path: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _located(text: str, path: Path) -> LocatedYAML | None:
    try:
        located = load_located(text, str(path))
    except ChannelFileError:
        return None  # already reported by the loader's check
    return located if isinstance(located.data, dict) else None


def _name_errors(
    located: LocatedYAML, path: Path, directory: Path | None, expected: str | None
) -> list[ChannelFileError]:
    name = located.data.get("name")
    if not isinstance(name, str):
        return []  # a missing or bad name is already a loader error
    line = located.line_of(("name",))
    if expected is not None and name != expected:
        reason = f"the name must stay '{expected}' (a new name needs a new file)"
        return [ChannelFileError(str(path), line, "name", reason)]
    if directory is None:
        return []
    for other in scan(directory):
        if other.name == name and other.path.name != path.name:
            reason = f"channel '{name}' is also defined in {other.path.name}"
            return [ChannelFileError(str(path), line, "name", reason)]
    return []


def _template_errors(
    channel: Channel, located: LocatedYAML, templates: TemplateEnvironment
) -> list[ChannelFileError]:
    """What ``meridian serve`` checks besides the file: templates, filters, keys, normalize."""
    errors: list[ChannelFileError] = []

    def check(where: tuple[str | int, ...], run: Any, *args: Any) -> None:
        try:
            run(*args)
        except ConfigError as exc:
            field = ".".join(str(part) for part in where)
            errors.append(
                ChannelFileError(str(channel.path), located.line_of(where), field, str(exc))
            )

    if channel.file.transform is not None:
        check(("transform", "template"), templates.check, channel.file.transform.template)
    for index, rule in enumerate(channel.file.filters):
        check(("filters", index, "when"), templates.compile_expression, rule.when)
    for d_index, destination in enumerate(channel.destinations):
        spec = destination.spec
        where: tuple[str | int, ...] = ("destinations", d_index)
        if spec.transform is not None:
            check((*where, "transform", "template"), templates.check, spec.transform.template)
        for index, rule in enumerate(spec.filters):
            check((*where, "filters", index, "when"), templates.compile_expression, rule.when)
        if spec.queue.order_key is not None:
            key = spec.queue.order_key
            check((*where, "queue", "order_key"), templates.compile_template, key)
    if channel.file.normalize is not None:
        check(("normalize",), _check_normalize, channel, templates)
    return errors


def _check_normalize(channel: Channel, templates: TemplateEnvironment) -> None:
    from engine.normalize import Normalizer

    assert channel.file.normalize is not None
    # No worklist needed to check: linking is only exercised on real images (as checks.py).
    config = channel.file.normalize.model_copy(update={"link_worklist": False})
    Normalizer(config, templates).check()
