"""The simulated legacy system as an identity provider: Threads let you in with *your*
Instagram account, so linking one takes its provider's word, not a claim typed into a form.

- Each synthetic legacy account has a credential (its password over there), derived from a
  secret the operator holds (``$MT_HOME/secrets/legacy-idp.key``, made on first use, mode
  0600): ``HMAC-SHA256(secret, "credential:" + legacy id)``. The load generator and the tests
  read the same file to act as the accounts' owners (:func:`credential`).
- The provider (:class:`Provider`) issues an *assertion* to whoever proves an account's
  credential: a JWT signed with Ed25519 (a key derived from the same secret) naming the account
  (``sub``), the app it is for (``aud``), its issuer, when it was issued and when it expires
  (five minutes later) and a unique id (``jti``).
- The app (:class:`Verifier`) holds only the public key (``legacy-idp.pub``): it checks the
  signature, issuer, audience and expiry, and spends the ``jti`` once (the users service keeps
  it beside the account's link in the KV until the assertion would have expired).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from mt_core import secretfile
from mt_core.errors import Unauthenticated

ISSUER = "legacy-idp"
AUDIENCE = "minithreads"  # the app's own name at the provider
LIFETIME_S = 300
LEEWAY_S = 30  # clocks of the provider and the app may disagree this much


def secret_path(home: Path) -> Path:
    return home / "secrets" / "legacy-idp.key"


def public_key_path(home: Path) -> Path:
    return home / "secrets" / "legacy-idp.pub"


def ensure_secret(home: Path) -> bytes:
    """The operator's secret (32 random bytes, hex in the file), made on first use; the public
    key file beside it. Safe against processes racing to make it."""
    seed = bytes.fromhex(secretfile.ensure(secret_path(home)))
    pub = public_key_path(home)
    if not pub.exists():
        temporary = pub.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(_public_pem(_signing_key(seed)))
        temporary.replace(pub)
    return seed


def credential(seed: bytes, legacy_id: str) -> str:
    """The legacy account's credential (what its owner types at the legacy app)."""
    digest = hmac.new(seed, f"credential:{legacy_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:15]).decode()


def _signing_key(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hmac.new(seed, b"signing-key", hashlib.sha256).digest()
    )


def _public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class Assertion:
    token: str
    legacy_id: str
    expires_at_s: int


class Provider:
    """The legacy system's side: checks a credential, issues an assertion."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._key = _signing_key(seed)

    def issue(
        self, legacy_id: str, offered: str, audience: str = AUDIENCE, now_s: float | None = None
    ) -> Assertion:
        """An assertion for ``legacy_id`` if ``offered`` is its credential; Unauthenticated,
        the same for any account and any wrong credential, otherwise."""
        if not hmac.compare_digest(offered.encode(), credential(self._seed, legacy_id).encode()):
            raise Unauthenticated("wrong legacy account or credential", code="bad_credentials")
        return self.sign(legacy_id, audience, now_s)

    def sign(self, legacy_id: str, audience: str, now_s: float | None = None) -> Assertion:
        issued = int(time.time() if now_s is None else now_s)
        claims = {
            "iss": ISSUER,
            "sub": legacy_id,
            "aud": audience,
            "iat": issued,
            "exp": issued + LIFETIME_S,
            "jti": secrets.token_urlsafe(16),
        }
        token = jwt.encode(claims, self._key, algorithm="EdDSA")
        return Assertion(token, legacy_id, issued + LIFETIME_S)


@dataclass(frozen=True)
class Verified:
    legacy_id: str
    jti: str
    expires_at_s: int


class Verifier:
    """The app's side: only the provider's public key."""

    def __init__(self, public_pem: bytes, audience: str = AUDIENCE) -> None:
        key = serialization.load_pem_public_key(public_pem)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the legacy provider's key must be Ed25519")
        self._key = key
        self._audience = audience

    @staticmethod
    def of_home(home: Path, audience: str = AUDIENCE) -> Verifier:
        ensure_secret(home)
        return Verifier(public_key_path(home).read_bytes(), audience)

    def verify(self, token: str) -> Verified:
        """The assertion's account, if it is genuine, for us and alive; Unauthenticated with
        the reason otherwise. (Whether it was spent already is the caller's to check.)"""
        if not token or len(token) > 4096:
            raise Unauthenticated("a legacy assertion is required", code="invalid_assertion")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=["EdDSA"],
                audience=self._audience,
                issuer=ISSUER,
                leeway=LEEWAY_S,
                options={"require": ["iss", "sub", "aud", "iat", "exp", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(
                "the legacy assertion has expired", code="assertion_expired"
            ) from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                "the legacy assertion is for another app", code="assertion_audience"
            ) from None
        except jwt.PyJWTError:
            raise Unauthenticated(
                "not a valid legacy assertion", code="invalid_assertion"
            ) from None
        return Verified(str(claims["sub"]), str(claims["jti"]), int(claims["exp"]))
