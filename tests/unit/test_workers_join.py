"""A celebrity's join is a chain of steps; each step's batch follows how long the last one took."""

from __future__ import annotations

from mt_workers.handlers import MIN_JOIN_BATCH, join_batch, next_join_batch


def test_join_batch__starts_full_and_halves_per_failed_attempt() -> None:
    assert join_batch({}, 0, 200) == 200
    assert join_batch({}, 2, 200) == 50
    assert join_batch({}, 8, 200) == MIN_JOIN_BATCH


def test_join_batch__carries_what_the_last_step_found_to_fit() -> None:
    assert join_batch({"batch": 40}, 0, 200) == 40
    assert join_batch({"batch": 40}, 1, 200) == 20
    assert join_batch({"batch": 5_000}, 0, 200) == 200  # never past the setting


def test_next_join_batch__grows_when_fast_shrinks_when_near_the_deadline() -> None:
    assert next_join_batch(50, took_ms=500, budget_ms=5_000, most=200) == 100
    assert next_join_batch(150, took_ms=500, budget_ms=5_000, most=200) == 200
    assert next_join_batch(100, took_ms=2_000, budget_ms=5_000, most=200) == 100
    assert next_join_batch(100, took_ms=3_000, budget_ms=5_000, most=200) == 50
    assert next_join_batch(12, took_ms=4_000, budget_ms=5_000, most=200) == MIN_JOIN_BATCH
