"""Retry policy and the AIMD limiter: pure logic, no broker."""

from __future__ import annotations

import asyncio
import random

import pytest
from mt_core.errors import InvalidArgument, Overloaded, Unavailable
from mt_jobs.limiter import AIMDLimit, ConcurrencyGate
from mt_jobs.policy import backoff_ms, exhausted_reason, is_congestion, permanent_reason


def test_backoff__is_full_jitter_under_an_exponential_capped_ceiling() -> None:
    rng = random.Random(7)
    for retry, ceiling in [(1, 200), (2, 400), (3, 800), (6, 6_400), (9, 30_000), (40, 30_000)]:
        delays = [backoff_ms(retry, base_ms=200, cap_ms=30_000, rng=rng) for _ in range(500)]
        assert all(0 <= d <= ceiling for d in delays), retry
        # Full jitter spreads over the whole range, not just near the ceiling.
        assert min(delays) < ceiling * 0.1
        assert max(delays) > ceiling * 0.9


def test_congestion__is_retriable_errors_and_timeouts_not_bad_jobs() -> None:
    assert is_congestion(Unavailable("kv down"))
    assert is_congestion(Overloaded("shed"))
    assert is_congestion(TimeoutError())
    assert is_congestion(ConnectionResetError())
    assert not is_congestion(InvalidArgument("bad"))
    assert not is_congestion(ValueError("bug"))
    assert not is_congestion(None)


def test_dead_reasons__name_the_error() -> None:
    assert permanent_reason(ValueError("no such post")) == "permanent: no such post"
    assert exhausted_reason(KeyError("x")) == "attempts_exhausted: KeyError: 'x'"
    assert len(exhausted_reason(ValueError("x" * 5000))) == 1000


def test_aimd__starts_at_four_and_grows_one_per_round_trip_to_the_max() -> None:
    limit = AIMDLimit(min_limit=1, max_limit=6, target_latency_ms=1_000)
    assert limit.limit == 4
    for _ in range(3):
        limit.observe(10, 0, error=None)
    assert limit.limit == 4  # not yet `limit` successes
    limit.observe(10, 0, error=None)
    assert limit.limit == 5
    for _ in range(5 + 6 + 6):
        limit.observe(10, 0, error=None)
    assert limit.limit == 6  # capped
    assert AIMDLimit(min_limit=1, max_limit=2, target_latency_ms=1).limit == 2
    assert AIMDLimit(min_limit=5, max_limit=9, target_latency_ms=1).limit == 5


def test_aimd__halves_on_congestion_once_per_window_down_to_the_floor() -> None:
    limit = AIMDLimit(min_limit=2, max_limit=64, target_latency_ms=1_000)
    limit.limit = 32
    limit.observe(1_500, now_ms=10_000, error=None)  # slow batch
    assert limit.limit == 16
    limit.observe(10, now_ms=10_500, error=Unavailable("kv"))  # same window: ignored
    assert limit.limit == 16
    limit.observe(10, now_ms=11_000, error=Unavailable("kv"))
    assert limit.limit == 8
    for t in range(12_000, 20_000, 1_000):
        limit.observe(5_000, now_ms=t, error=None)
    assert limit.limit == 2  # the floor


def test_aimd__a_bad_job_is_no_news_about_the_downstream() -> None:
    limit = AIMDLimit(min_limit=1, max_limit=16, target_latency_ms=1_000)
    for _ in range(10):
        limit.observe(10, 0, error=ValueError("poison"))
    assert limit.limit == 4


def test_aimd__rejects_a_floor_above_the_cap() -> None:
    with pytest.raises(ValueError, match="min_limit"):
        AIMDLimit(min_limit=5, max_limit=4, target_latency_ms=1)


async def test_gate__admits_up_to_the_current_limit_and_follows_changes() -> None:
    limit = AIMDLimit(min_limit=1, max_limit=8, target_latency_ms=1_000)
    limit.limit = 2
    gate = ConcurrencyGate(limit)
    await gate.acquire()
    await gate.acquire()
    third = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0.01)
    assert not third.done()
    limit.limit = 3
    gate.wake()
    await asyncio.wait_for(third, 1)
    assert gate.in_flight == 3
    # Shrinking below the number in flight admits nobody until enough have left.
    limit.limit = 1
    fourth = asyncio.create_task(gate.acquire())
    gate.release()
    gate.release()
    await asyncio.sleep(0.01)
    assert not fourth.done()
    gate.release()
    await asyncio.wait_for(fourth, 1)
    assert gate.in_flight == 1
