"""What the HTTP destinations share: where the service is, how to authenticate, the client."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Literal

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

__all__ = [
    "BasicAuth",
    "BearerAuth",
    "HttpAuth",
    "HttpTarget",
    "HttpUrl",
    "NoAuth",
    "TlsVerify",
    "async_client",
]


class NoAuth(BaseModel):
    """No authentication."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["none"] = "none"


class BasicAuth(BaseModel):
    """HTTP basic authentication."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["basic"]
    username: str = Field(min_length=1)
    password: SecretStr


class BearerAuth(BaseModel):
    """A bearer token (``Authorization: Bearer ...``)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["bearer"]
    token: SecretStr


HttpAuth = Annotated[NoAuth | BasicAuth | BearerAuth, Field(discriminator="type")]


def _http_url(value: str) -> str:
    url = httpx.URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("an http:// or https:// URL with a host")
    return value.rstrip("/")


def _ca_bundle_exists(value: bool | Path) -> bool | Path:
    if isinstance(value, Path) and not value.is_file():
        raise ValueError(f"CA bundle {value} is not a file")
    return value


#: An http(s) URL with a host, trailing slash removed.
HttpUrl = Annotated[str, AfterValidator(_http_url)]
#: Verify the server certificate (True), don't (False), or against this CA bundle.
TlsVerify = Annotated[bool | Path, AfterValidator(_ca_bundle_exists)]


class HttpTarget(BaseModel):
    """The connection fields of an HTTP destination's config (secrets never shown)."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(description="the service root (http:// or https://)")
    auth: HttpAuth = Field(default_factory=NoAuth)
    timeout_seconds: float = Field(default=120, gt=0, description="the whole request")
    verify_tls: TlsVerify = Field(
        default=True, description="verify the server certificate; a path names a CA bundle"
    )


def async_client(target: HttpTarget) -> httpx.AsyncClient:
    """A client for ``target``: its TLS verification, timeout and authentication."""
    verify: bool | ssl.SSLContext = (
        ssl.create_default_context(cafile=str(target.verify_tls))
        if isinstance(target.verify_tls, Path)
        else target.verify_tls
    )
    auth = target.auth
    basic = (
        httpx.BasicAuth(auth.username, auth.password.get_secret_value())
        if isinstance(auth, BasicAuth)
        else None
    )
    headers = (
        {"Authorization": f"Bearer {auth.token.get_secret_value()}"}
        if isinstance(auth, BearerAuth)
        else {}
    )
    timeout = httpx.Timeout(target.timeout_seconds)
    return httpx.AsyncClient(auth=basic, headers=headers, verify=verify, timeout=timeout)
