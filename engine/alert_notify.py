"""Notifiers: where alerts go (log, webhook, e-mail).

Each notifier sends a batch of alerts (every alert it has not sent yet) at
once: one webhook POST or one e-mail per check, not one per alert. A notifier
that fails raises :class:`NotifyError`; the caller keeps the alerts unsent
and tries again at the next check. Alerts hold no PHI, so they may be logged
and sent as they are; a failure is logged by type, never with the server's
reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

import httpx

from connectors.http_common import async_client
from engine.alert_config import EmailNotifier, LogNotifier, NotifierConfig, WebhookNotifier
from engine.errors import EngineError

__all__ = ["AlertPayload", "Notifier", "NotifyError", "build_notifier"]

log = logging.getLogger(__name__)


class NotifyError(EngineError):
    """A notifier could not send; the alerts stay pending."""


@dataclass(frozen=True)
class AlertPayload:
    """What a notifier is told about one alert: no patient data, ever."""

    id: int
    at: datetime
    kind: str
    severity: str
    message: str
    channel: str | None = None
    destination: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The JSON object a webhook receives for this alert."""
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "channel": self.channel,
            "destination": self.destination,
            "detail": self.detail,
        }


class Notifier(Protocol):
    """Sends a batch of alerts or raises NotifyError."""

    key: str

    async def send(self, alerts: Sequence[AlertPayload]) -> None:
        """Deliver ``alerts``; raise NotifyError if that failed."""


class _LogSender:
    def __init__(self, config: LogNotifier) -> None:
        self.key = config.key

    async def send(self, alerts: Sequence[AlertPayload]) -> None:
        for alert in alerts:
            log.warning("alert %d [%s/%s] %s", alert.id, alert.kind, alert.severity, alert.message)


class _WebhookSender:
    def __init__(self, config: WebhookNotifier) -> None:
        self.key = config.key
        self._config = config

    async def send(self, alerts: Sequence[AlertPayload]) -> None:
        body = {"source": "meridian", "alerts": [a.as_json() for a in alerts]}
        try:
            async with async_client(self._config) as client:
                response = await client.post(self._config.url, json=body)
        except httpx.HTTPError as exc:
            raise NotifyError(f"webhook {self.key}: {type(exc).__name__}") from exc
        if response.status_code >= 300:
            raise NotifyError(f"webhook {self.key}: HTTP {response.status_code}")


class _EmailSender:
    def __init__(self, config: EmailNotifier) -> None:
        self.key = config.key
        self._config = config

    async def send(self, alerts: Sequence[AlertPayload]) -> None:
        message = _email(self._config, alerts)
        try:
            await asyncio.to_thread(self._deliver, message)
        except (OSError, smtplib.SMTPException) as exc:
            raise NotifyError(f"email {self.key}: {type(exc).__name__}") from exc

    def _deliver(self, message: EmailMessage) -> None:
        config = self._config
        with smtplib.SMTP(config.host, config.port, timeout=config.timeout_seconds) as smtp:
            if config.starttls:
                smtp.starttls(context=_tls_context(config.verify_tls))
            if config.username is not None and config.password is not None:
                smtp.login(config.username, config.password.get_secret_value())
            smtp.send_message(message)


def _tls_context(verify: bool | Path) -> ssl.SSLContext:
    if isinstance(verify, Path):
        return ssl.create_default_context(cafile=str(verify))
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _email(config: EmailNotifier, alerts: Sequence[AlertPayload]) -> EmailMessage:
    worst = "error" if any(a.severity == "error" for a in alerts) else "warning"
    message = EmailMessage()
    message["Subject"] = f"{config.subject_prefix} {len(alerts)} alert(s), {worst}"
    message["From"] = config.sender
    message["To"] = ", ".join(config.recipients)
    lines = [f"{a.at:%Y-%m-%d %H:%M:%S} UTC  {a.severity.upper()}  {a.message}" for a in alerts]
    facts = json.dumps([a.as_json() for a in alerts], indent=2)
    message.set_content("\n".join(lines) + "\n\nDetails:\n" + facts + "\n")
    return message


def build_notifier(config: NotifierConfig) -> Notifier:
    """The sender of one configured notifier."""
    if isinstance(config, WebhookNotifier):
        return _WebhookSender(config)
    if isinstance(config, EmailNotifier):
        return _EmailSender(config)
    return _LogSender(config)
