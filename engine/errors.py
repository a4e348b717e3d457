"""The one error hierarchy of Meridian.

Every exception the engine or a connector raises on purpose derives from
:class:`EngineError`. Library exceptions are converted where they enter
(``raise Mapped(...) from exc``) so callers only ever catch these.
"""

from __future__ import annotations

__all__ = [
    "ChannelFileError",
    "ConfigError",
    "ConnectorError",
    "DecodeError",
    "EngineError",
    "FilterError",
    "IllegalTransition",
    "MessageError",
    "ParseError",
    "PermanentError",
    "RecoverableError",
    "RejectedError",
    "StoreError",
    "TransformError",
]


class EngineError(Exception):
    """Base of every error Meridian raises on purpose."""


class ConfigError(EngineError):
    """A configuration (channel file, template, settings) is invalid."""


class ChannelFileError(ConfigError):
    """A channel file is invalid; names the file, the line and the field."""

    def __init__(self, path: str, line: int | None, field: str, reason: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {field}: {reason}")


class ConnectorError(EngineError):
    """A connector failed to talk to its peer."""


class RecoverableError(ConnectorError):
    """The peer is down or busy: queue the message and retry later."""


class PermanentError(ConnectorError):
    """The peer refused the message: retrying will not help."""


class MessageError(EngineError):
    """An inbound message cannot be accepted. ``reason`` is safe to send back to the sender."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class DecodeError(MessageError):
    """The bytes cannot be decoded in the declared or default character set."""


class ParseError(MessageError):
    """The content is not a well-formed message of the channel's data type."""


class RejectedError(MessageError):
    """The message is well formed but this channel does not accept it (type, version...)."""


class FilterError(EngineError):
    """A filter expression failed to evaluate."""


class TransformError(EngineError):
    """A transform failed: template error, or its output did not validate."""


class IllegalTransition(EngineError):  # noqa: N818 - the agreed name
    """A message was moved between two states the state machine does not connect."""


class StoreError(EngineError):
    """The message store could not commit or read."""
