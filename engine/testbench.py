"""The template test bench: a dry run of a channel on one message, without side effects.

The message goes through the same steps as in the hub (:mod:`engine.channel_steps`):
read by the channel's data type, the accept check, the channel filters, the transform,
then every destination's routing rules and own transform. Nothing is stored, queued or
sent: the bench shows what each destination *would* be given. Templates can be
overridden for one run (unsaved editor text) without touching the hub's environment.

Errors (a message that does not parse, a filter that fails, a template error with its
file and line) are part of the result, never exceptions. Only what makes the run
impossible raises: a channel file that does not validate (:class:`ChannelValidationError`)
or a data type whose reading is not side-effect free (:class:`BenchRefusedError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import BaseLoader, ChoiceLoader, Environment, FileSystemLoader, TemplateNotFound

from connectors.base import Origin
from engine.channel_files import ChannelValidationError
from engine.channel_steps import ChannelSteps, CompiledFilter
from engine.config import Channel, FilterRule
from engine.datatypes import datatype_for
from engine.datatypes.base import DataType, ReadMessage
from engine.errors import ChannelFileError, ConfigError, EngineError, MessageError
from engine.formats.hl7 import encode
from engine.hl7_inbound import best_effort_header
from engine.loader import check_channel_text
from engine.services import Services
from engine.templating import TEMPLATE_SUFFIX, TemplateEnvironment
from engine.yaml_lines import load_located

__all__ = [
    "OUTPUT_LIMIT",
    "BenchRefusedError",
    "BenchResult",
    "TestBench",
    "as_sent",
    "check_template_name",
    "list_templates",
    "load_channel_text",
    "read_template",
]

#: Characters of one output shown; the rest is cut off (``truncated`` says so).
OUTPUT_LIMIT = 1_000_000

#: Data types whose read and built-in transform only compute. The others read image
#: files, write normalized or re-identified copies and consult the store.
SIDE_EFFECT_FREE = ("hl7v2", "report", "procedure-step")

_ORIGIN = Origin("testbench", "testbench", "testbench")


class BenchRefusedError(ConfigError):
    """The bench cannot dry-run this channel (its data type has side effects)."""


# -- results ------------------------------------------------------------------------------


@dataclass
class ReadResult:
    """Whether the channel could read (and accepts) the message."""

    ok: bool = False
    error: str | None = None
    message_type: str | None = None


@dataclass
class FilterResult:
    """One rule: passed True/False, or None when not evaluated (an earlier one stopped)."""

    name: str
    passed: bool | None = None
    error: str | None = None


@dataclass
class TransformResult:
    """The channel transform's output (what the destinations get), or its error."""

    output: str | None = None
    error: str | None = None
    truncated: bool = False


@dataclass
class DestinationResult:
    """What one destination would be given; ``filtered``: its rules turned the message away."""

    name: str
    type: str
    enabled: bool
    filters: list[FilterResult]
    filtered: bool = False
    output: str | None = None
    error: str | None = None
    truncated: bool = False


@dataclass
class BenchResult:
    """The whole dry run, step by step."""

    read: ReadResult
    filters: list[FilterResult]
    filtered: bool = False
    transform: TransformResult = field(default_factory=TransformResult)
    destinations: list[DestinationResult] = field(default_factory=list)


# -- templates ------------------------------------------------------------------------------


class _OverrideLoader(BaseLoader):
    """Templates given as text; the template name doubles as file name for error lines."""

    def __init__(self, templates: Mapping[str, str]) -> None:
        self._templates = dict(templates)

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Any]:
        if template not in self._templates:
            raise TemplateNotFound(template)
        # A filename (not None) makes Jinja name it in tracebacks: errors get their line.
        return self._templates[template], template, lambda: True


class _BenchTemplates(TemplateEnvironment):
    """The hub's sandbox and helpers; templates looked up in ``overrides`` first."""

    def __init__(self, transforms_dir: Path, uid_root: str, overrides: Mapping[str, str]) -> None:
        super().__init__(transforms_dir, uid_root)
        disk = FileSystemLoader(str(transforms_dir), encoding="utf-8")
        self._loader = ChoiceLoader([_OverrideLoader(overrides), disk])  # type: ignore[assignment]


def check_template_name(name: str) -> str:
    """``name`` if it is a template path inside the transforms folder; else ConfigError."""
    parts = Path(name).parts
    if (
        not name.endswith(TEMPLATE_SUFFIX)
        or "\\" in name
        or Path(name).is_absolute()
        or any(part in ("..", ".") or part.startswith(".") for part in parts)
    ):
        raise ConfigError(f"not a template name: {name!r}")
    return name


def list_templates(transforms_dir: Path) -> list[str]:
    """The ``*.j2`` templates of the transforms folder (subfolders too), by name."""
    if not transforms_dir.is_dir():
        return []
    names = (p.relative_to(transforms_dir).as_posix() for p in transforms_dir.rglob("*.j2"))
    return sorted(n for n in names if not any(part.startswith(".") for part in n.split("/")))


def read_template(transforms_dir: Path, name: str) -> str | None:
    """The text of template ``name`` (None if there is none); ConfigError for a bad name."""
    root = transforms_dir.resolve()
    path = (root / check_template_name(name)).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None  # a symlink out of the folder is as good as absent
    return path.read_text(encoding="utf-8")


# -- channel files ------------------------------------------------------------------------


def load_channel_text(text: str, file_name: str) -> Channel:
    """Validate channel-file text as file ``file_name`` (the channel's file or a new one).

    Raises :class:`ChannelValidationError` with every error found, each naming the file
    (never a server path), its line and field.
    """
    channel, errors = check_channel_text(text, Path(Path(file_name).name or "channel.yaml"))
    if channel is None:
        raise ChannelValidationError(errors)
    return channel


# -- the bench ----------------------------------------------------------------------------


class TestBench:
    """One channel, ready to dry-run messages (build it in a worker thread: it compiles)."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        channel: Channel,
        services: Services,
        *,
        text: str,
        templates: Mapping[str, str] | None = None,
    ) -> None:
        """``text`` is the channel file's text (its lines locate filter syntax errors)."""
        data_type = channel.file.inbound.data_type
        if data_type not in SIDE_EFFECT_FREE:
            raise BenchRefusedError(
                f"the test bench cannot run channels of data type {data_type}: reading their "
                "messages reads image files and writes copies (it runs "
                f"{', '.join(SIDE_EFFECT_FREE)} channels)"
            )
        settings = services.settings
        env = _BenchTemplates(
            settings.resolved_transforms_dir(), settings.uid_root, templates or {}
        )
        _check_filters(channel, env, text)
        self.channel = channel
        self._datatype: DataType = datatype_for(channel, services)
        self._steps = ChannelSteps(channel, env, include_disabled=True)

    def message_bytes(self, text: str) -> bytes:
        """Pasted text as the bytes a sender would send (HL7: in its MSH-18 charset)."""
        return as_sent(text, self.channel)

    def run(self, raw: bytes) -> BenchResult:
        """Dry-run one message through every step."""
        read, message = self._read(raw)
        result = BenchResult(read, _not_reached(self._steps.filters))
        result.destinations = self._unreached_destinations()
        if message is None:
            return result
        context = message.context
        result.filters, passed = _evaluate(self._steps.filters, context)
        if not passed:
            result.filtered = not any(f.error for f in result.filters)
            return result
        try:
            payloads, transformed = self._steps.transform(self._datatype, message)
        except EngineError as exc:
            result.transform = TransformResult(error=str(exc))
            return result
        output, cut = _clip(transformed if transformed is not None else "\n".join(payloads))
        result.transform = TransformResult(output=output, truncated=cut)
        result.destinations = [
            self._destination(i, context, payloads) for i in range(len(result.destinations))
        ]
        return result

    def _read(self, raw: bytes) -> tuple[ReadResult, ReadMessage | None]:
        try:
            message = self._datatype.read(raw, _ORIGIN)
        except MessageError as exc:
            return ReadResult(error=exc.reason), None
        message_type = message.record.message_type
        try:
            self._datatype.check_accepted(message)
        except MessageError as exc:
            return ReadResult(error=exc.reason, message_type=message_type), None
        return ReadResult(ok=True, message_type=message_type), message

    def _unreached_destinations(self) -> list[DestinationResult]:
        return [
            DestinationResult(
                name=step.name,
                type=spec.spec.type,
                enabled=spec.spec.enabled,
                filters=_not_reached(step.filters),
            )
            for step, spec in zip(self._steps.destinations, self.channel.destinations, strict=True)
        ]

    def _destination(
        self, index: int, context: dict[str, Any], payloads: list[str]
    ) -> DestinationResult:
        step = self._steps.destinations[index]
        spec = self.channel.destinations[index].spec
        filters, passed = _evaluate(step.filters, context)
        result = DestinationResult(step.name, spec.type, spec.enabled, filters)
        if not passed:
            result.filtered = not any(f.error for f in filters)
            return result
        try:
            outputs = step.outputs(context, payloads)
        except EngineError as exc:
            result.error = str(exc)
            return result
        result.output, result.truncated = _clip("\n".join(outputs))
        return result


def _not_reached(filters: list[CompiledFilter]) -> list[FilterResult]:
    return [FilterResult(f.name) for f in filters]


def _evaluate(
    filters: list[CompiledFilter], context: dict[str, Any]
) -> tuple[list[FilterResult], bool]:
    """Each rule in order, as the hub does: the first that fails (or errs) stops the rest."""
    results = _not_reached(filters)
    for compiled, result in zip(filters, results, strict=True):
        try:
            result.passed = compiled.passes(context)
        except EngineError as exc:
            result.error = str(exc)
            return results, False
        if not result.passed:
            return results, False
    return results, True


def _clip(text: str) -> tuple[str, bool]:
    if len(text) <= OUTPUT_LIMIT:
        return text, False
    return text[:OUTPUT_LIMIT], True


def _check_filters(channel: Channel, env: TemplateEnvironment, text: str) -> None:
    """A filter expression that does not compile is a channel file error, with its line."""
    rules: list[tuple[tuple[str | int, ...], FilterRule]] = [
        (("filters", i, "when"), rule) for i, rule in enumerate(channel.file.filters)
    ]
    for d, destination in enumerate(channel.destinations):
        for i, rule in enumerate(destination.spec.filters):
            rules.append((("destinations", d, "filters", i, "when"), rule))
    for where, rule in rules:
        try:
            env.compile_expression(rule.when)
        except ConfigError as exc:
            file_name = channel.path.name
            line = load_located(text, file_name).line_of(where)
            dotted = ".".join(str(part) for part in where)
            error = ChannelFileError(file_name, line, dotted, str(exc))
            raise ChannelValidationError([error]) from exc


def as_sent(text: str, channel: Channel) -> bytes:
    """Message text (pasted, or a stored message's decoded raw) as its sender's bytes.

    HL7 is encoded in the charset its MSH-18 declares, so the channel reads it
    exactly as it read the original; other content is UTF-8.
    """
    if channel.file.inbound.data_type != "hl7v2":
        return text.encode("utf-8")
    # Separators (CR, LF, CRLF) are normalized by the HL7 reader itself.
    header = best_effort_header(text.encode("utf-8", errors="replace"))
    return encode(text, header, channel.file.inbound.default_charset)
