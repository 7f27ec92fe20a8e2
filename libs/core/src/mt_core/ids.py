"""Ids that sort by time, and the clock they use.

An id is 16 hex digits of microseconds since the epoch followed by 8 random hex digits: ids of
the same kind compare (as strings, and as KV key bytes) in creation order, which is what lets a
timeline be a reverse prefix scan, and two processes never mint the same one in practice.
"""

from __future__ import annotations

import secrets
import time

ID_LENGTH = 24


def now_us() -> int:
    return time.time_ns() // 1_000


def new_id(at_us: int | None = None) -> str:
    return f"{now_us() if at_us is None else at_us:016x}{secrets.token_hex(4)}"


def time_of(id_: str) -> int:
    """The creation time (µs) encoded in an id from :func:`new_id`; 0 if it is not one."""
    if len(id_) != ID_LENGTH:
        return 0
    try:
        return int(id_[:16], 16)
    except ValueError:
        return 0


def is_id(id_: str) -> bool:
    return len(id_) == ID_LENGTH and all(c in "0123456789abcdef" for c in id_)
