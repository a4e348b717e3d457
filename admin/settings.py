"""Settings of the admin API: where it listens and how its sessions behave."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from connectors.allowlist import AllowedNetworks

__all__ = ["AdminSettings", "TLSConfig"]


class TLSConfig(BaseModel):
    """Certificate and key for serving HTTPS directly (uvicorn ``ssl_certfile``/``ssl_keyfile``)."""

    model_config = ConfigDict(extra="forbid")

    certfile: Path
    keyfile: Path


class AdminSettings(BaseModel):
    """The ``admin:`` block of the hub settings."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="listen address (loopback by default)")
    port: int = Field(default=8080, ge=0, le=65535, description="0: any free port (tests)")
    secure_cookies: bool = Field(
        default=False,
        description="mark the session cookie Secure; set true whenever the API is served over "
        "TLS (directly via `tls` or behind a TLS-terminating proxy)",
    )
    session_minutes: int = Field(default=480, ge=1, le=7 * 24 * 60)
    metrics_require_login: bool = Field(
        default=False, description="require a session for /metrics (Prometheus scrapes without)"
    )
    tls: TLSConfig | None = None
    allowed_networks: AllowedNetworks = None
    report_channel: str = Field(
        default="results-to-ehr",
        min_length=1,
        description="the channel (data type report) POST /api/reports hands reports to",
    )
