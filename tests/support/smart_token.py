"""The authorization server side of SMART Backend Services, for the test FHIR server.

Verifies a client assertion (JWS compact serialization, RFC 7515) with the
``cryptography`` primitives directly, not with PyJWT (which the hub signs
with), so a shared misreading of the JWS format cannot hide a bug:
RS384 = RSASSA-PKCS1-v1_5 with SHA-384; ES384 = ECDSA P-384 with SHA-384
whose signature is ``r || s`` (48 bytes each, RFC 7518 3.4), not DER.

Checks what SMART App Launch 2.x ("Authenticating with a client assertion")
asks of the server: the ``kid`` and algorithm of a registered key, the
signature, ``iss`` = ``sub`` = the client id, ``aud`` = the token URL,
``exp`` in the future and at most five minutes away, ``jti`` not seen before.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = ["InvalidClient", "SmartClient", "make_client", "verify_assertion"]

Algorithm = Literal["RS384", "ES384"]
MAX_LIFETIME_SECONDS = 300
_CLOCK_SKEW_SECONDS = 5
_P384_BYTES = 48


class InvalidClient(Exception):  # noqa: N818 - named after the OAuth error code
    """The assertion does not authenticate a registered client (the reason is the text)."""


@dataclass(frozen=True)
class SmartClient:
    """A registered backend client: its id and the public key it signs with."""

    client_id: str
    key_id: str
    algorithm: Algorithm
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def make_client(
    directory: Path, algorithm: Algorithm, *, client_id: str = "meridian-hub", key_id: str = "k1"
) -> tuple[SmartClient, Path]:
    """A new key pair: the client to register, and the PEM private key written for the hub."""
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS384"
        else ec.generate_private_key(ec.SECP384R1())
    )
    path = directory / f"{client_id}-{key_id}-{algorithm}.pem"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return SmartClient(client_id, key_id, algorithm, private.public_key()), path


def verify_assertion(
    assertion: str, *, clients: dict[str, SmartClient], audience: str, now: float, seen: set[str]
) -> SmartClient:
    """The client the assertion authenticates; InvalidClient with the reason otherwise."""
    try:
        header_b64, claims_b64, signature_b64 = assertion.split(".")
        header = _json_part(header_b64)
        claims = _json_part(claims_b64)
        signature = _b64decode(signature_b64)
    except ValueError as exc:
        raise InvalidClient(f"not a JWS compact serialization: {exc}") from exc
    client = clients.get(str(claims.get("iss")))
    if client is None:
        raise InvalidClient("unknown client (iss)")
    if header.get("alg") != client.algorithm or header.get("kid") != client.key_id:
        raise InvalidClient("alg or kid does not match the registered key")
    _verify_signature(client, f"{header_b64}.{claims_b64}".encode("ascii"), signature)
    _check_claims(claims, client, audience=audience, now=now, seen=seen)
    return client


def _check_claims(
    claims: dict[str, Any], client: SmartClient, *, audience: str, now: float, seen: set[str]
) -> None:
    if claims.get("sub") != client.client_id:
        raise InvalidClient("sub is not the client id")
    aud = claims.get("aud")
    if aud != audience and not (isinstance(aud, list) and audience in aud):
        raise InvalidClient("aud is not the token URL")
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp <= now - _CLOCK_SKEW_SECONDS:
        raise InvalidClient("exp missing or in the past")
    if exp > now + MAX_LIFETIME_SECONDS + _CLOCK_SKEW_SECONDS:
        raise InvalidClient("exp more than five minutes away")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or jti in seen:
        raise InvalidClient("jti missing or replayed")
    seen.add(jti)


def _verify_signature(client: SmartClient, signed: bytes, signature: bytes) -> None:
    key = client.public_key
    try:
        if client.algorithm == "RS384" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA384())
            return
        if client.algorithm == "ES384" and isinstance(key, ec.EllipticCurvePublicKey):
            if len(signature) != 2 * _P384_BYTES:
                raise InvalidClient("ES384 signature is not r || s of 48 bytes each")
            r = int.from_bytes(signature[:_P384_BYTES], "big")
            s = int.from_bytes(signature[_P384_BYTES:], "big")
            key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA384()))
            return
    except InvalidSignature as exc:
        raise InvalidClient("bad signature") from exc
    raise InvalidClient("key type does not match the algorithm")


def _json_part(part: str) -> dict[str, Any]:
    value = json.loads(_b64decode(part))
    if not isinstance(value, dict):
        raise ValueError("a JWS part is not a JSON object")
    return value


def _b64decode(part: str) -> bytes:
    """base64url without padding (RFC 7515 2)."""
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
