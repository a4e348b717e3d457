"""Load and validate channel files; errors name the file, the line and the field."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from engine import registry
from engine.config import Channel, ChannelDestination, ChannelFile, DestinationFile
from engine.errors import ChannelFileError, ConfigError
from engine.yaml_lines import LocatedYAML, load_located

__all__ = ["channel_files", "load_channel", "load_channels"]

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
    located = load_located(path.read_text(encoding="utf-8"), str(path))
    if not isinstance(located.data, dict):
        raise ChannelFileError(str(path), 1, "(file)", "a channel file must be a YAML mapping")
    channel_file = _validate(ChannelFile, located.data, (), located, path)
    source = _validate_connector("source", channel_file.source, ("source",), located, path)
    destinations = [
        _destination(raw, index, located, path)
        for index, raw in enumerate(channel_file.destinations)
    ]
    _check_unique_destinations(destinations, located, path)
    return Channel(path=path, file=channel_file, source=source, destinations=destinations)


def _destination(
    raw: dict[str, Any], index: int, located: LocatedYAML, path: Path
) -> ChannelDestination:
    where = ("destinations", index)
    engine_part = {key: value for key, value in raw.items() if key in _DESTINATION_FIELDS}
    spec = _validate(DestinationFile, engine_part, where, located, path)
    connector_part = {
        key: value for key, value in raw.items() if key not in _DESTINATION_FIELDS or key == "type"
    }
    connector = _validate_connector("destination", connector_part, where, located, path)
    return ChannelDestination(spec=spec, connector=connector)


def _validate_connector(
    role: registry.Role,
    raw: dict[str, Any],
    where: tuple[str | int, ...],
    located: LocatedYAML,
    path: Path,
) -> BaseModel:
    try:
        config_cls = registry.config_class(role, raw.get("type"))
    except ConfigError as exc:
        field = (*where, "type")
        raise ChannelFileError(str(path), located.line_of(field), _dotted(field), str(exc)) from exc
    return _validate(config_cls, raw, where, located, path)


def _validate(
    model: type[M],
    raw: Any,
    where: tuple[str | int, ...],
    located: LocatedYAML,
    path: Path,
) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = (*where, *first["loc"])
        raise ChannelFileError(
            str(path), located.line_of(field), _dotted(field), first["msg"]
        ) from exc


def _check_unique_destinations(
    destinations: Sequence[ChannelDestination], located: LocatedYAML, path: Path
) -> None:
    names: set[str] = set()
    for index, destination in enumerate(destinations):
        if destination.spec.name in names:
            field = ("destinations", index, "name")
            raise ChannelFileError(
                str(path),
                located.line_of(field),
                _dotted(field),
                "destination names must be unique",
            )
        names.add(destination.spec.name)


def _dotted(field: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in field) or "(file)"
