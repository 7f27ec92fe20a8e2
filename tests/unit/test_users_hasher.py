"""Password hashing admits only the work that can finish before its request's deadline."""

from __future__ import annotations

import asyncio

import pytest
from mt_core.errors import Unavailable
from mt_core.rpc import deadline
from mt_users.passwords import Argon2Cost, Hasher

CHEAP = Argon2Cost(time_cost=1, memory_kib=64)  # these tests are about admission, not cost
# Stored by an earlier version (scrypt, N=2**10): the password "correct horse".
SCRYPT_STORED = (
    "scrypt$10$8$1$c2FsdHNhbHRzYWx0c2FsdA==$A9lBa6RTbfBovWqamVIqXKovIl4Vk6OZyVojLJmYmSI="
)


async def test_hasher__hashes_and_verifies() -> None:
    hasher = Hasher(CHEAP, workers=1)
    try:
        stored = await hasher.hash("correct horse")
        assert stored.startswith("$argon2id$v=19$m=64,t=1,p=1$")
        assert await hasher.verify("correct horse", stored)
        assert not await hasher.verify("wrong horse", stored)
    finally:
        hasher.close()


async def test_hasher__still_verifies_a_password_stored_with_scrypt() -> None:
    hasher = Hasher(CHEAP, workers=1)
    try:
        assert await hasher.verify("correct horse", SCRYPT_STORED)
        assert not await hasher.verify("wrong horse", SCRYPT_STORED)
        assert not await hasher.verify("correct horse", "scrypt$not-a-hash")
        assert not await hasher.verify("correct horse", "$argon2id$garbage")
    finally:
        hasher.close()


async def test_hasher__refuses_at_once_what_cannot_finish_in_time() -> None:
    hasher = Hasher(CHEAP, workers=1)
    hasher.cost_s = 0.5  # as if each hash took half a second
    token = deadline.set_remaining(0.2)
    try:
        with pytest.raises(Unavailable) as refused:
            await hasher.hash("correct horse")
        assert refused.value.code == "overloaded"
    finally:
        deadline.reset(token)
        hasher.close()


async def test_hasher__keeps_the_reserve_for_the_work_after_the_hash() -> None:
    hasher = Hasher(CHEAP, workers=1, reserve_s=1.0)
    hasher.cost_s = 0.1
    token = deadline.set_remaining(1.05)  # the hash fits, but not with the writes after it
    try:
        with pytest.raises(Unavailable):
            await hasher.hash("correct horse")
    finally:
        deadline.reset(token)
        hasher.close()


async def test_hasher__skips_a_hash_whose_deadline_passed_while_queued() -> None:
    hasher = Hasher(Argon2Cost(time_cost=3, memory_kib=65_536), workers=1)  # ~0.2 s here
    try:
        first = asyncio.create_task(hasher.hash("first"))
        await asyncio.sleep(0)  # the first takes the only thread
        token = deadline.set_remaining(0.01)
        hasher.cost_s = 0.001  # admitted: the estimate says it fits
        try:
            with pytest.raises(Unavailable, match="ran out of time"):
                await hasher.hash("second")
        finally:
            deadline.reset(token)
        assert (await first).startswith("$argon2id$")
    finally:
        hasher.close()
