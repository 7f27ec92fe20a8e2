"""What a worker does with a failure: how long to back off, whether it means congestion, and
the reasons written on dead letters. Pure functions, so they are tested without a broker."""

from __future__ import annotations

import random

from mt_core.errors import MinithreadsError, RateLimited

MAX_REASON_CHARS = 1_000  # a header, not a log: keep records small


class Permanent(Exception):
    """Raised by a handler for a job that can never succeed: it is dead-lettered at once."""


def backoff_ms(retry: int, *, base_ms: int, cap_ms: int, rng: random.Random | None = None) -> int:
    """The delay before retry number ``retry`` (1 = the first): exponential, capped, with full
    jitter (uniform in [0, min(cap, base * 2**(retry-1))]) so that jobs that failed together
    (a dependency blipped) do not come back together."""
    ceiling = min(cap_ms, base_ms * 2 ** max(0, retry - 1))
    return round((rng or random).uniform(0, ceiling))


def is_congestion(error: BaseException | None) -> bool:
    """A failure that says "the downstream is saturated or away" rather than "this job is bad":
    our retriable errors (Unavailable, Overloaded, RateLimited, Aborted, DeadlineExceeded) and
    timeouts or broken connections raised by the libraries underneath."""
    if error is None:
        return False
    if isinstance(error, MinithreadsError):
        return error.retriable
    return isinstance(error, TimeoutError | ConnectionError)


def is_backpressure(error: BaseException | None) -> bool:
    """A downstream's explicit "not now" (overloaded, rate limited): the job is fine, the
    moment is not. It cuts the kind's rate and costs the job no attempt."""
    return isinstance(error, RateLimited)


def _clip(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"


def permanent_reason(error: BaseException) -> str:
    return _clip(f"permanent: {error}")


def exhausted_reason(error: BaseException) -> str:
    return _clip(f"attempts_exhausted: {type(error).__name__}: {error}")


DEADLINE_EXCEEDED = "deadline_exceeded"
