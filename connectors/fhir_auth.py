"""SMART Backend Services authorization (SMART App Launch 2.x, "client-confidential-asymmetric").

The hub is a backend client: it proves who it is by signing a short JWT (the
*client assertion*) with its private key, trades it at the EHR's token
endpoint for an access token, and sends that token as ``Authorization:
Bearer``. :class:`SmartBackendAuth` is an :class:`httpx.Auth`, so it plugs
into any httpx client; it keeps the token between sends (so one
destination asks for a token once per lifetime, not once per message) and:

- fetches a token when it has none, or the one it has expires within
  ``min(30 s, lifetime / 2)`` (the request must not race the expiry);
- on a 401 to a request made with a *cached* token (revoked, server
  restarted) fetches a fresh one and retries that request once; a fresh
  token that is refused is a configuration problem, answered as it is.

Token endpoint failures: 429/5xx -> RecoverableError; any other refusal
(``invalid_client``: unknown key, wrong ``aud``...) -> PermanentError with
the OAuth ``error`` and ``error_description`` (cut to 200 characters).
Transport errors propagate as httpx exceptions for the caller to map.
The private key and the tokens are never logged or shown.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from engine.errors import ConfigError, PermanentError, RecoverableError

__all__ = ["ASSERTION_TYPE", "SmartBackendAuth", "SmartBackendConfig", "load_signing_key"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: SMART: the assertion's ``exp`` SHALL be no more than five minutes in the future.
ASSERTION_LIFETIME_SECONDS = 300
_REFRESH_MARGIN_SECONDS = 30.0
_DETAIL_LIMIT = 200

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class SmartBackendConfig(BaseModel):
    """``auth: {type: smart_backend, ...}``: the client registered with the EHR."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["smart_backend"]
    token_url: str = Field(description="the EHR's OAuth 2.0 token endpoint")
    client_id: str = Field(min_length=1)
    private_key_path: Path = Field(description="PEM private key (PKCS#8 or traditional)")
    private_key_passphrase: SecretStr | None = None
    key_id: str = Field(min_length=1, description="'kid' of the public key in the JWKS")
    algorithm: Literal["RS384", "ES384"] = "RS384"
    scope: str = Field(default="system/*.write", min_length=1)

    @field_validator("token_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("an http:// or https:// URL with a host")
        return value

    @field_validator("private_key_path")
    @classmethod
    def _key_exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"private key {value} is not a file")
        return value


def load_signing_key(config: SmartBackendConfig) -> SigningKey:
    """The private key, checked against the algorithm (ConfigError, never the key's bytes)."""
    passphrase = config.private_key_passphrase
    try:
        key = serialization.load_pem_private_key(
            config.private_key_path.read_bytes(),
            password=passphrase.get_secret_value().encode() if passphrase else None,
        )
    except (OSError, ValueError, TypeError) as exc:
        # The library's text may describe the key material: name the file only.
        raise ConfigError(
            f"cannot load the private key {config.private_key_path} ({type(exc).__name__})"
        ) from exc
    if config.algorithm == "RS384" and isinstance(key, rsa.RSAPrivateKey):
        return key
    if (
        config.algorithm == "ES384"
        and isinstance(key, ec.EllipticCurvePrivateKey)
        and isinstance(key.curve, ec.SECP384R1)
    ):
        return key
    expected = "an RSA key" if config.algorithm == "RS384" else "an EC P-384 key"
    raise ConfigError(f"{config.algorithm} needs {expected}: {config.private_key_path}")


@dataclass
class _Token:
    value: SecretStr
    refresh_at: float  # on the monotonic clock


class SmartBackendAuth(httpx.Auth):
    """Bearer tokens from a SMART Backend Services token endpoint (async clients only)."""

    def __init__(
        self, config: SmartBackendConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._key = load_signing_key(config)
        self._clock = clock
        self._token: _Token | None = None

    def client_assertion(self) -> str:
        """A freshly signed JWT naming this client, for the token endpoint only."""
        now = int(time.time())  # wall clock: the server compares it with its own
        claims = {
            "iss": self.config.client_id,
            "sub": self.config.client_id,
            "aud": self.config.token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECONDS,
            "jti": uuid.uuid4().hex,  # single use: the server may refuse replays
        }
        headers = {"kid": self.config.key_id, "typ": "JWT"}
        return jwt.encode(claims, self._key, algorithm=self.config.algorithm, headers=headers)

    def forget_token(self) -> None:
        """Drop the cached token; the next request fetches a new one."""
        self._token = None

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Token (cached or fetched), the request, and one retry with a fresh token on 401."""
        cached = self._cached()
        token = cached
        if token is None:
            token = await self._accept((yield self._token_request(request)))
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401 and cached is not None:
            self.forget_token()
            token = await self._accept((yield self._token_request(request)))
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """Not supported: the hub's destinations are async."""
        raise TypeError("SmartBackendAuth works with httpx.AsyncClient only")

    def _cached(self) -> str | None:
        if self._token is None or self._clock() >= self._token.refresh_at:
            return None
        return self._token.value.get_secret_value()

    def _token_request(self, request: httpx.Request) -> httpx.Request:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.client_assertion(),
            "scope": self.config.scope,
        }
        # A request built here has no timeout of its own: borrow the caller's.
        timeout = request.extensions.get("timeout")
        extensions = {"timeout": timeout} if timeout is not None else {}
        return httpx.Request(
            "POST",
            self.config.token_url,
            data=form,
            headers={"Accept": "application/json"},
            extensions=extensions,
        )

    async def _accept(self, response: httpx.Response) -> str:
        """The access token of a token response (cached), or the mapped error."""
        await response.aread()  # an overridden flow reads bodies itself
        body = _json(response)
        status = response.status_code
        if status >= 500 or status == 429:
            raise RecoverableError(f"SMART token request: HTTP {status}")
        if status != 200:
            raise PermanentError(f"SMART token request: HTTP {status}: {_oauth_error(body)}")
        value = body.get("access_token")
        kind = body.get("token_type")
        if not isinstance(value, str) or not value or str(kind).lower() != "bearer":
            raise PermanentError("SMART token request: the response has no bearer access_token")
        lifetime = body.get("expires_in")
        now = self._clock()
        if isinstance(lifetime, int | float) and not isinstance(lifetime, bool) and lifetime > 0:
            refresh_at = now + lifetime - min(_REFRESH_MARGIN_SECONDS, lifetime / 2)
        else:
            refresh_at = now  # no lifetime given: use it for this request only
        self._token = _Token(SecretStr(value), refresh_at)
        return value


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _oauth_error(body: dict[str, Any]) -> str:
    """``error: error_description`` of an OAuth error response (RFC 6749 5.2), cut short."""
    parts = [str(body[key]) for key in ("error", "error_description") if body.get(key)]
    return (": ".join(parts) or "no error description")[:_DETAIL_LIMIT]
