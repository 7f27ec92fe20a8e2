"""Tenant quotas at a primary, and the load it reports.

Each keyspace with a quota has a token bucket here whose rate is this replica's share of the
quota (the shard manager splits a quota by where its demand is: ``mt_kv.manager.quotas``).
Operations are keys: a write of ten keys is ten. A request is admitted while its keyspace's
bucket holds any token and then charged in full (the bucket may go into debt), so a batch
larger than the bucket still goes through, and the rate holds on average. A refusal is a dict
lookup and some arithmetic, before any check, log entry or lease wait: it must cost far less
than the work it refuses. A keyspace refused in the last ``PRESSED_S`` is *pressed*: its
writes that are admitted wait for the replica's next over-quota turn and go out together
(``Requests.over_quota``) — it slows itself, and what it may do costs the replicas one log
transaction per turn instead of one per request. The offered and refused keys per keyspace
(with those its clients refused themselves while it held them off, ``held_by_client``)
go to the shard manager with each heartbeat, as rates, with the bytes stored of the shards
this replica leads; a keyspace the manager says is full (at its bytes quota) gets its writes
that may grow it refused — puts and increments; deletes pass.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from mt_kv_contract.errors import OverBytesQuota, OverQuota
from mt_proto import kv_pb2 as pb

from mt_kv.replica.load import decay

BURST_S = 0.5  # a bucket holds at most this long of its rate (several over-quota turns)
PRESSED_S = 1.0  # a keyspace refused this recently is at its quota (its writes wait a turn)
RATE_HALF_LIFE_S = 1.0  # of the reported rates (an exponentially weighted average)
MAX_RETRY_AFTER_S = 5.0
# Sooner a refused client would only be refused again, an RPC each time; its bucket keeps
# BURST_S of its rate meanwhile, so waiting this long loses it nothing it was due.
MIN_RETRY_AFTER_S = 0.05
FULL_RETRY_AFTER_S = 1.0  # a full keyspace stays full until deletes free its bytes


@dataclass
class Bucket:
    rate: float  # tokens (keys) per second
    tokens: float
    at: float  # when ``tokens`` was last brought up to date
    refused_at: float = float("-inf")

    def refill(self, now: float) -> None:
        self.tokens = min(self.tokens + (now - self.at) * self.rate, self.rate * BURST_S)
        self.at = now

    def wait_s(self) -> float:
        """How long a refused client should wait: until the bucket holds a token again, and
        at least ``MIN_RETRY_AFTER_S``."""
        wait_s = max(-self.tokens, 1.0) / max(self.rate, 1e-3)
        return min(max(wait_s, MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)


class Quotas:
    """The buckets of one replica and its per-keyspace load (see the module's docstring)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.buckets: dict[str, Bucket] = {}
        self._offered: defaultdict[str, int] = defaultdict(int)  # since the last report
        self._refused: defaultdict[str, int] = defaultdict(int)
        self._rates: dict[str, tuple[float, ...]] = {}  # keyspace -> (offered, refused)/s
        self._reported_at = clock()
        self.full: frozenset[str] = frozenset()  # keyspaces at their bytes quota

    def set_shares(self, shares: Mapping[str, float]) -> None:
        """Follow the shard manager: each keyspace's rate here (a keyspace left out has no
        quota)."""
        now = self._clock()
        for keyspace in [k for k in self.buckets if k not in shares]:
            del self.buckets[keyspace]
        for keyspace, rate in shares.items():
            bucket = self.buckets.get(keyspace)
            if bucket is None:
                self.buckets[keyspace] = Bucket(rate, rate * BURST_S, now)
            else:
                bucket.refill(now)
                bucket.rate = rate

    def admit(self, keys: Mapping[str, int]) -> None:
        """Charge a request of ``keys`` (keyspace -> keys), or refuse all of it with
        :class:`OverQuota` (nothing charged) if a keyspace's bucket is empty."""
        offered = self._offered
        for keyspace, n in keys.items():
            offered[keyspace] += n
        if not self.buckets:
            return
        now = self._clock()
        charged = []
        for keyspace in keys:
            bucket = self.buckets.get(keyspace)
            if bucket is None:
                continue
            bucket.refill(now)
            if bucket.tokens <= 0:
                bucket.refused_at = now
                for k, n in keys.items():
                    self._refused[k] += n
                raise OverQuota(
                    f"keyspace {keyspace!r} is over its quota", retry_after_s=bucket.wait_s()
                )
            charged.append((bucket, keys[keyspace]))
        for bucket, n in charged:
            bucket.tokens -= n

    def held_by_client(self, keys: Mapping[str, int]) -> None:
        """Count ``keys`` (keyspace -> keys) a client refused itself, holding the keyspace as
        this replica told it to, as offered here and refused: the demand the split follows."""
        for keyspace, n in keys.items():
            self._offered[keyspace] += n
            self._refused[keyspace] += n

    def pressed(self, keyspaces: Iterable[str]) -> bool:
        """Whether every one of ``keyspaces`` is at its quota (refused within ``PRESSED_S``)
        and its bucket holds tokens: a request that would be admitted, of a keyspace that
        is asking for more than it may have."""
        if not self.buckets:
            return False
        now = self._clock()
        seen = False
        for keyspace in keyspaces:
            bucket = self.buckets.get(keyspace)
            if bucket is None or now - bucket.refused_at > PRESSED_S:
                return False
            bucket.refill(now)
            if bucket.tokens <= 0:
                return False  # refused at once, not held
            seen = True
        return seen

    def admit_growth(self, keyspaces: Iterable[str]) -> None:
        """Refuse a write that may grow a full keyspace (the caller leaves its deletes out)."""
        for keyspace in keyspaces:
            if keyspace in self.full:
                self._refused[keyspace] += 1
                raise OverBytesQuota(
                    f"keyspace {keyspace!r} is at its quota of bytes stored",
                    retry_after_s=FULL_RETRY_AFTER_S,
                )

    def load(self, stored: Mapping[str, int] | None = None) -> list[pb.KeyspaceLoad]:
        """The offered and refused keys per second of each keyspace, averaged over about
        ``RATE_HALF_LIFE_S``, and the bytes ``stored`` of each; called with each heartbeat."""
        now = self._clock()
        elapsed = now - self._reported_at
        if elapsed > 0:
            self._reported_at = now
            counts = {k: (n, self._refused.get(k, 0)) for k, n in self._offered.items()}
            decay(self._rates, counts, elapsed, RATE_HALF_LIFE_S)
            self._offered.clear()
            self._refused.clear()
        return self._report(stored or {})

    def _report(self, stored: Mapping[str, int]) -> list[pb.KeyspaceLoad]:
        out = []
        for keyspace in sorted(set(self._rates) | {k for k, n in stored.items() if n}):
            offered, refused = self._rates.get(keyspace, (0.0, 0.0))
            out.append(
                pb.KeyspaceLoad(
                    keyspace=keyspace,
                    offered_per_s=offered,
                    refused_per_s=refused,
                    bytes=stored.get(keyspace, 0),
                )
            )
        return out
