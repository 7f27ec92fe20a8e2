"""Capacity-aware async on a logical clock: how fast a kind may go, and when it must wait."""

from __future__ import annotations

import math

import pytest
from mt_jobs.capacity import (
    UNLIMITED,
    JobClass,
    RateController,
    RateSettings,
    TokenBucket,
    UsedRate,
)

OPP, RES = JobClass.OPPORTUNISTIC, JobClass.RESERVED


def run(
    control: RateController,
    pressure: float,
    seconds: float,
    start: float,
    used: float | None = None,
    tick_s: float = 0.25,
) -> float:
    """Feed ``pressure`` every ``tick_s`` for ``seconds``; the kind would do all it is
    allowed (or ``used`` units a second: the rate binds while it is no more than that).
    Returns the clock after."""
    now = start
    while now < start + seconds - 1e-9:
        now += tick_s
        done = control.rate if used is None else min(used, control.rate)
        binding = used is None or control.rate <= used
        control.on_pressure(pressure, done, now, binding=binding)
        control.on_tick(now, binding=binding)
    return now


def per_second(**settings: float) -> RateSettings:
    """Settings that grow once a second, idle or not (the tests count in seconds)."""
    defaults = {"start_rate": 10, "growth_interval_s": 1.0, "idle_growth_interval_s": 1.0}
    return RateSettings(**{**defaults, **settings})


def test_opportunistic__deferred_at_once_when_the_foreground_saturates() -> None:
    control = RateController(OPP, RateSettings(start_rate=10))
    now = run(control, 0.0, 20, 0.0)
    assert control.rate > 100
    control.on_pressure(1.2, control.rate, now + 0.25, binding=True)
    assert control.deferred
    assert control.rate == 0


def test_opportunistic__slow_start_after_the_surge_back_to_half_then_linear() -> None:
    control = RateController(OPP, per_second())
    now = run(control, 0.0, 20, 0.0, used=300.0)  # the kind does 300/s when let
    assert control.rate == 320  # grew while it held the kind back, not once past its use
    now = run(control, 2.0, 30, now, used=200.0)  # deferred through the surge
    assert control.rate == 0
    rates = []
    for _ in range(12):
        now = run(control, 0.0, 1.0, now)
        rates.append(control.rate)
    assert rates[0] == pytest.approx(10)  # the slow start begins at the start rate
    # Doubling every second up to half of what it was doing, then +10% a second.
    assert rates[1:5] == pytest.approx([20, 40, 80, 160])
    assert rates[5] == pytest.approx(176)  # past half of the 320 it had: +10%
    assert rates[6] == pytest.approx(193.6)


def test_opportunistic__halves_between_the_target_and_saturation_once_per_interval() -> None:
    control = RateController(OPP, RateSettings(start_rate=10, target_pressure=0.5))
    now = run(control, 0.0, 20, 0.0)
    before = control.rate
    now = run(control, 0.7, 1.0, now)  # four readings in one interval: one cut
    assert control.rate == pytest.approx(before / 2)
    run(control, 0.7, 1.0, now)
    assert control.rate == pytest.approx(before / 4)


def test_opportunistic__an_allowance_unused_does_not_grow() -> None:
    control = RateController(OPP, per_second())
    run(control, 0.0, 60, 0.0, used=12.0)
    assert control.rate == 20  # one doubling past what it used, then no promise more


def test_opportunistic__doubles_every_second_beside_a_busy_foreground() -> None:
    control = RateController(OPP, RateSettings(start_rate=100))
    run(control, 0.3, 0.25, 0.0)
    assert control.rate == 100
    run(control, 0.3, 4.0, 0.25)
    assert control.rate == 1600


def test_opportunistic__doubles_every_half_second_while_the_foreground_is_idle() -> None:
    control = RateController(OPP, RateSettings(start_rate=100))
    run(control, 0.0, 0.25, 0.0)
    run(control, 0.0, 2.0, 0.25)
    assert control.rate == 1600


def test_opportunistic__a_rate_that_held_nothing_back_in_the_interval_does_not_grow() -> None:
    control = RateController(OPP, per_second())
    run(control, 0.0, 0.25, 0.0)
    for second in range(1, 4):  # a batch waited in the first reading of each second only
        for quarter in range(4):
            now = second + quarter * 0.25
            control.on_pressure(0.0, control.rate, now, binding=quarter == 0)
    assert control.rate == 80  # each second's one wait counts: it grew
    for now in (4.25, 4.5, 4.75, 5.0, 5.25):
        control.on_pressure(0.0, control.rate, now, binding=False)
    assert control.rate == 80


def test_opportunistic__starts_at_one_job_a_second_whatever_the_job_size() -> None:
    control = RateController(OPP, RateSettings(start_rate=10))
    control.job_units = 100.0  # an import step: a hundred follows
    run(control, 2.0, 5, 0.0)
    run(control, 0.0, 0.25, 5.0)
    assert control.rate == pytest.approx(100)


def test_paused__holds_a_kind_at_zero_whatever_the_pressure() -> None:
    control = RateController(OPP)
    control.paused = True
    run(control, 0.0, 10, 0.0)
    assert control.deferred


def test_reserved__is_unlimited_and_ignores_the_foreground() -> None:
    control = RateController(RES)
    run(control, 5.0, 10, 0.0, used=50.0)
    assert math.isinf(control.rate)
    assert not control.deferred


def test_backpressure__halves_any_kind_once_per_interval_and_a_reserved_one_recovers() -> None:
    control = RateController(RES, RateSettings(start_rate=1))
    control.on_backpressure(used_rate=40.0, now=0.0)
    assert control.rate == pytest.approx(40.0)  # cut from what it did (2 x 40 / 2)
    control.on_backpressure(used_rate=40.0, now=0.5)  # the same interval: once
    assert control.rate == pytest.approx(40.0)
    control.on_backpressure(used_rate=40.0, now=1.5)
    assert control.rate == pytest.approx(20.0)
    # Healthy again and no longer held back by the allowance: unlimited.
    run(control, 0.0, 3, 2.0, used=5.0)
    assert control.rate == UNLIMITED


def test_token_bucket__a_large_job_runs_and_the_next_waits_until_it_is_paid_for() -> None:
    bucket = TokenBucket(0.0)
    assert bucket.wait_s(10.0, 0.0) == 0
    bucket.charge(100)  # an import step of 100 follows at 10 follows/s
    assert bucket.wait_s(10.0, 0.0) == pytest.approx(10.0)
    assert bucket.wait_s(10.0, 5.0) == pytest.approx(5.0)
    assert bucket.wait_s(10.0, 10.0) == 0
    assert bucket.wait_s(0.0, 10.0) is None  # deferred: no start at all
    assert bucket.wait_s(UNLIMITED, 10.0) == 0


def test_token_bucket__bursts_at_most_a_second_of_rate() -> None:
    bucket = TokenBucket(0.0)
    bucket.refill(10.0, 3600.0)
    assert bucket.tokens == pytest.approx(10.0)


def test_used_rate__follows_what_was_done() -> None:
    used = UsedRate(0.0, horizon_s=2.0)
    for second in range(1, 11):
        used.add(50)
        used.update(float(second))
    assert used.per_s == pytest.approx(50, rel=0.05)
