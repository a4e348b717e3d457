"""TLS settings shared by the hub's listeners and clients (MLLP, DICOM).

One YAML shape everywhere: a listener's ``tls: {certfile, keyfile, cafile?,
require_client_cert}`` (:class:`ServerTLSConfig`), a client's ``tls: {cafile?,
certfile?, keyfile?, verify, server_hostname?}`` (:class:`ClientTLSConfig`).
Both build a :class:`ssl.SSLContext`; a file that cannot be loaded is a
:class:`~engine.errors.ConfigError` naming the connector, raised at start.
"""

from __future__ import annotations

import ssl
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.errors import ConfigError

__all__ = ["ClientTLSConfig", "ServerTLSConfig", "client_ssl_context", "server_ssl_context"]


class ServerTLSConfig(BaseModel):
    """Server TLS: our certificate and key; a CA bundle to verify client certificates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    certfile: str
    keyfile: str
    cafile: str | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _client_certs_need_a_ca(self) -> Self:
        if self.require_client_cert and not self.cafile:
            raise ValueError("require_client_cert needs cafile to verify client certificates")
        return self


class ClientTLSConfig(BaseModel):
    """Client TLS: whom to trust, and our certificate when the server asks for one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cafile: str | None = Field(default=None, description="CA bundle; default: the system store")
    certfile: str | None = Field(default=None, description="our certificate (mutual TLS)")
    keyfile: str | None = None
    verify: bool = Field(default=True, description="false only for test setups")
    server_hostname: str | None = Field(
        default=None, description="the name the certificate must carry; default: host"
    )

    @model_validator(mode="after")
    def _key_needs_certificate(self) -> Self:
        if self.keyfile and not self.certfile:
            raise ValueError("keyfile needs certfile")
        return self


def server_ssl_context(tls: ServerTLSConfig, what: str) -> ssl.SSLContext:
    """A server context for ``tls``; ``what`` names the listener in errors ("MLLP")."""
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.cafile)
        context.load_cert_chain(tls.certfile, tls.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what} TLS certificate or key cannot be loaded: {exc}") from exc
    if tls.require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.cafile:
        context.verify_mode = ssl.CERT_OPTIONAL  # verify a certificate when one is offered
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_ssl_context(tls: ClientTLSConfig, what: str) -> ssl.SSLContext:
    """A client context for ``tls``: verifies the server unless ``verify`` is false."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.cafile)
        if tls.certfile:
            context.load_cert_chain(tls.certfile, tls.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what} client TLS files cannot be loaded: {exc}") from exc
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
