"""Settings of the alert checks and of the notifiers they send to (hub settings ``alerts:``).

Alerts never carry PHI: channel and destination names, counts and ages only.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from connectors.http_common import HttpTarget, TlsVerify

__all__ = ["AlertSettings", "EmailNotifier", "LogNotifier", "NotifierConfig", "WebhookNotifier"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Named(_Strict):
    name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$",
        description="tells two notifiers of the same type apart (default: the type)",
    )
    type: str

    @property
    def key(self) -> str:
        """What delivery bookkeeping calls this notifier: its name, else its type."""
        return self.name or self.type


class LogNotifier(_Named):
    """Writes each alert to the hub's log (WARNING); always works."""

    type: Literal["log"] = "log"


class WebhookNotifier(HttpTarget):
    """POSTs the alerts as JSON (``{"source": "meridian", "alerts": [...]}``) to ``url``."""

    type: Literal["webhook"]
    name: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    timeout_seconds: float = Field(default=10, gt=0, description="the whole request")

    @property
    def key(self) -> str:
        """What delivery bookkeeping calls this notifier: its name, else its type."""
        return self.name or self.type


class EmailNotifier(_Named):
    """Sends one e-mail per check that raised alerts, through an SMTP server."""

    type: Literal["email"]
    host: str = Field(min_length=1, description="SMTP server")
    port: int = Field(default=25, ge=1, le=65535)
    starttls: bool = Field(default=False, description="upgrade the connection with STARTTLS")
    verify_tls: TlsVerify = Field(
        default=True, description="verify the server certificate; a path names a CA bundle"
    )
    username: str | None = Field(default=None, description="log in (after STARTTLS) when set")
    password: SecretStr | None = None
    sender: str = Field(min_length=3, description="From: address")
    recipients: list[str] = Field(min_length=1, description="To: addresses")
    subject_prefix: str = "[Meridian]"
    timeout_seconds: float = Field(default=30, gt=0)

    @model_validator(mode="after")
    def _login_needs_password(self) -> EmailNotifier:
        if self.username is not None and self.password is None:
            raise ValueError("username needs a password")
        return self


NotifierConfig = Annotated[
    LogNotifier | WebhookNotifier | EmailNotifier, Field(discriminator="type")
]


def _log_only() -> list[NotifierConfig]:
    return [LogNotifier()]


class AlertSettings(_Strict):
    """When the hub raises alerts and whom it tells."""

    check_every_minutes: float = Field(default=1, gt=0, description="how often the rules run")
    errors: bool = Field(
        default=True,
        description="alert when messages or deliveries went to ERROR since the last check",
    )
    queue_age_minutes: float | None = Field(
        default=30,
        gt=0,
        description="alert when a destination's oldest QUEUED entry is older; None: no check",
    )
    rearm_minutes: float | None = Field(
        default=60,
        gt=0,
        description="a condition still present is notified again after this; None: once until "
        "it clears",
    )
    lookback_hours: float = Field(
        default=24, gt=0, description="alerts older than this are no longer (re)tried"
    )
    notifiers: list[NotifierConfig] = Field(
        default_factory=_log_only,
        description="where alerts go: log, webhook, email",
    )

    @model_validator(mode="after")
    def _unique_keys(self) -> AlertSettings:
        keys = [n.key for n in self.notifiers]
        if len(keys) != len(set(keys)):
            raise ValueError("two notifiers of one type need different names")
        return self
