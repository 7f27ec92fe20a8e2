"""Deadline propagation: an inbound call's deadline bounds every outbound call it makes.

The server side records the absolute deadline of the request being served in a context
variable; the client interceptor gives each outbound call the smaller of its own timeout and
what is left, so a slow hop cannot keep working for a caller that has already given up.
"""

from __future__ import annotations

import contextvars
import time

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "mt_deadline", default=None
)


def set_remaining(remaining_s: float | None) -> contextvars.Token[float | None]:
    """Start a scope whose deadline is ``remaining_s`` from now (None = no deadline)."""
    absolute = None if remaining_s is None else time.monotonic() + remaining_s
    return _deadline.set(absolute)


def reset(token: contextvars.Token[float | None]) -> None:
    _deadline.reset(token)


def remaining_s() -> float | None:
    """Seconds left in the current scope, never below zero; None when there is no deadline."""
    absolute = _deadline.get()
    return None if absolute is None else max(0.0, absolute - time.monotonic())


def effective_timeout_s(own_timeout_s: float | None) -> float | None:
    """The timeout an outbound call should use: its own, cut to what the caller has left."""
    left = remaining_s()
    if left is None:
        return own_timeout_s
    if own_timeout_s is None:
        return left
    return min(own_timeout_s, left)
