"""Keyspaces a replica refused over their quota, held at the client until it said to come back.

A replica refuses a keyspace over its quota with the time until its bucket holds a token
again (``OverQuota.retry_after_s``). Until then it would refuse that keyspace's every request,
so the client refuses them itself, without an RPC: a keyspace over its quota slows itself at
its own client, and neither the client's CPU nor the replica's goes to asking and refusing.
Holds are per replica (each has its own share of the quota) and apply to reads and writes
alike, as the replica's bucket does. The keys refused here ride to the replica with the next
batch sent to it (``held``): it reports them as demand, refused — the shard manager splits a
quota by the demand each replica reports, and ``kv status`` shows what tenants were refused.
A full keyspace (``OverBytesQuota``) is not held: its replica still takes deletes.
"""

from __future__ import annotations

from collections.abc import Callable

from mt_kv_contract.errors import OverBytesQuota, OverQuota


class Holds:
    """``(replica address, keyspace) -> until when`` on ``clock``; ``refused`` counts the
    calls answered here."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._until: dict[tuple[str, str], float] = {}
        self._held: dict[str, dict[str, int]] = {}  # addr -> keyspace -> keys, not yet told
        self.refused = 0

    def hold(self, addr: str, keyspace: str, answer: object) -> None:
        """Hold ``keyspace`` at ``addr`` if ``answer`` (of a call of it) is a refusal over
        its rate quota."""
        if isinstance(answer, OverQuota) and not isinstance(answer, OverBytesQuota):
            self._until[addr, keyspace] = self._clock() + answer.retry_after_s

    def check(self, addr: str, keyspace: str, keys: int = 1) -> OverQuota | None:
        """The refusal for a call of ``keys`` of ``keyspace`` to ``addr`` now, or None to
        send it."""
        if not self._until:
            return None
        until = self._until.get((addr, keyspace))
        if until is None:
            return None
        left = until - self._clock()
        if left <= 0:
            del self._until[addr, keyspace]
            return None
        self.refused += 1
        held = self._held.setdefault(addr, {})
        held[keyspace] = held.get(keyspace, 0) + keys
        return OverQuota(f"keyspace {keyspace!r} is over its quota", retry_after_s=left)

    def take(self, addr: str) -> dict[str, int]:
        """The keys refused here for ``addr`` since the last take: for the batch going there."""
        return self._held.pop(addr, {}) if self._held else {}
