"""Password hashing with Argon2id (argon2-cffi), at OWASP's first recommended cost.

New hashes are PHC strings (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``) that carry their
parameters, so the cost can rise later without breaking old accounts. Hashes stored by earlier
versions (``scrypt$log2n$r$p$salt$hash``) still verify. Hashing runs on threads of its own (the
C code releases the GIL, so a signup does not stall the event loop), a few of them: more would
only share the same cores more slowly.

Under a signup surge the hashes queue. A hash that cannot finish before its request's deadline
is refused at once (``overloaded``: a 503 the client retries after Retry-After) instead of
queueing — and one whose deadline passed while it waited is not computed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from mt_core.errors import Unavailable
from mt_core.rpc import deadline

T = TypeVar("T")


@dataclass(frozen=True)
class Argon2Cost:
    """Argon2id's cost. The defaults are OWASP's first recommendation (19 MiB, 2 passes)."""

    time_cost: int = 2
    memory_kib: int = 19_456
    parallelism: int = 1


def _scrypt(password: str, salt: bytes, log2n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=1 << log2n, r=r, p=p, maxmem=256 << 20, dklen=32
    )


def _verify_scrypt(password: str, stored: str) -> bool:
    """A hash stored before Argon2id: ``scrypt$log2n$r$p$salt$hash``."""
    _scheme, log2n, r, p, salt, expected = stored.split("$")
    derived = _scrypt(password, base64.b64decode(salt), int(log2n), int(r), int(p))
    return hmac.compare_digest(derived, base64.b64decode(expected))


class _Expired(Exception):
    """The request's deadline passed while the hash waited for a thread."""


def _run_by(expires_at: float | None, work: Callable[[], T]) -> tuple[T, float]:
    """``work()`` unless the deadline passed; with the seconds it took."""
    started = time.monotonic()
    if expires_at is not None and started > expires_at:
        raise _Expired
    return work(), time.monotonic() - started


class Hasher:
    """Argon2id on ``workers`` threads, admitting only hashes that can finish in time — with
    ``reserve_s`` left for what the request does after the hash (a signup's writes): a signup
    completed after its caller gave up is an account the user never hears of, and a retry then
    finds its own handle taken."""

    def __init__(self, cost: Argon2Cost, workers: int, reserve_s: float = 0.0) -> None:
        self.cost = cost
        self.reserve_s = reserve_s
        self._argon2 = PasswordHasher(
            time_cost=cost.time_cost, memory_cost=cost.memory_kib, parallelism=cost.parallelism
        )
        self._workers = max(1, workers)
        self._pool = ThreadPoolExecutor(self._workers, "password-hash")
        self._waiting = 0  # submitted and not finished
        self.cost_s = 0.05  # moving average of one hash, refined as hashes run
        self._burn_hash = self._argon2.hash(secrets.token_urlsafe())  # matched by nothing

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Hasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _run(self, work: Callable[[], T]) -> T:
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
            result, took_s = await asyncio.get_running_loop().run_in_executor(
                self._pool, _run_by, expires_at, work
            )
        except _Expired:
            raise Unavailable(
                "the request ran out of time waiting to hash", code="overloaded"
            ) from None
        finally:
            self._waiting -= 1
        self.cost_s = 0.8 * self.cost_s + 0.2 * took_s
        return result

    async def hash(self, password: str) -> str:
        return await self._run(lambda: self._argon2.hash(password))

    async def verify(self, password: str, stored: str) -> bool:
        if stored.startswith("scrypt$"):
            try:
                return await self._run(lambda: _verify_scrypt(password, stored))
            except ValueError:
                return False
        return await self._run(lambda: self._check(password, stored))

    def _check(self, password: str, stored: str) -> bool:
        try:
            return self._argon2.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    async def burn(self) -> None:
        """Spend what a verification costs, so an unknown handle is not faster than a wrong
        password (which would tell an attacker which handles exist)."""
        await self._run(lambda: self._check(secrets.token_urlsafe(), self._burn_hash))
