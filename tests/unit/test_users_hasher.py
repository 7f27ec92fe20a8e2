"""Password hashing admits only the work that can finish before its request's deadline."""

from __future__ import annotations

import asyncio

import pytest
from mt_core.errors import Unavailable
from mt_core.rpc import deadline
from mt_users.passwords import Hasher

LOG2N = 10  # cheap: these tests are about admission, not cost


async def test_hasher__hashes_and_verifies() -> None:
    hasher = Hasher(LOG2N, workers=1)
    try:
        stored = await hasher.hash("correct horse")
        assert stored.startswith(f"scrypt${LOG2N}$")
        assert await hasher.verify("correct horse", stored)
        assert not await hasher.verify("wrong horse", stored)
    finally:
        hasher.close()


async def test_hasher__refuses_at_once_what_cannot_finish_in_time() -> None:
    hasher = Hasher(LOG2N, workers=1)
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
    hasher = Hasher(LOG2N, workers=1, reserve_s=1.0)
    hasher.cost_s = 0.1
    token = deadline.set_remaining(1.05)  # the hash fits, but not with the writes after it
    try:
        with pytest.raises(Unavailable):
            await hasher.hash("correct horse")
    finally:
        deadline.reset(token)
        hasher.close()


async def test_hasher__skips_a_hash_whose_deadline_passed_while_queued() -> None:
    hasher = Hasher(16, workers=1)  # ~0.1-0.2 s each here
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
        assert (await first).startswith("scrypt$16$")
    finally:
        hasher.close()
