"""Tenant quotas at the shard manager: each keyspace's quota split across the primaries.

A keyspace's quota (keys read or written per second) is enforced where its requests are
served, by the primaries (``mt_kv.replica.quotas``). Each replica gets a share in proportion to
the demand it reports for the keyspace (offered keys per second, refused ones included, so a
share does not shrink because it was enforced), with a floor so that a primary whose demand
appears is served while its reports catch up; the shares of the replicas leading shards sum to
the quota.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping

from mt_core.errors import InvalidArgument
from mt_proto import kv_pb2 as pb

FLOOR = 0.05  # of a replica's even share: the least a serving replica gets


def parse(spec: str) -> dict[str, float]:
    """``"keyspace=ops_s,..."`` (``MT_KV_QUOTAS``) as a dict."""
    quotas: dict[str, float] = {}
    for part in spec.split(","):
        if part.strip():
            keyspace, _, ops = part.partition("=")
            quotas[keyspace.strip()] = validated(keyspace.strip(), float(ops))
    return quotas


def validated(keyspace: str, ops_s: float) -> float:
    if not keyspace:
        raise InvalidArgument("a quota needs a keyspace", code="bad_quota")
    if not math.isfinite(ops_s) or ops_s < 0:
        raise InvalidArgument(
            f"a quota is a number of operations per second >= 0, not {ops_s}", code="bad_quota"
        )
    return ops_s


class Quotas:
    """The quotas — configured (``MT_KV_QUOTAS``), then as set at run time (saved with the
    manager's state) — and the load the replicas last reported."""

    def __init__(self, configured: Mapping[str, float]) -> None:
        self.configured = dict(configured)
        self.overrides: dict[str, float] = {}  # set at run time; 0: none
        self.limits: dict[str, float] = {}
        self.load: dict[str, dict[str, pb.KeyspaceLoad]] = {}  # replica -> keyspace -> load
        self._settle()

    def set(self, keyspace: str, ops_s: float) -> None:
        """Set ``keyspace``'s quota (0: none)."""
        self.overrides[keyspace] = validated(keyspace, ops_s)
        self._settle()

    def restore(self, overrides: Mapping[str, float]) -> None:
        self.overrides = dict(overrides)
        self._settle()

    def _settle(self) -> None:
        merged = self.configured | self.overrides
        self.limits = {k: v for k, v in merged.items() if v > 0}

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
        return [self.use_of(keyspace, live) for keyspace in sorted(self.limits)]

    def use_of(self, keyspace: str, live: Collection[str]) -> pb.QuotaUse:
        reports = [self.load.get(r, {}).get(keyspace) for r in live]
        found = [entry for entry in reports if entry is not None]
        return pb.QuotaUse(
            keyspace=keyspace,
            ops_s=self.limits.get(keyspace, 0.0),
            offered_per_s=sum(e.offered_per_s for e in found),
            refused_per_s=sum(e.refused_per_s for e in found),
        )
