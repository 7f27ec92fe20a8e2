"""The KV client's holds: a keyspace refused over its rate quota is refused at the client, per
replica, until the time the replica gave; a full keyspace is not held (its deletes pass)."""

from __future__ import annotations

from mt_kv_client.holds import Holds
from mt_kv_contract.errors import OverBytesQuota, OverQuota, StaleEpoch


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_holds__a_refusal_holds_its_keyspace_at_that_replica_until_retry_after() -> None:
    clock = _Clock()
    holds = Holds(clock)
    holds.hold("kv-1", "test", OverQuota("over", retry_after_s=0.5))
    clock.now += 0.2
    refusal = holds.check("kv-1", "test")
    assert isinstance(refusal, OverQuota)
    assert abs(refusal.retry_after_s - 0.3) < 1e-9
    assert holds.check("kv-2", "test") is None  # another replica has its own share
    assert holds.check("kv-1", "bench") is None
    clock.now += 0.3
    assert holds.check("kv-1", "test") is None
    assert holds.refused == 1


def test_holds__the_keys_refused_here_are_told_to_their_replica_once() -> None:
    holds = Holds(_Clock())
    holds.hold("kv-1", "test", OverQuota("over", retry_after_s=0.5))
    holds.hold("kv-2", "test", OverQuota("over", retry_after_s=0.5))
    holds.check("kv-1", "test", 3)
    holds.check("kv-1", "test", 2)
    holds.check("kv-2", "test")
    assert holds.take("kv-1") == {"test": 5}
    assert holds.take("kv-1") == {}
    assert holds.take("kv-2") == {"test": 1}


def test_holds__only_a_rate_refusal_holds() -> None:
    holds = Holds(_Clock())
    holds.hold("kv-1", "full", OverBytesQuota("full", retry_after_s=1.0))
    holds.hold("kv-1", "moved", StaleEpoch("stale"))
    holds.hold("kv-1", "fine", [1, 2])
    assert [holds.check("kv-1", k) for k in ("full", "moved", "fine")] == [None, None, None]
