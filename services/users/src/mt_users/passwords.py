"""Password hashing with scrypt, a memory-hard KDF (in the standard library, via OpenSSL).

The stored form carries its parameters (``scrypt$log2n$r$p$salt$hash``), so the cost can rise
later without breaking old accounts. Hashing runs in a worker thread: OpenSSL releases the GIL,
so a signup does not stall the event loop for the tens of milliseconds it costs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets

_R, _P, _DKLEN = 8, 1, 32


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _derive(password: str, salt: bytes, log2n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=1 << log2n, r=r, p=p, maxmem=256 << 20, dklen=_DKLEN
    )


async def hash_password(password: str, log2n: int) -> str:
    salt = secrets.token_bytes(16)
    derived = await asyncio.to_thread(_derive, password, salt, log2n, _R, _P)
    return f"scrypt${log2n}${_R}${_P}${_b64(salt)}${_b64(derived)}"


async def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, log2n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        derived = await asyncio.to_thread(
            _derive, password, base64.b64decode(salt), int(log2n), int(r), int(p)
        )
    except ValueError:
        return False
    return hmac.compare_digest(derived, base64.b64decode(expected))


async def burn(log2n: int) -> None:
    """Spend what a verification costs, so an unknown handle is not faster than a wrong
    password (which would tell an attacker which handles exist)."""
    await asyncio.to_thread(_derive, "x", b"0" * 16, log2n, _R, _P)
