"""How long to wait before retrying: exponential backoff with full jitter, honouring Retry-After.

Full jitter (a uniform wait in ``[0, min(cap, base * 2**attempt)]``) spreads out clients that
failed together — after a load-shedding 503 during a signup surge, thousands of them — so
their retries do not arrive as a second synchronized wave.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

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
