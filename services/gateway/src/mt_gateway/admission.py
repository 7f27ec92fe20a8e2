"""Admission control at the edge: how many requests may be in progress, and who is refused first.

Pure arithmetic on a clock the caller passes in (seconds, any origin), so it is tested on a
logical clock; the aiohttp middleware in :mod:`mt_gateway.limits` does the timing and the I/O.

The concurrency limit (:class:`AdaptiveLimit`) follows the queueing delay of what it admits,
after Breakwater's delay target and DAGOR's queuing-time detection, for a mix of routes whose
costs differ twentyfold: a request's delay is its latency beyond its own route's unloaded
latency (:class:`Baselines`: what the route takes when it finds the gate empty), and the
window's statistic is the median delay — or the slowest route's moving average of it, if
that is worse (the latency objective is every kind's, and a route of one request in ten
would hide behind a median). The target is an absolute share of the latency objective, not
a multiple of the unloaded latency: on a box whose knee is two or three requests in flight,
a ratio would read the CPU that other work takes as queueing and close the gate to one
request. Past the target the limit shrinks in proportion (Envoy's gradient); below half of
it, and only while the limit is actually in use, it grows by one per window; in between it
holds (Vegas's band, so the limit does not saw up and down around the target). A limit far
above what is in use drifts down towards it, so that the next surge is not let in all at
once. A request that fails as unavailable (a 5xx, a timeout) is a sign of overload in itself
and halves it.

Who is refused (:class:`Shedder`): the limit is shared, but before a request meets it, the
lower criticality classes are shed — a per-class refusal probability raised, lowest class
first, while requests are being turned away at the limit, and lowered, highest class first,
once there is room again (DAGOR's admission levels, applied at the edge) — and a quarter of
the limit (none below 4) is theirs to leave to the critical. The critical count only against
each other, up to the limit plus a trunk of their own (as telephone exchanges keep lines for
priority calls): under overload the sheddable go before the default, and those before the
critical.

:class:`FixedLimit` is what the gateway did before (a fixed number in flight, no classes): a
setting, kept to compare against.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mt_core.criticality import Criticality

# Classes the shedder may refuse before the limit, lowest first (the async platform does not
# come through the gateway); CRITICAL meets only the limit.
SHED_ORDER = (Criticality.SHEDDABLE, Criticality.DEFAULT)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Baselines:
    """Per route, its latency without queueing: the median of the route's last ``window``
    requests that were admitted into an empty gate (nothing of ours ahead of them), allowed to
    rise by at most ``rise_per_s`` (a fraction per second of such traffic) — a route that really
    became slower is believed within a minute or so, while a burst of slow ones is not; it
    falls at once. Under a sustained overload no request finds the gate empty and the baseline
    holds, so it cannot excuse the queue it is there to detect."""

    def __init__(self, *, window: int = 32, min_samples: int = 3, rise_per_s: float = 0.01) -> None:
        self.window = window
        self.min_samples = min_samples
        self.rise_per_s = rise_per_s
        self._alone: dict[str, deque[float]] = {}
        self._base: dict[str, float] = {}
        self._updated: dict[str, float] = {}

    def base_s(self, route: str) -> float | None:
        return self._base.get(route)

    def ratio(self, route: str, latency_s: float) -> float | None:
        """``latency_s`` over the route's baseline; None while the route has none yet."""
        base = self._base.get(route)
        return None if base is None else latency_s / max(base, 1e-4)

    def observe(self, route: str, latency_s: float, now: float, *, alone: bool) -> None:
        if not alone:
            return
        samples = self._alone.get(route)
        if samples is None:
            samples = self._alone[route] = deque(maxlen=self.window)
        samples.append(latency_s)
        if len(samples) < self.min_samples:
            return
        median = quantile(list(samples), 0.5)
        base = self._base.get(route)
        if base is not None:
            # Only time with such traffic counts: an idle night is no evidence of a slower route.
            elapsed = min(now - self._updated[route], 10.0)
            median = min(median, base * (1 + self.rise_per_s) ** elapsed)
        self._base[route] = median
        self._updated[route] = now


ROUTE_EMA = 0.1  # weight of a route's newest sample in its moving average


@dataclass(frozen=True)
class LimitSettings:
    initial: int = 16
    minimum: int = 1
    maximum: int = 1_000
    # The window's typical queueing delay the limit holds admitted requests to: a sixth of the
    # 250 ms objective, as a queue's p99 runs several times its median.
    delay_target_ms: float = 40.0
    percentile: float = 0.5
    window_min_s: float = 0.25
    window_min_samples: int = 8

    @property
    def delay_target_s(self) -> float:
        return self.delay_target_ms / 1000


class AdaptiveLimit:
    """The concurrency limit, fed each admitted request's outcome."""

    def __init__(self, settings: LimitSettings | None = None) -> None:
        self.settings = s = settings or LimitSettings()
        self.limit = float(s.initial)
        self.baselines = Baselines()
        self.last_delay_s = 0.0  # the last window's statistic, for the async platform
        self.last_ratio = 1.0  # its median latency over the unloaded one, for metrics
        self.last_queued = False  # whether the last window's requests queued at the gate
        self.last_window_at: float | None = None
        self._delays: list[float] = []
        self._ratios: list[float] = []
        self._by_route: dict[str, float] = {}  # a moving average of each route's delay
        self._in_window: set[str] = set()  # routes sampled in this window
        self._dropped = False
        self._max_in_flight = 0
        self._window_started: float | None = None

    @property
    def value(self) -> int:
        return max(self.settings.minimum, int(self.limit))

    def on_sample(
        self,
        route: str,
        latency_s: float,
        in_flight: int,
        now: float,
        *,
        dropped: bool = False,
        alone: bool = False,
    ) -> None:
        """One admitted request ended after ``latency_s``; ``in_flight`` counts it too;
        ``alone``: it was admitted into an empty gate."""
        if self._window_started is None:
            self._window_started = now
        if dropped:
            self._dropped = True
        else:
            base = self.baselines.base_s(route)
            self.baselines.observe(route, latency_s, now, alone=alone)
            if base is not None:
                delay = max(0.0, latency_s - base)
                self._delays.append(delay)
                self._ratios.append(latency_s / max(base, 1e-4))
                before = self._by_route.get(route, delay)
                self._by_route[route] = (1 - ROUTE_EMA) * before + ROUTE_EMA * delay
                self._in_window.add(route)
        self._max_in_flight = max(self._max_in_flight, in_flight)
        s = self.settings
        if now - self._window_started >= s.window_min_s and (
            self._dropped or len(self._delays) >= s.window_min_samples
        ):
            self._update()
            self._window_started = self.last_window_at = now

    def starved(self, now: float, after_s: float = 2.0) -> None:
        """A request was turned away at the limit while no window has closed for ``after_s``:
        the limit may be too low to let enough through to learn from. Probe one higher."""
        last = self.last_window_at if self.last_window_at is not None else self._window_started
        if last is None:
            self._window_started = now
            return
        if now - last >= after_s:
            self.limit = min(self.settings.maximum, self.limit + 1)
            self.last_window_at = self._window_started = now

    def recent_delay_s(self, now: float, stale_s: float = 2.0) -> float:
        """The last window's statistic, or 0 once no window has closed for ``stale_s``: an
        idle gateway has nothing queued."""
        if self.last_window_at is None or now - self.last_window_at > stale_s:
            return 0.0
        return self.last_delay_s

    def recent_ratio(self, now: float, stale_s: float = 2.0) -> float:
        if self.last_window_at is None or now - self.last_window_at > stale_s:
            return 0.0
        return self.last_ratio

    def _update(self) -> None:
        s = self.settings
        if self._dropped:
            self.limit = max(s.minimum, self.limit / 2)
        elif self._delays:
            # The window's median, or the slowest route's recent average if that is worse: a
            # route of one request in ten (a signup) must not queue unseen behind the median.
            worst = max(self._by_route[r] for r in self._in_window)
            self.last_delay_s = delay = max(quantile(self._delays, s.percentile), worst)
            self.last_ratio = quantile(self._ratios, 0.5)
            target = s.delay_target_s
            in_use = self._max_in_flight >= max(2, self.limit / 2)
            self.last_queued = in_use
            if delay > target and in_use:
                self.limit = max(s.minimum, self.limit * max(0.5, target / delay))
            elif delay > target:
                # Slow, but nothing was queued at the gate (one request at a time, or far below
                # the limit): the cause is elsewhere (background work, a slow dependency), and a
                # lower limit would refuse requests without making any faster.
                pass
            elif self._max_in_flight < self.limit / 2:
                # Not in use: no evidence for more, and a limit far above the use would let
                # the next surge in all at once. Drift down towards twice the peak in use.
                self.limit = max(
                    s.minimum, min(self.limit, max(2 * self._max_in_flight + 2, 0.9 * self.limit))
                )
            elif delay < target / 2:  # well within: probe for more
                self.limit = min(s.maximum, self.limit + 1)
            # between half the target and the target: hold
        self._delays = []
        self._ratios = []
        self._in_window = set()
        self._dropped = False
        self._max_in_flight = 0


@dataclass(frozen=True)
class ShedSettings:
    # How fast a class's refusal probability moves: up while requests meet the limit, down
    # once the limit has room again.
    raise_step: float = 0.1
    lower_step: float = 0.05
    interval_s: float = 0.1


class Shedder:
    """Per-class refusal probabilities in front of the limit (lowest class first)."""

    def __init__(self, settings: ShedSettings | None = None) -> None:
        self.settings = settings or ShedSettings()
        self.p: dict[Criticality, float] = dict.fromkeys(SHED_ORDER, 0.0)
        self._hit = False  # a request met the limit in this interval
        self._full = False  # the limit was all in use at some moment of it
        self._streak = 0  # consecutive intervals with requests turned away at the limit
        self._last: float | None = None

    def note(self, *, hit: bool = False, full: bool = False) -> None:
        self._hit = self._hit or hit
        self._full = self._full or full

    def tick(self, now: float) -> None:
        """Once per interval: escalate if the limit turned requests away in it, by a step that
        doubles while it keeps doing so (a surge is met in a few intervals, a blip by one
        step); de-escalate, a step per interval elapsed, if the limit was never all in use."""
        if self._last is None:
            self._last = now
            return
        steps = int((now - self._last) / self.settings.interval_s + 1e-9)
        if steps < 1:
            return
        self._last = now
        if self._hit:
            self._streak += 1
            self._raise(min(0.5, self.settings.raise_step * 2 ** (self._streak - 1)))
        else:
            self._streak = 0
            if not self._full:
                for _ in range(min(steps, 100)):
                    self._lower()
        self._hit = self._full = False

    def _raise(self, step: float) -> None:
        for cls in SHED_ORDER:
            if self.p[cls] < 1.0:
                spill = self.p[cls] + step - 1.0
                self.p[cls] = min(1.0, round(self.p[cls] + step, 6))
                if spill > 0:
                    self._raise(spill)  # what the class could not take goes to the next
                return

    def _lower(self) -> None:
        for cls in reversed(SHED_ORDER):
            if self.p[cls] > 0.0:
                self.p[cls] = max(0.0, round(self.p[cls] - self.settings.lower_step, 6))
                return

    def shed(self, cls: Criticality, draw: float) -> bool:
        return draw < self.p.get(cls, 0.0)

    def level(self) -> float:
        """0 when nothing is shed; +1 per class fully shed (fractions in between)."""
        return sum(self.p.values())


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    retry_after_s: float = 0.0
    reason: str = ""  # "limit" | "shed" when refused
    alone: bool = False  # admitted into an empty gate: its latency is the route's unloaded one


ADMIT = Verdict(True)
ADMIT_ALONE = Verdict(True, alone=True)
CRITICAL_TRUNK_MIN = 4  # a signup is not turned away because a few others are in progress


def critical_ceiling(limit: int) -> int:
    """How many critical requests may be in flight: they count only against each other (what
    the lower classes hold never blocks them; the latency it adds shrinks the limit, which
    sheds those classes harder), up to the limit plus a trunk of their own — a limit that
    overload has driven to its floor still lets the way in through."""
    return limit + max(CRITICAL_TRUNK_MIN, math.ceil(limit / 4))


SATURATED_REFUSED_SHARE = 0.02  # of the last few seconds' requests: the foreground is saturated
UNQUEUED_PRESSURE_CAP = 0.9  # slowness alone, nothing queued: past the async target, short of 1


@dataclass(frozen=True)
class GateState:
    """A gate at one moment, for metrics and for the async platform."""

    limit: int
    in_flight: int
    pressure: float
    refused_share: float
    latency_ratio: float
    shed_p: dict[Criticality, float]


class Refusals:
    """Refused against admitted over the last few seconds: how crowded the door is."""

    def __init__(self, horizon_s: float = 5.0) -> None:
        self.horizon_s = horizon_s
        self._events: deque[tuple[float, bool]] = deque()
        self.refused = 0
        self.admitted = 0

    def add(self, now: float, refused: bool) -> None:
        self._events.append((now, refused))
        self.refused += refused
        self.admitted += not refused
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.horizon_s:
            _, refused = self._events.popleft()
            self.refused -= refused
            self.admitted -= not refused

    def fraction(self, now: float) -> float:
        self._trim(now)
        total = self.refused + self.admitted
        return self.refused / total if total else 0.0


class Admission:
    """The gate: admit or refuse each request, count what is in flight, learn from outcomes."""

    def __init__(
        self,
        limit: AdaptiveLimit | None = None,
        shedder: Shedder | None = None,
        draw: Callable[[], float] = random.random,
        max_retry_after_s: float = 15.0,
    ) -> None:
        self.limit = limit or AdaptiveLimit()
        self.shedder = shedder or Shedder()
        self.in_flight = 0
        self.critical_in_flight = 0
        self.refusals = Refusals()
        self._draw = draw
        self.max_retry_after_s = max_retry_after_s

    def admit(self, cls: Criticality, now: float) -> Verdict:
        self.shedder.tick(now)
        if self.in_flight == 0:  # work-conserving: an idle gate turns nobody away
            self._enter(now, full=False, critical=cls is Criticality.CRITICAL)
            return ADMIT_ALONE
        limit = self.limit.value
        critical = cls is Criticality.CRITICAL
        if critical:
            busy, ceiling = self.critical_in_flight, critical_ceiling(limit)
        else:
            if self.shedder.shed(cls, self._draw()):
                self.refusals.add(now, True)
                return Verdict(False, self._retry_after(cls, now), "shed")
            busy, ceiling = self.in_flight, limit - limit // 4
        if busy >= ceiling:
            self.shedder.note(hit=True)  # the lower classes must make room
            self.limit.starved(now)
            self.refusals.add(now, True)
            return Verdict(False, self._retry_after(cls, now), "limit")
        return self._enter(now, full=busy + 1 >= ceiling, critical=critical)

    def _enter(self, now: float, *, full: bool, critical: bool) -> Verdict:
        self.in_flight += 1
        self.critical_in_flight += critical
        self.shedder.note(full=full)
        self.refusals.add(now, False)
        return ADMIT

    def done(
        self,
        route: str,
        latency_s: float,
        now: float,
        *,
        cls: Criticality = Criticality.DEFAULT,
        dropped: bool = False,
        alone: bool = False,
    ) -> None:
        self.limit.on_sample(route, latency_s, self.in_flight, now, dropped=dropped, alone=alone)
        self.in_flight -= 1
        self.critical_in_flight -= cls is Criticality.CRITICAL

    def _retry_after(self, cls: Criticality, now: float) -> float:
        """Come back when there may be room: a second while the door is merely busy, more the
        larger the share turned away (the crowd waiting to retry), and more for lower classes,
        whose refusal probability says how deep the overload goes."""
        crowd = self.refusals.fraction(now)
        depth = self.shedder.p.get(cls, 0.0)
        wait = (1.0 + depth * 2) / max(0.1, 1.0 - crowd)
        return min(self.max_retry_after_s, wait)

    def state(self, now: float) -> GateState:
        self.shedder.tick(now)  # an idle gate still lowers its refusal probabilities
        return GateState(
            limit=self.limit.value,
            in_flight=self.in_flight,
            pressure=self.pressure(now),
            refused_share=self.refusals.fraction(now),
            latency_ratio=self.limit.recent_ratio(now),
            shed_p=dict(self.shedder.p),
        )

    def pressure(self, now: float) -> float:
        """The foreground's health for whoever yields to it (the async platform): 0 while
        admitted requests take their unloaded time, 1 at the delay target (where the limit
        starts to shrink), and at least 1 plus the share refused while the gate is turning away a
        share of its requests (a burst cut short now and then is not saturation).

        Slowness with nothing queued at the gate (a lone client polling while the async
        platform's work shares the cores) stays below 1: the async platform slows down for it
        but does not stop — deferring a celebrity's join because a lone request a second waited
        behind it would defer it for as long as anyone at all is using the app."""
        p = self.limit.recent_delay_s(now) / self.limit.settings.delay_target_s
        if not self.limit.last_queued:
            p = min(p, UNQUEUED_PRESSURE_CAP)
        refused = self.refusals.fraction(now)
        if refused >= SATURATED_REFUSED_SHARE:
            p = max(p, 1.0 + refused + self.shedder.level())
        return p


class FixedLimit:
    """The old admission: ``max_in_flight`` requests, whatever their class or latency."""

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.refusals = Refusals()

    def admit(self, cls: Criticality, now: float) -> Verdict:
        if self.in_flight >= self.max_in_flight:
            self.refusals.add(now, True)
            return Verdict(False, 1.0, "limit")
        self.in_flight += 1
        self.refusals.add(now, False)
        return ADMIT

    def done(
        self,
        route: str,
        latency_s: float,
        now: float,
        *,
        cls: Criticality = Criticality.DEFAULT,
        dropped: bool = False,
        alone: bool = False,
    ) -> None:
        self.in_flight -= 1

    def state(self, now: float) -> GateState:
        refused = self.refusals.fraction(now)
        return GateState(
            limit=self.max_in_flight,
            in_flight=self.in_flight,
            pressure=1.0 + refused if refused else 0.0,
            refused_share=refused,
            latency_ratio=0.0,  # not measured
            shed_p={},
        )
