"""Per-kind back-pressure: an AIMD concurrency limit and the gate that enforces it.

TCP's congestion control, applied to batches in flight: while batches come back fast and
healthy the limit grows by one per "round trip" (after ``limit`` successes), and on a sign of
congestion — a batch slower than the target latency, or a retriable/unavailable error — it is
halved. A halving at most once per target-latency window keeps one burst of slow batches (all
started under the same conditions) from collapsing the limit to its floor.
"""

from __future__ import annotations

import asyncio

from mt_jobs.policy import is_congestion


class AIMDLimit:
    """The limit arithmetic alone (no asyncio), driven by :meth:`observe`."""

    def __init__(self, *, min_limit: int, max_limit: int, target_latency_ms: int) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit, got {min_limit}, {max_limit}")
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.target_latency_ms = target_latency_ms
        self.limit = max(min_limit, min(4, max_limit))
        self._successes = 0
        self._last_decrease_ms: float | None = None

    def observe(self, latency_ms: float, now_ms: float, *, error: BaseException | None) -> None:
        """Feed one batch's outcome. A failure that is not congestion (a bad job) says nothing
        about the downstream, so it neither grows nor shrinks the limit."""
        if latency_ms > self.target_latency_ms or is_congestion(error):
            self.on_congestion(now_ms)
        elif error is None:
            self.on_success()

    def on_success(self) -> None:
        self._successes += 1
        if self._successes >= self.limit:
            self._successes = 0
            self.limit = min(self.max_limit, self.limit + 1)

    def on_congestion(self, now_ms: float) -> None:
        last = self._last_decrease_ms
        if last is not None and now_ms - last < self.target_latency_ms:
            return  # already reacted to this window's congestion
        self._last_decrease_ms = now_ms
        self._successes = 0
        self.limit = max(self.min_limit, self.limit // 2)


class ConcurrencyGate:
    """A semaphore whose size is the limit's current value: a lower limit lets the batches in
    flight finish and admits no new one until they are under it."""

    def __init__(self, limit: AIMDLimit) -> None:
        self.limit = limit
        self.in_flight = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def acquire(self) -> None:
        while self.in_flight >= self.limit.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self.wake()

    def wake(self) -> None:
        """Let waiters re-check (call after the limit grows)."""
        room = self.limit.limit - self.in_flight
        for waiter in self._waiters[: max(0, room)]:
            if not waiter.done():
                waiter.set_result(None)
