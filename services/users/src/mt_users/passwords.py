"""Password hashing with scrypt, a memory-hard KDF (in the standard library, via OpenSSL).

The stored form carries its parameters (``scrypt$log2n$r$p$salt$hash``), so the cost can rise
later without breaking old accounts. Hashing runs on threads of its own (OpenSSL releases the
GIL, so a signup does not stall the event loop for the tens of milliseconds it costs), a few
of them: more would only share the same cores more slowly.

Under a signup surge the hashes queue. A hash that cannot finish before its request's deadline
is refused at once (``overloaded``: a 503 the client retries after Retry-After) instead of
queueing — and one whose deadline passed while it waited is not computed: the launch surge
showed signups collapsing to a fraction of capacity when every expired request was still
hashed and then retried.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

from mt_core.errors import Unavailable
from mt_core.rpc import deadline

_R, _P, _DKLEN = 8, 1, 32


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _derive(password: str, salt: bytes, log2n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=1 << log2n, r=r, p=p, maxmem=256 << 20, dklen=_DKLEN
    )


class _Expired(Exception):
    """The request's deadline passed while the hash waited for a thread."""


def _derive_by(
    expires_at: float | None, password: str, salt: bytes, log2n: int, r: int, p: int
) -> tuple[bytes, float]:
    """``_derive`` unless the deadline passed; with the seconds it took."""
    started = time.monotonic()
    if expires_at is not None and started > expires_at:
        raise _Expired
    return _derive(password, salt, log2n, r, p), time.monotonic() - started


class Hasher:
    """scrypt on ``workers`` threads, admitting only hashes that can finish in time — with
    ``reserve_s`` left for what the request does after the hash (a signup's writes): a signup
    completed after its caller gave up is an account the user never hears of, and a retry then
    finds its own handle taken."""

    def __init__(self, log2n: int, workers: int, reserve_s: float = 0.0) -> None:
        self.log2n = log2n
        self.reserve_s = reserve_s
        self._workers = max(1, workers)
        self._pool = ThreadPoolExecutor(self._workers, "scrypt")
        self._waiting = 0  # submitted and not finished
        self.cost_s = 0.05  # moving average of one derivation, refined as hashes run

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Hasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _derive(self, password: str, salt: bytes, log2n: int, r: int, p: int) -> bytes:
        left_s = deadline.remaining_s()
        if left_s is not None:
            left_s -= self.reserve_s
        expected_s = (self._waiting // self._workers + 1) * self.cost_s
        if left_s is not None and expected_s > left_s:
            raise Unavailable(
                "too many signups and logins at once; try again shortly", code="overloaded"
            )
        expires_at = None if left_s is None else time.monotonic() + left_s
        self._waiting += 1
        try:
            derived, took_s = await asyncio.get_running_loop().run_in_executor(
                self._pool, _derive_by, expires_at, password, salt, log2n, r, p
            )
        except _Expired:
            raise Unavailable(
                "the request ran out of time waiting to hash", code="overloaded"
            ) from None
        finally:
            self._waiting -= 1
        self.cost_s = 0.8 * self.cost_s + 0.2 * took_s
        return derived

    async def hash(self, password: str) -> str:
        salt = secrets.token_bytes(16)
        derived = await self._derive(password, salt, self.log2n, _R, _P)
        return f"scrypt${self.log2n}${_R}${_P}${_b64(salt)}${_b64(derived)}"

    async def verify(self, password: str, stored: str) -> bool:
        try:
            scheme, log2n, r, p, salt, expected = stored.split("$")
            if scheme != "scrypt":
                return False
            derived = await self._derive(
                password, base64.b64decode(salt), int(log2n), int(r), int(p)
            )
        except ValueError:
            return False
        return hmac.compare_digest(derived, base64.b64decode(expected))

    async def burn(self) -> None:
        """Spend what a verification costs, so an unknown handle is not faster than a wrong
        password (which would tell an attacker which handles exist)."""
        await self._derive("x", b"0" * 16, self.log2n, _R, _P)
