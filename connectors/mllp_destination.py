"""MLLP destination: send one HL7 v2 message to a receiver (an EHR) and act on its ACK.

A channel file configures it as::

    destinations:
      - name: ehr
        type: mllp
        host: ehr-interfaces.hospital.org
        port: 2575
        timeout_seconds: 30
        transform: { template: report_to_oru.j2, output: hl7 }

What the answer means for the queued message:

===========================================  =================================================
MSA-1 AA / CA                                 sent; the ACK is kept as the response
MSA-1 AE / AR / CE / CR                       :class:`PermanentError` with MSA-3 / ERR text:
                                              ERROR in the message browser, for an analyst
no ACK in ``timeout_seconds``, connection     :class:`RecoverableError`: the message stays
refused or closed                             queued and is retried
an ACK that does not parse, or whose MSA-2    :class:`RecoverableError`, and the connection
is not the MSH-10 we sent                     is dropped: that ACK cannot be trusted, and a
                                              late ACK must never be taken for the next one
===========================================  =================================================

The connection is persistent (:class:`~connectors.mllp_client.MLLPClient`): opened on
the first send, reopened after the peer closed it or an exchange failed. Message
content is never logged; log lines name the peer, the control ID and the ACK code.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.base import Delivery
from connectors.mllp_client import MLLPClient
from connectors.tls_config import ClientTLSConfig, client_ssl_context
from engine.errors import DecodeError, MessageError, PermanentError, RecoverableError
from engine.formats.hl7 import ACK_CODES, HL7Header, codec_for, decode, parse_header, unescape

__all__ = ["MLLPDestination", "MLLPDestinationConfig"]

logger = logging.getLogger(__name__)

_ACCEPTED = frozenset({"AA", "CA"})
_MAX_REASON = 500  # an analyst needs the gist; a peer may send a whole stack trace


class MLLPDestinationConfig(BaseModel):
    """Configuration of an ``mllp`` destination in a channel file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["mllp"]
    host: str = Field(min_length=1)
    port: int = Field(default=2575, ge=1, le=65535)
    timeout_seconds: float = Field(
        default=30, gt=0, description="connect, send and wait for the ACK, all together"
    )
    tls: ClientTLSConfig | None = None
    charset: str = Field(
        default="UNICODE UTF-8",
        description="HL7 charset of the bytes sent when the message's MSH-18 is empty",
    )
    max_response_bytes: int = Field(default=1_048_576, gt=0)

    @field_validator("charset")
    @classmethod
    def _known_charset(cls, value: str) -> str:
        try:
            codec_for(value)
        except DecodeError as exc:
            raise ValueError(exc.reason) from None
        return value


@dataclass(frozen=True, slots=True)
class _Outbound:
    control_id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class _Ack:
    code: str
    reason: str
    text: str


class MLLPDestination:
    """Sends HL7 v2 messages over one persistent MLLP connection (see the module doc)."""

    def __init__(self, config: MLLPDestinationConfig) -> None:
        self.config = config
        tls = config.tls
        context = client_ssl_context(tls, "MLLP") if tls is not None else None
        self._client = MLLPClient(
            config.host,
            config.port,
            ssl_context=context,
            server_hostname=tls.server_hostname if tls is not None else None,
            connect_timeout=config.timeout_seconds,
            max_message_bytes=config.max_response_bytes,
        )

    @property
    def address(self) -> str:
        """``host:port`` of the receiver (safe to log)."""
        return self._client.address

    async def send(self, payload: str) -> Delivery:
        """Send one ER7 message and return the receiver's positive ACK (see module doc)."""
        outbound = _outbound(payload, self.config.charset)
        response = await self._client.send(outbound.data, self.config.timeout_seconds)
        try:
            ack = _read_ack(response, outbound.control_id, self.config.charset)
        except RecoverableError as exc:
            await self._client.close()  # the next exchange starts on a clean connection
            logger.warning("MLLP %s: ACK for %s not trusted", self.address, outbound.control_id)
            raise RecoverableError(f"MLLP {self.address}: {exc}") from None
        logger.debug("MLLP %s: %s answered %s", self.address, outbound.control_id, ack.code)
        if ack.code in _ACCEPTED:
            return Delivery(response=ack.text, detail=f"{ack.code} from {self.address}")
        raise PermanentError(f"MLLP {self.address} answered {ack.code}: {ack.reason}")

    async def close(self) -> None:
        """Close the connection (the next send would open a new one)."""
        await self._client.close()


def _outbound(payload: str, default_charset: str) -> _Outbound:
    """The bytes to send. A payload that cannot be sent as it is will never be: permanent."""
    text = re.sub(r"\r\n|\n", "\r", payload)  # ER7 separates segments with CR only
    try:
        header = parse_header(text)
    except MessageError as exc:
        raise PermanentError(f"not an HL7 v2 message: {exc.reason}") from None
    if not header.control_id:
        raise PermanentError("MSH-10 (message control ID) is empty: no ACK could be matched")
    charset = header.charset.split(header.repetition_sep)[0].strip() or default_charset
    try:
        data = text.encode(codec_for(charset))
    except DecodeError:
        raise PermanentError("MSH-18 names a character set Meridian cannot encode") from None
    except UnicodeEncodeError as exc:
        # The offset, never the character: it may be part of a name.
        raise PermanentError(
            f"the message cannot be encoded in {charset}: unsupported character at "
            f"offset {exc.start}"
        ) from None
    return _Outbound(header.control_id, data)


def _read_ack(response: bytes, control_id: str, default_charset: str) -> _Ack:
    """Check the response is the ACK of the message we sent; RecoverableError if not."""
    try:
        text = decode(response, default_charset)
        header = parse_header(text)
    except MessageError as exc:
        raise RecoverableError(f"response is not an HL7 ACK ({exc.reason})") from None
    msa = _segment(text, "MSA", header)
    if msa is None:
        raise RecoverableError("response has no MSA segment")
    code = _component(msa, 1, header)
    if code not in ACK_CODES:
        raise RecoverableError("MSA-1 of the response is not an acknowledgement code")
    if _field(msa, 2).strip() != control_id:
        raise RecoverableError(f"MSA-2 of the response does not echo MSH-10 {control_id}")
    return _Ack(code, _reason(text, msa, header), text)


def _segment(text: str, name: str, header: HL7Header) -> list[str] | None:
    """The fields of the first ``name`` segment (``fields[n]`` is field n), or None."""
    for segment in text.split("\r"):
        fields = segment.split(header.field_sep)
        if fields[0] == name:
            return fields
    return None


def _field(fields: list[str], number: int) -> str:
    return fields[number] if number < len(fields) else ""


def _component(fields: list[str], number: int, header: HL7Header, component: int = 1) -> str:
    parts = _field(fields, number).split(header.repetition_sep)[0].split(header.component_sep)
    return parts[component - 1].strip() if component <= len(parts) else ""


def _reason(text: str, msa: list[str], header: HL7Header) -> str:
    """Why the peer refused: MSA-3, else ERR-8 (user message), ERR-3.2 (v2.5) or ERR-1 (v2.3)."""
    candidates = [_field(msa, 3)]
    err = _segment(text, "ERR", header)
    if err is not None:
        # v2.3 ERR-1 is an ELD whose 4th component is a CE in subcomponents: code&text&...
        eld_code = _component(err, 1, header, 4).split(header.subcomponent_sep)
        candidates += [
            _field(err, 8),
            _component(err, 3, header, 2),
            eld_code[1] if len(eld_code) > 1 else "",
        ]
    reason = next((value for value in candidates if value.strip()), "")
    if not reason:
        return "no reason given"
    readable = unescape(reason, header.encoding_chars, header.field_sep).strip()
    return readable if len(readable) <= _MAX_REASON else readable[:_MAX_REASON] + "..."
