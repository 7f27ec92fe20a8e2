"""Overload control inside a service (after WeChat's DAGOR): while this process, or what it
waits on, is saturated, refuse the lowest criticality classes first.

The gateway's admission bounds the foreground; what reaches a service beyond it is the async
platform's work and the foreground's own bursts. A service measures its event loop's lag —
how late a timer fires is how long any request waits before it is even looked at — and
whatever else it is given to watch (its KV client's commit latency against a target). Each
window in which either is past its target raises the admission level by one class (ASYNC
refused first, then SHEDDABLE, then DEFAULT; CRITICAL never); each calm window lowers it again.
A class is refused only while a higher one has been seen in the last second: yielding is for
someone's sake, and a service busy with the async platform's work alone leaves that work's
pace to the platform's own limits.
A refusal is :class:`~mt_core.errors.Overloaded`: the caller backs off (the async platform cuts
the kind's rate, the gateway answers 503 with Retry-After).

:class:`LevelController` is the arithmetic on a clock passed in; :class:`ServiceAdmission`
runs it on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from mt_core.criticality import Criticality

_LEVELS = (Criticality.ASYNC, Criticality.SHEDDABLE, Criticality.DEFAULT)

LEVEL = Gauge("rpc_admission_level", "Lowest criticality admitted (0 async .. 2 default)")
LOOP_LAG = Gauge("rpc_loop_lag_seconds", "Event-loop lag, 90th percentile of the last window")
REFUSED = Counter(
    "rpc_refused_total", "Calls refused as overloaded, by criticality", ["criticality"]
)


class LevelController:
    """Which classes are admitted, moved one class per window by the window's evidence."""

    def __init__(self, *, lag_target_ms: float = 20.0, window_s: float = 0.5) -> None:
        self.lag_target_ms = lag_target_ms
        self.window_s = window_s
        self.level = Criticality.ASYNC  # everything is admitted
        self.last_lag_ms = 0.0
        self.windows = 0  # closed so far
        self._lags: list[float] = []
        self._pressed = False
        self._window_started: float | None = None

    def admits(self, cls: Criticality) -> bool:
        return cls >= self.level

    def observe_lag(self, lag_ms: float, now: float) -> None:
        self._lags.append(lag_ms)
        self._maybe_close(now)

    def observe_pressure(self, ratio: float) -> None:
        """Something this service waits on, as a ratio to its target (> 1: past it)."""
        if ratio > 1.0:
            self._pressed = True

    def _maybe_close(self, now: float) -> None:
        if self._window_started is None:
            self._window_started = now
            return
        if now - self._window_started < self.window_s:
            return
        self._window_started = now
        self.windows += 1
        ordered = sorted(self._lags)
        self.last_lag_ms = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)] if ordered else 0.0
        index = _LEVELS.index(self.level)
        if self.last_lag_ms > self.lag_target_ms or self._pressed:
            self.level = _LEVELS[min(len(_LEVELS) - 1, index + 1)]
        elif self.last_lag_ms < self.lag_target_ms / 2:
            self.level = _LEVELS[max(0, index - 1)]
        self._lags = []
        self._pressed = False


class ServiceAdmission:
    """The controller, fed by a timer on the running loop and by the watched dependencies."""

    INTERVAL_S = 0.02
    YIELD_WINDOW_S = 1.0

    def __init__(
        self, controller: LevelController | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.controller = controller or LevelController()
        self._clock = clock
        self._watched: list[Callable[[], float]] = []
        self._task: asyncio.Task[None] | None = None
        self._refused = {cls: REFUSED.labels(cls.label) for cls in Criticality}
        self._seen = dict.fromkeys(Criticality, -math.inf)  # class -> when last called

    def watch(self, ratio: Callable[[], float]) -> None:
        """Also count as overload ``ratio() > 1`` (e.g. KV commit latency over its target)."""
        self._watched.append(ratio)

    def admits(self, cls: Criticality) -> bool:
        now = self._clock()
        self._seen[cls] = now
        if self.controller.admits(cls):
            return True
        higher = max(t for c, t in self._seen.items() if c > cls)
        if now - higher > self.YIELD_WINDOW_S:
            return True  # nobody more important is waiting
        self._refused[cls].inc()
        return False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="overload-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.INTERVAL_S
            await asyncio.sleep(self.INTERVAL_S)
            now = loop.time()
            for ratio in self._watched:
                self.controller.observe_pressure(ratio())
            self.controller.observe_lag(max(0.0, (now - due) * 1000), now)
            LEVEL.set(int(self.controller.level))
            LOOP_LAG.set(self.controller.last_lag_ms / 1000)
