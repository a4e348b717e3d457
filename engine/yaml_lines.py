"""YAML loading that remembers where each value was written.

Validation errors name a field path such as ``destinations.0.port``; to point
an analyst at the right line of the channel file we keep, for every path, the
line its value starts on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from engine.errors import ChannelFileError

__all__ = ["LocatedYAML", "load_located"]

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class LocatedYAML:
    """A parsed YAML document and the 1-based line of every value in it."""

    data: Any
    lines: dict[Path, int]

    def line_of(self, path: Path) -> int | None:
        """Line of the deepest known prefix of ``path`` (pydantic's ``loc``)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


def load_located(text: str, filename: str) -> LocatedYAML:
    """Parse ``text``; a YAML syntax error becomes a ChannelFileError with its line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ChannelFileError(filename, line, "(yaml)", str(exc.problem)) from exc
    except yaml.YAMLError as exc:
        raise ChannelFileError(filename, None, "(yaml)", str(exc)) from exc
    lines: dict[Path, int] = {}
    if node is not None:
        _collect(node, (), lines)
    return LocatedYAML(data=data, lines=lines)


def _collect(node: yaml.Node, path: Path, lines: dict[Path, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            # The key's own line is where an analyst looks for a bad field.
            lines[(*path, key)] = key_node.start_mark.line + 1
            _collect_value(value_node, (*path, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect(item, (*path, index), lines)


def _collect_value(node: yaml.Node, path: Path, lines: dict[Path, int]) -> None:
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        key_line = lines[path]
        _collect(node, path, lines)
        lines[path] = key_line
