"""Load and validate channel files; errors name the file, the line and the field."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from engine import registry
from engine.config import Channel, ChannelDestination, ChannelFile, DestinationFile
from engine.errors import ChannelFileError, ConfigError
from engine.yaml_lines import LocatedYAML, load_located

__all__ = [
    "channel_files",
    "check_channel_text",
    "load_channel",
    "load_channel_text",
    "load_channels",
]

M = TypeVar("M", bound=BaseModel)

_DESTINATION_FIELDS = set(DestinationFile.model_fields)


def channel_files(directory: Path) -> list[Path]:
    """The channel files of a folder, in name order (``*.yaml`` and ``*.yml``)."""
    if not directory.is_dir():
        raise ConfigError(f"channels folder not found: {directory}")
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])


def load_channels(directory: Path) -> list[Channel]:
    """Load every channel of a folder; the first bad file raises, unique names enforced."""
    channels: list[Channel] = []
    seen: dict[str, Path] = {}
    for path in channel_files(directory):
        channel = load_channel(path)
        if channel.name in seen:
            raise ChannelFileError(
                str(path),
                1,
                "name",
                f"channel '{channel.name}' is also defined in {seen[channel.name]}",
            )
        seen[channel.name] = path
        channels.append(channel)
    return channels


def load_channel(path: Path) -> Channel:
    """Load one channel file, validating the channel and each connector's config."""
    return load_channel_text(path.read_text(encoding="utf-8"), path)


def load_channel_text(text: str, path: Path) -> Channel:
    """Validate ``text`` as the content of channel file ``path``; the first error raises."""
    channel, errors = check_channel_text(text, path)
    if errors:
        raise errors[0]
    assert channel is not None  # no errors: a channel was built
    return channel


def check_channel_text(text: str, path: Path) -> tuple[Channel | None, list[ChannelFileError]]:
    """Validate ``text`` as channel file ``path``: the channel, or every error found.

    The first error is the one :func:`load_channel` raises; the others are found in
    the same pass (each field of the channel, the source, every destination), so an
    editor can show them all at once.
    """
    try:
        located = load_located(text, str(path))
    except ChannelFileError as exc:
        return None, [exc]
    if not isinstance(located.data, dict):
        return None, [
            ChannelFileError(str(path), 1, "(file)", "a channel file must be a YAML mapping")
        ]
    check = _Checker(located, path)
    channel_file = check.model(ChannelFile, located.data, ())
    raw_source = located.data.get("source")
    source = (
        check.connector("source", raw_source, ("source",)) if isinstance(raw_source, dict) else None
    )
    raw_destinations = located.data.get("destinations")
    destinations = [
        check.destination(raw, index)
        for index, raw in enumerate(raw_destinations if isinstance(raw_destinations, list) else [])
        if isinstance(raw, dict)
    ]
    if check.errors or channel_file is None or source is None:
        return None, check.errors
    valid = [d for d in destinations if d is not None]
    check.unique_destinations(valid)
    if check.errors:
        return None, check.errors
    return Channel(path=path, file=channel_file, source=source, destinations=valid), []


class _Checker:
    """Validates the parts of one channel file, collecting every error with its line."""

    def __init__(self, located: LocatedYAML, path: Path) -> None:
        self.located = located
        self.path = path
        self.errors: list[ChannelFileError] = []

    def error(self, field: tuple[str | int, ...], reason: str) -> None:
        self.errors.append(
            ChannelFileError(str(self.path), self.located.line_of(field), _dotted(field), reason)
        )

    def model(self, model: type[M], raw: Any, where: tuple[str | int, ...]) -> M | None:
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            for problem in exc.errors():
                reason = problem["msg"]
                if problem["type"] == "extra_forbidden":
                    reason = _unknown_field(model, str(problem["loc"][-1]))
                self.error((*where, *problem["loc"]), reason)
            return None

    def connector(
        self, role: registry.Role, raw: dict[str, Any], where: tuple[str | int, ...]
    ) -> BaseModel | None:
        try:
            config_cls = registry.config_class(role, raw.get("type"))
        except ConfigError as exc:
            self.error((*where, "type"), str(exc))
            return None
        return self.model(config_cls, raw, where)

    def destination(self, raw: dict[str, Any], index: int) -> ChannelDestination | None:
        where = ("destinations", index)
        engine_part = {key: value for key, value in raw.items() if key in _DESTINATION_FIELDS}
        spec = self.model(DestinationFile, engine_part, where)
        connector_part = {
            key: value
            for key, value in raw.items()
            if key not in _DESTINATION_FIELDS or key == "type"
        }
        connector = self.connector("destination", connector_part, where)
        if spec is None or connector is None:
            return None
        return ChannelDestination(spec=spec, connector=connector)

    def unique_destinations(self, destinations: Sequence[ChannelDestination]) -> None:
        names: set[str] = set()
        for index, destination in enumerate(destinations):
            if destination.spec.name in names:
                self.error(("destinations", index, "name"), "destination names must be unique")
            names.add(destination.spec.name)


def _dotted(field: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in field) or "(file)"


def _unknown_field(model: type[BaseModel], name: str) -> str:
    """'unknown field', with the closest real field name: typos are the usual cause."""
    close = difflib.get_close_matches(name, sorted(_field_names(model)), n=1, cutoff=0.7)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown field '{name}'{hint}"


def _field_names(model: type[BaseModel], seen: frozenset[type] = frozenset()) -> set[str]:
    """Every field name of ``model`` and of the models nested in it."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(field.alias or name)
        for nested in _models_in(field.annotation):
            if nested not in seen:
                names |= _field_names(nested, seen | {model})
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]

