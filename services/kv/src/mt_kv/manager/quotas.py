"""Tenant quotas at the shard manager: each keyspace's quota split across the primaries.

A keyspace's quota (keys read or written per second) is enforced where its requests are
served, by the primaries (``mt_kv.replica.quotas``). Each replica gets a share in proportion to
the demand it reports for the keyspace (offered keys per second, refused ones included, so a
share does not shrink because it was enforced), with a floor so that a primary whose demand
appears is served while its reports catch up; the shares of the replicas leading shards sum to
the quota.

A keyspace may also have a quota of bytes stored (partitions, keys and values): each primary
reports the bytes of the shards it leads, the manager sums them, and a keyspace at its quota is
*full* — its primaries refuse writes that may grow it (deletes pass) until it is back under
``REFILL`` of the quota (hysteresis: a keyspace at the edge does not flap).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from mt_core.errors import InvalidArgument
from mt_proto import kv_pb2 as pb

FLOOR = 0.05  # of a replica's even share: the least a serving replica gets
REFILL = 0.95  # a full keyspace takes growing writes again below this share of its bytes


def parse(spec: str) -> dict[str, tuple[float, float]]:
    """``"keyspace=ops_s[/bytes],..."`` (``MT_KV_QUOTAS``) as a dict of (ops_s, bytes)."""
    quotas: dict[str, tuple[float, float]] = {}
    for part in spec.split(","):
        if part.strip():
            keyspace, _, limits = part.partition("=")
            ops, _, stored = limits.partition("/")
            quotas[keyspace.strip()] = (
                validated(keyspace.strip(), float(ops or 0)),
                validated(keyspace.strip(), float(stored or 0), "bytes stored"),
            )
    return quotas


def validated(keyspace: str, limit: float, of: str = "operations per second") -> float:
    if not keyspace:
        raise InvalidArgument("a quota needs a keyspace", code="bad_quota")
    if not math.isfinite(limit) or limit < 0:
        raise InvalidArgument(f"a quota is a number of {of} >= 0, not {limit}", code="bad_quota")
    return limit


class Quotas:
    """The quotas — configured (``MT_KV_QUOTAS``), then as set at run time (saved with the
    manager's state) — and the load the replicas last reported."""

    def __init__(self, configured: Mapping[str, tuple[float, float]]) -> None:
        self.configured = dict(configured)
        self.overrides: dict[str, tuple[float, float]] = {}  # set at run time; 0: none
        self.limits: dict[str, float] = {}  # keyspace -> keys per second
        self.bytes_limits: dict[str, float] = {}  # keyspace -> bytes stored
        self.full: set[str] = set()  # keyspaces at their bytes quota
        self.load: dict[str, dict[str, pb.KeyspaceLoad]] = {}  # replica -> keyspace -> load
        self._settle()

    def set(self, keyspace: str, ops_s: float, stored: float = 0.0) -> None:
        """Set ``keyspace``'s quotas of keys per second and bytes stored (0: none)."""
        self.overrides[keyspace] = (
            validated(keyspace, ops_s),
            validated(keyspace, stored, "bytes stored"),
        )
        self._settle()

    def restore(self, overrides: Mapping[str, Any]) -> None:
        # (saved before bytes quotas: a number, the keys per second)
        self.overrides = {
            k: (float(v), 0.0) if isinstance(v, int | float) else (float(v[0]), float(v[1]))
            for k, v in overrides.items()
        }
        self._settle()

    def _settle(self) -> None:
        merged = self.configured | self.overrides
        self.limits = {k: ops for k, (ops, _) in merged.items() if ops > 0}
        self.bytes_limits = {k: stored for k, (_, stored) in merged.items() if stored > 0}
        self.full &= set(self.bytes_limits)

    def keyspaces(self) -> list[str]:
        """Every keyspace with a quota of either kind."""
        return sorted(set(self.limits) | set(self.bytes_limits))

    def update_full(self, live: Collection[str]) -> list[str]:
        """Which keyspaces are full now, by the ``live`` replicas' reports (sorted)."""
        for keyspace, limit in self.bytes_limits.items():
            used = self.used_bytes(keyspace, live)
            if used >= limit:
                self.full.add(keyspace)
            elif used < REFILL * limit:
                self.full.discard(keyspace)
        return sorted(self.full)

    def used_bytes(self, keyspace: str, live: Collection[str]) -> int:
        """Bytes stored in ``keyspace``: each primary reports the shards it leads."""
        entries = (self.load.get(r, {}).get(keyspace) for r in live)
        return sum(e.bytes for e in entries if e is not None)

    def observe(self, replica: str, load: Iterable[pb.KeyspaceLoad]) -> None:
        self.load[replica] = {entry.keyspace: entry for entry in load}

    def shares(self, replica: str, serving: Collection[str]) -> dict[str, float]:
        """``replica``'s rate of each keyspace with a quota; ``serving``: the live replicas
        leading shards (a replica not among them gets the floor)."""
        return {k: self._share(q, replica, serving, k) for k, q in self.limits.items()}

    def _share(self, quota: float, replica: str, serving: Collection[str], keyspace: str) -> float:
        floor = FLOOR * quota / max(len(serving), 1)
        if replica not in serving:
            return floor
        weights = {r: max(self._offered(r, keyspace), floor) for r in serving}
        return quota * weights[replica] / sum(weights.values())

    def _offered(self, replica: str, keyspace: str) -> float:
        entry = self.load.get(replica, {}).get(keyspace)
        return entry.offered_per_s if entry is not None else 0.0

    def use(self, live: Collection[str]) -> list[pb.QuotaUse]:
        """Each quota and its use, summed over the ``live`` replicas' reports."""
        return [self.use_of(keyspace, live) for keyspace in self.keyspaces()]

    def use_of(self, keyspace: str, live: Collection[str]) -> pb.QuotaUse:
        reports = [self.load.get(r, {}).get(keyspace) for r in live]
        found = [entry for entry in reports if entry is not None]
        return pb.QuotaUse(
            keyspace=keyspace,
            ops_s=self.limits.get(keyspace, 0.0),
            offered_per_s=sum(e.offered_per_s for e in found),
            refused_per_s=sum(e.refused_per_s for e in found),
            bytes=self.bytes_limits.get(keyspace, 0.0),
            used_bytes=self.used_bytes(keyspace, live),
            full=keyspace in self.full,
        )
