"""Refusals over a quota answered in the client, without a call (client-side throttling).

A primary that refuses a keyspace over its quota says when its bucket will hold a token again
(``OverQuota.retry_after_s``). Until then every further part of that keyspace for that primary
would be refused too, so the client refuses it itself: the same typed error, with the time
left. The primary's bucket still decides every call that is sent, so the admitted rate is the
quota's, and a keyspace offered many times its quota costs the primaries about one refusal per
refill instead of one per request (Google SRE's client-side throttling, exact here because the
primary names the time). A refusal is held here for at most ``MAX_HOLD_S``: the shard manager
may raise or lift the quota meanwhile, and the client would not hear of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mt_kv_contract.errors import OverQuota

__all__ = ["QuotaGate"]

MAX_HOLD_S = 0.1  # a quota raised or lifted meanwhile is seen within this long


class QuotaGate:
    """Per (primary address, keyspace): refused until when (monotonic seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[tuple[str, str], float] = {}

    def learn(self, addr: str, keyspace: str, error: OverQuota) -> None:
        """``addr`` refused ``keyspace`` with ``error``: refuse it here for its retry_after
        (at most ``MAX_HOLD_S``: the bucket's rate may have changed since)."""
        if error.retry_after_s > 0:
            self._until[addr, keyspace] = self._clock() + min(error.retry_after_s, MAX_HOLD_S)

    def refused(self, addr: str, keyspace: str) -> OverQuota | None:
        """The refusal for a part of ``keyspace`` to ``addr`` if its bucket is still empty."""
        if not self._until:
            return None
        until = self._until.get((addr, keyspace))
        if until is None:
            return None
        left = until - self._clock()
        if left <= 0:
            del self._until[addr, keyspace]
            return None
        return OverQuota(f"keyspace {keyspace!r} is over its quota", retry_after_s=left)
