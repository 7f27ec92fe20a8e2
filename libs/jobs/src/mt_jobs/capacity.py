"""Capacity-aware async (after Meta's Async/XFaaS): how fast each job kind may go right now.

Every kind has a class. *Reserved* work (a new post's fan-out, notifications, a follow's
backfill) is owed to users within seconds: it runs as fast as its downstream allows.
*Opportunistic* work (graph copies, celebrity joins) can wait hours: it runs on the capacity
the foreground leaves, and not at all while the foreground is saturated.

:class:`RateController` keeps a kind's allowed rate, in *units* per second (what the kind's
handler reports doing: follows applied, for imports and joins; jobs, by default):

* foreground pressure (the gateway's, :mod:`mt_core.foreground`: 1.0 where it starts
  refusing requests) at or past 1 defers an opportunistic kind — rate 0, its topics left
  unread, the work waiting in Kafka — and between ``target_pressure`` and 1 halves its rate
  every ``decrease_interval_s``; below the target the rate comes back with TCP's slow start
  (doubling every ``growth_interval_s`` — twice as often while the foreground is idle — from
  one job's worth a second up to half the rate it last had, then +10% per interval), growing
  only while the rate is what holds the kind back (a batch waited for it since the last
  growth);
* back-pressure from downstream (a service answering ``overloaded``: saturated itself, or
  its KV commits past their target) halves the rate of any kind, at most once per interval;
  a reserved kind whose rate is no longer binding is unlimited again.

:class:`TokenBucket` enforces the rate (a job's units are charged as it starts, by estimate,
and corrected when it ends). Both run on a clock passed in (seconds), so they are tested on a
logical one.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

UNLIMITED = math.inf
# Opportunistic work is owed within hours, not seconds: its jobs carry this deadline, which
# orders the work and flags it late (``overdue``) but never drops it, and its topics keep
# records for days, longer than any deferral can last.
OPPORTUNISTIC_DEADLINE_S = 6 * 3600
OPPORTUNISTIC_RETENTION_S = 7 * 24 * 3600


class JobClass(enum.Enum):
    RESERVED = "reserved"
    OPPORTUNISTIC = "opportunistic"


def opportunistic_deadline_ms(now_ms: int) -> int:
    return now_ms + OPPORTUNISTIC_DEADLINE_S * 1000


@dataclass(frozen=True)
class RateSettings:
    start_rate: float = 10.0  # units/s where slow start begins (and a cut never goes below)
    max_rate: float = UNLIMITED
    # Opportunistic: yield above this, well before the gateway refuses (at 1.0): half of the
    # queueing the foreground tolerates.
    target_pressure: float = 0.5
    decrease_interval_s: float = 1.0  # at most one multiplicative cut per interval
    growth_interval_s: float = 1.0
    # With nobody to yield to (pressure under a tenth of the target: nothing queued at the
    # gate), one growth per round of the feedback loop (published and read every 250 ms).
    idle_growth_interval_s: float = 0.5


class RateController:
    """One kind's allowed rate, moved by foreground pressure and downstream back-pressure."""

    def __init__(self, job_class: JobClass, settings: RateSettings | None = None) -> None:
        self.job_class = job_class
        self.s = settings or RateSettings()
        # Opportunistic kinds wait for the first word of the foreground's state and then begin
        # cautiously (slow start); reserved ones are not held back.
        self.rate = 0.0 if self.opportunistic else self.s.max_rate
        self.ssthresh = self.s.max_rate
        self.paused = False  # by an operator (`minithreads jobs pause KIND`)
        self.job_units = 1.0  # units one job does (learned): slow start begins at one job/s
        self._last_cut: float | None = None
        self._last_growth: float | None = None
        self._bound = False  # the rate held a batch back since the last growth

    @property
    def opportunistic(self) -> bool:
        return self.job_class is JobClass.OPPORTUNISTIC

    @property
    def deferred(self) -> bool:
        return self.rate <= 0.0

    @property
    def start_rate(self) -> float:
        return max(self.s.start_rate, self.job_units)

    def on_pressure(self, pressure: float, used_rate: float, now: float, *, binding: bool) -> None:
        """The foreground's pressure, read every few hundred ms (opportunistic kinds only);
        ``binding``: the rate made a batch wait since the last reading."""
        if not self.opportunistic:
            return
        self._bound |= binding
        if self.paused or pressure >= 1.0:
            if self.rate > 0:
                self.ssthresh = max(self.start_rate, min(self.rate, 2 * used_rate) / 2)
            self.rate = 0.0
            self._last_growth, self._bound = now, False
            return
        if pressure >= self.s.target_pressure:
            self._cut(used_rate, now)
            self._last_growth, self._bound = now, False
            return
        idle = pressure < self.s.target_pressure / 10
        self._grow(now, self.s.idle_growth_interval_s if idle else self.s.growth_interval_s)

    def on_backpressure(self, used_rate: float, now: float) -> None:
        """A downstream answered "overloaded": halve (once per interval), whatever the class."""
        self._cut(used_rate, now)

    def on_tick(self, now: float, *, binding: bool) -> None:
        """Between back-pressure events, a reserved kind recovers (opportunistic kinds grow in
        :meth:`on_pressure`, which knows the foreground's state)."""
        if not self.opportunistic:
            self._bound |= binding
            self._grow(now, self.s.growth_interval_s)

    def _cut(self, used_rate: float, now: float) -> None:
        if self.rate <= 0:
            return
        if self._last_cut is not None and now - self._last_cut < self.s.decrease_interval_s:
            return
        self._last_cut = now
        # An unlimited rate is cut from what the kind was actually doing.
        current = min(self.rate, 2 * used_rate) if math.isinf(self.rate) else self.rate
        self.rate = max(self.start_rate, current / 2)
        self.ssthresh = self.rate

    def _grow(self, now: float, interval_s: float) -> None:
        if self.rate >= self.s.max_rate:
            return
        if self._last_growth is None:
            self._last_growth = now
        if self.rate <= 0:
            self.rate = self.start_rate
            self._last_growth = now
            return
        elapsed = now - self._last_growth
        if elapsed < interval_s:
            return
        self._last_growth = now
        bound, self._bound = self._bound, False
        if not bound:
            # The allowance is not what holds the kind back: growing it would be a promise
            # made on no evidence. A reserved kind goes back to unlimited.
            if not self.opportunistic:
                self.rate = self.s.max_rate
            return
        slow_start = self.rate < self.ssthresh
        grown = min(self.rate * 2, self.ssthresh) if slow_start else self.rate * 1.1
        self.rate = min(self.s.max_rate, max(grown, self.start_rate))


class TokenBucket:
    """Units per second with a burst of one second's worth; a start is allowed while the
    bucket is not in debt, so one large job runs and the next waits until it is paid for."""

    def __init__(self, now: float) -> None:
        self.tokens = 0.0
        self._at = now

    def refill(self, rate: float, now: float) -> None:
        elapsed = max(0.0, now - self._at)
        self._at = now
        if math.isinf(rate):
            self.tokens = max(self.tokens, 0.0)
            return
        burst = max(1.0, rate)
        self.tokens = min(burst, self.tokens + rate * elapsed)

    def wait_s(self, rate: float, now: float) -> float | None:
        """Seconds until a start is allowed (0: now); None while the rate is zero."""
        if math.isinf(rate):
            return 0.0
        if rate <= 0:
            return None
        self.refill(rate, now)
        return 0.0 if self.tokens >= 0 else -self.tokens / rate

    def charge(self, units: float) -> None:
        self.tokens -= units


class UsedRate:
    """Units per second actually done: a moving average over ~``horizon_s``."""

    def __init__(self, now: float, horizon_s: float = 2.0) -> None:
        self.horizon_s = horizon_s
        self.per_s = 0.0
        self._pending = 0.0
        self._at = now

    def add(self, units: float) -> None:
        self._pending += units

    def update(self, now: float) -> float:
        elapsed = now - self._at
        if elapsed >= 0.25:
            weight = min(1.0, elapsed / self.horizon_s)
            self.per_s = (1 - weight) * self.per_s + weight * (self._pending / elapsed)
            self._pending = 0.0
            self._at = now
        return self.per_s
