"""The contract between the generic pipeline and a channel's data type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from connectors.base import Origin
from engine.states import MessageStatus
from engine.store.messages import InboundRecord

__all__ = ["DataType", "Outcome", "ReadMessage", "Reply"]

Outcome = Literal["accepted", "error", "rejected"]


@dataclass(frozen=True, slots=True)
class Reply:
    """What to store as the message's response and what to send back (None: nothing)."""

    text: str | None
    data: bytes | None


@dataclass(slots=True)
class ReadMessage:
    """A message its data type could read.

    ``record`` carries the identifiers the store indexes; ``context`` is what
    filters and templates see; ``payload`` is the message as text, which goes to
    the destinations when the channel has no transform; ``native`` is the data
    type's own parsed form (used to build the reply).
    """

    record: InboundRecord
    context: dict[str, Any]
    payload: str
    native: Any = None
    extras: dict[str, Any] = field(default_factory=dict)


class DataType(Protocol):
    """Reads inbound bytes and builds replies for one kind of content."""

    def read(self, raw: bytes, origin: Origin) -> ReadMessage:
        """Decode and parse ``raw``; raises MessageError with a reason for the sender."""

    def check_accepted(self, message: ReadMessage) -> None:
        """Raise RejectedError if the channel does not take this kind of message."""

    def builtin_transform(self, message: ReadMessage) -> list[str] | None:
        """The data type's own transform step (None: none; the channel's template may run)."""

    def reply(
        self,
        message: ReadMessage | None,
        raw: bytes,
        outcome: Outcome,
        reason: str | None,
        error_code: str | None,
    ) -> Reply:
        """The answer for ``outcome`` (message is None when ``raw`` could not be read)."""

    def unreadable(self, raw: bytes, origin: Origin) -> InboundRecord:
        """A record of what could not be read, with whatever identifiers can be salvaged."""

    def replay(self, stored_response: str | None, message: ReadMessage | None) -> bytes | None:
        """The stored first answer to a duplicate, encoded for sending again."""


class SilentDataType:
    """The parts shared by data types whose sender needs no answer (another channel,
    the study assembler, the MPPS SCP that already answered its modality).

    Subclasses set :attr:`message_type` and ``self._channel`` and implement ``read``.
    """

    message_type = "?"
    _channel: str

    def check_accepted(self, message: ReadMessage) -> None:
        """Every message that could be read is taken."""

    def builtin_transform(self, message: ReadMessage) -> list[str] | None:
        """None: the channel's own transform (if any) does the work."""
        return None

    def reply(
        self,
        message: ReadMessage | None,
        raw: bytes,
        outcome: Outcome,
        reason: str | None,
        error_code: str | None,
    ) -> Reply:
        """Nothing to answer: the outcome is in the store."""
        return Reply(None, None)

    def unreadable(self, raw: bytes, origin: Origin) -> InboundRecord:
        """What we keep of a message that could not be read."""
        return InboundRecord(
            channel=self._channel,
            origin=origin.peer,
            raw=raw.decode("utf-8", errors="replace"),
            status=MessageStatus.RECEIVED,
            message_type=self.message_type,
        )

    def replay(self, stored_response: str | None, message: ReadMessage | None) -> bytes | None:
        """Nothing to answer again."""
        return None
