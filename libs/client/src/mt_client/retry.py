"""When to retry and how long to wait: a retry budget, and exponential backoff with full jitter
honouring Retry-After.

Full jitter (a uniform wait in ``[0, min(cap, base * 2**attempt)]``) spreads out clients that
failed together — after a load-shedding 503 during a signup surge, thousands of them — so
their retries do not arrive as a second synchronized wave. The budget (Finagle's
RetryBudget, gRPC's retry throttling) keeps retries a small share of what a client sends:
when the server refuses most requests, clients that retried each one several times would
multiply the very load it is refusing.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

_MAX_EXPONENT = 32  # beyond this the cap applies anyway; keeps 2**attempt a sane float


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.1
    cap_s: float = 5.0
    # A server's Retry-After is obeyed up to this long, so one odd header cannot stall a call.
    max_retry_after_s: float = 30.0

    def delay_s(
        self,
        attempt: int,
        retry_after_s: float | None = None,
        uniform: Callable[[], float] = random.random,
    ) -> float:
        """The wait before retry number ``attempt`` (0-based). With a Retry-After, that (capped)
        is the minimum, and the jitter comes on top so clients told the same moment do not all
        return at that moment."""
        jitter = uniform() * min(self.cap_s, self.base_s * 2.0 ** min(attempt, _MAX_EXPONENT))
        if retry_after_s is None:
            return jitter
        return min(retry_after_s, self.max_retry_after_s) + jitter


@dataclass
class RetryBudget:
    """Retries may add up to ``ratio`` of the requests sent over the last ``window_s``, plus
    ``min_per_s`` a second so that a client that sends little can still retry at all."""

    ratio: float = 0.2
    min_per_s: float = 0.5
    window_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _requests: deque[float] = field(default_factory=deque)
    _retries: deque[float] = field(default_factory=deque)

    def sent(self) -> None:
        """A first attempt went out."""
        self._requests.append(self.clock())

    def spend(self) -> bool:
        """Whether one more retry fits; if so it is counted."""
        now = self.clock()
        for times in (self._requests, self._retries):
            while times and times[0] < now - self.window_s:
                times.popleft()
        allowed = self.ratio * len(self._requests) + self.min_per_s * self.window_s
        if len(self._retries) >= allowed:
            return False
        self._retries.append(now)
        return True
