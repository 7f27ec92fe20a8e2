"""Tenant quotas: a primary's buckets (refusal typed, cheap, nothing charged) and the shard
manager's split of a quota across the primaries by demand."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import pytest
from mt_core.errors import InvalidArgument
from mt_gateway.errors import response_for
from mt_jobs.policy import is_backpressure, is_congestion
from mt_kv.data import ShardData
from mt_kv.manager.core import ShardManager
from mt_kv.manager.quotas import FLOOR, Quotas, parse
from mt_kv.replica.core import Replica
from mt_kv.replica.quotas import BURST_S, MIN_RETRY_AFTER_S, PRESSED_S
from mt_kv.replica.quotas import Quotas as Buckets
from mt_kv.settings import ReplicaSettings
from mt_kv.storage.store import Durable
from mt_kv_client.holds import Holds
from mt_kv_contract.errors import OverBytesQuota, OverQuota, Step, next_step
from mt_proto import kv_pb2 as pb


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _admitted(buckets: Buckets, keyspace: str, n: int) -> bool:
    try:
        buckets.admit({keyspace: n})
    except OverQuota:
        return False
    return True


def test_bucket__admits_its_rate_and_refuses_past_it() -> None:
    clock = Clock()
    buckets = Buckets(clock)
    buckets.set_shares({"noisy": 100.0})
    admitted = 0
    for _ in range(1000):  # 10 s at 100 requests of one key per second asked
        clock.t += 0.01
        admitted += _admitted(buckets, "noisy", 1)
        admitted += _admitted(buckets, "noisy", 1)  # twice the rate is asked
    assert 1000 <= admitted <= 1000 + 100 * BURST_S + 1


def test_bucket__refusal_is_typed_with_retry_after_and_charges_nothing() -> None:
    clock = Clock()
    buckets = Buckets(clock)
    buckets.set_shares({"noisy": 10.0})
    assert _admitted(buckets, "noisy", 30)  # a batch larger than the bucket goes (into debt)
    with pytest.raises(OverQuota) as refused:
        buckets.admit({"noisy": 1})
    assert refused.value.code == "over_quota"
    wait_s = (30 - 10 * BURST_S) / 10  # the debt past a full bucket, at 10 per s
    assert refused.value.retry_after_s == pytest.approx(wait_s, abs=0.01)
    clock.t += wait_s + 0.01
    assert _admitted(buckets, "noisy", 1)  # refusals did not deepen the debt


def test_bucket__a_refusal_asks_for_no_sooner_than_the_least_retry_after() -> None:
    clock = Clock()
    buckets = Buckets(clock)
    buckets.set_shares({"noisy": 1000.0})
    assert _admitted(buckets, "noisy", round(1000 * BURST_S) + 1)  # a token back in 1 ms
    with pytest.raises(OverQuota) as refused:
        buckets.admit({"noisy": 1})
    assert refused.value.retry_after_s == MIN_RETRY_AFTER_S


def test_bucket__a_client_holding_as_told_gets_its_whole_rate_in_few_requests() -> None:
    clock = Clock()
    buckets, holds = Buckets(clock), Holds(clock)
    buckets.set_shares({"noisy": 300.0})
    admitted = asked = 0
    for _ in range(30_000):  # 10 s of 3,000 keys per second asked, 10 times the rate
        clock.t += 1 / 3000
        if holds.check("kv-1", "noisy") is None:
            asked += 1
            try:
                buckets.admit({"noisy": 1})
            except OverQuota as err:
                holds.hold("kv-1", "noisy", err)
            else:
                admitted += 1
    assert 3000 <= admitted <= 3000 + 300 * BURST_S + 1  # its rate, not less
    assert asked < 1.25 * admitted  # the replica was asked little more than it admitted


def test_bucket__other_keyspaces_are_not_limited() -> None:
    buckets = Buckets(Clock())
    buckets.set_shares({"noisy": 1.0})
    assert _admitted(buckets, "noisy", 5)
    assert all(_admitted(buckets, "quiet", 64) for _ in range(1000))


def test_bucket__a_request_touching_a_keyspace_over_quota_is_refused_whole() -> None:
    clock = Clock()
    buckets = Buckets(clock)
    buckets.set_shares({"noisy": 1.0})
    buckets.admit({"noisy": 5})
    with pytest.raises(OverQuota):
        buckets.admit({"quiet": 3, "noisy": 1})
    clock.t += 1.0
    load = {entry.keyspace: entry for entry in buckets.load()}
    assert load["quiet"].refused_per_s > 0
    assert load["noisy"].offered_per_s > load["noisy"].refused_per_s > 0


def test_bucket__quota_removed__no_limit() -> None:
    buckets = Buckets(Clock())
    buckets.set_shares({"noisy": 1.0})
    buckets.admit({"noisy": 5})
    buckets.set_shares({})
    assert _admitted(buckets, "noisy", 5)


def test_load__rates_follow_the_offered_keys() -> None:
    clock = Clock()
    buckets = Buckets(clock)
    for _ in range(100):  # 10 s of 50 keys per 100 ms
        buckets.admit({"posts": 50})
        clock.t += 0.1
        load = buckets.load()
    assert load[0].keyspace == "posts"
    assert load[0].offered_per_s == pytest.approx(500, rel=0.01)
    for _ in range(200):  # idle: the rate decays and the keyspace drops out
        clock.t += 0.1
        load = buckets.load()
    assert load == []


def _report(quotas: Quotas, replica: str, offered: float) -> None:
    quotas.observe(replica, [pb.KeyspaceLoad(keyspace="noisy", offered_per_s=offered)])


def test_manager_shares__follow_demand_and_sum_to_the_quota() -> None:
    quotas = Quotas({"noisy": (300.0, 0.0)})
    serving = ["kv-1", "kv-2", "kv-3"]
    _report(quotas, "kv-1", 600.0)
    _report(quotas, "kv-2", 300.0)
    shares = {r: quotas.shares(r, serving)["noisy"] for r in serving}
    assert sum(shares.values()) == pytest.approx(300.0)
    assert shares["kv-1"] == pytest.approx(2 * shares["kv-2"])
    floor = 300.0 * FLOOR / 3  # kv-3 asks nothing: weighed at the floor
    assert shares["kv-3"] == pytest.approx(300.0 * floor / (600 + 300 + floor))


def test_quota_split__follows_the_demand_a_holding_client_tells() -> None:
    """The loop of manager, replicas and a client that holds as told: a keyspace asking
    1,333 keys/s of a 300/s quota, three quarters of them at kv-2. Without the held keys told to the
    replicas, each reports little more than it admits and the split stays where it began."""
    clock = Clock()
    quotas = Quotas({"noisy": (300.0, 0.0)})
    serving = ["kv-1", "kv-2"]
    buckets = {r: Buckets(clock) for r in serving}
    holds = Holds(clock)
    admitted = dict.fromkeys(serving, 0)
    for tick in range(20_000):  # 20 s in steps of 1 ms
        clock.t += 0.001
        if tick % 100 == 0:  # heartbeats: loads up, shares down
            for r in serving:
                quotas.observe(r, buckets[r].load())
            for r in serving:
                buckets[r].set_shares(quotas.shares(r, serving))
        for r in serving if tick % 3 == 0 else serving[1:]:  # kv-1: a key every 3 ms
            if holds.check(r, "noisy") is not None:
                continue
            try:
                buckets[r].held_by_client(holds.take(r))
                buckets[r].admit({"noisy": 1})
            except OverQuota as err:
                holds.hold(r, "noisy", err)
            else:
                admitted[r] += tick >= 15_000  # the last 5 s
    assert sum(admitted.values()) / 5 == pytest.approx(300, rel=0.05)
    assert admitted["kv-2"] / admitted["kv-1"] == pytest.approx(3, rel=0.15)


def test_load__keys_a_client_held_back_are_offered_and_refused() -> None:
    clock = Clock()
    buckets = Buckets(clock)
    buckets.held_by_client({"noisy": 30})
    clock.t += 1.0
    (load,) = buckets.load()
    assert load.offered_per_s == load.refused_per_s > 0


def test_manager_shares__without_demand_even__off_primaries_the_floor() -> None:
    quotas = Quotas({"noisy": (300.0, 0.0)})
    assert quotas.shares("kv-1", ["kv-1", "kv-2"])["noisy"] == pytest.approx(150.0)
    assert quotas.shares("kv-9", ["kv-1", "kv-2"])["noisy"] == pytest.approx(300 * FLOOR / 2)
    assert quotas.shares("kv-1", ["kv-1", "kv-2"]).keys() == {"noisy"}


def test_manager_quotas__set_overrides_the_configured_and_zero_removes() -> None:
    quotas = Quotas(parse("noisy=300, jobs=50"))
    quotas.set("noisy", 0)
    quotas.set("posts", 10)
    assert quotas.limits == {"jobs": 50.0, "posts": 10.0}
    with pytest.raises(InvalidArgument):
        quotas.set("posts", -1)
    with pytest.raises(InvalidArgument):
        quotas.set("", 5)
    with pytest.raises(InvalidArgument):
        quotas.set("posts", float("nan"))


def test_manager_quotas__survive_a_restart(tmp_path: Path) -> None:
    def manager() -> ShardManager:
        return ShardManager(
            {"kv-1": "a:1", "kv-2": "a:2", "kv-3": "a:3"},
            shards=4,
            microshards=16,
            state_path=tmp_path / "manager.json",
            failover_timeout_ms=1500,
            lease_ms=1000,
            quotas={"jobs": (50.0, 0.0)},
        )

    first = manager()
    first.quotas.set("noisy", 120.0)
    first.quotas.set("jobs", 0.0)
    first.save()
    assert manager().quotas.limits == {"noisy": 120.0}


def test_next_step__over_quota_is_the_callers_answer() -> None:
    err = OverQuota("over", retry_after_s=0.5)
    assert next_step(err, idempotent=True) is Step.ANSWER
    assert next_step(err, idempotent=False) is Step.ANSWER


def test_over_quota__is_back_pressure_for_the_services() -> None:
    err = OverQuota("keyspace 'posts' is over its quota", retry_after_s=0.3)
    response = response_for(err)  # the gateway: 429 with Retry-After
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"
    assert is_backpressure(err)  # an async kind's rate is cut, the job keeps its attempts
    assert is_congestion(err)


def test_shard_data__counts_the_bytes_stored_per_keyspace() -> None:
    data = ShardData()
    data.apply([(("posts", b"p1", b"k"), (b"x" * 10, 1, 0)), (("jobs", b"j", b"k"), (b"y", 1, 0))])
    assert data.bytes == {"posts": 2 + 1 + 10, "jobs": 1 + 1 + 1}
    data.apply([(("posts", b"p1", b"k"), (b"x" * 4, 2, 0))])  # overwritten smaller
    assert data.bytes["posts"] == 2 + 1 + 4
    data.apply([(("posts", b"p1", b"k"), None), (("posts", b"gone", b"k"), None)])
    assert data.bytes["posts"] == 0
    data.replace([(("jobs", b"j", b"k2"), (b"zz", 1, 0))])
    assert data.bytes == {"jobs": 1 + 2 + 2}


def test_bytes_quota__a_full_keyspace_is_refused_growth_until_under_the_refill_mark() -> None:
    quotas = Quotas(parse("posts=0/1000, jobs=50"))
    assert quotas.bytes_limits == {"posts": 1000.0}
    assert quotas.keyspaces() == ["jobs", "posts"]

    def report(stored: int) -> list[str]:
        quotas.observe("kv-1", [pb.KeyspaceLoad(keyspace="posts", bytes=stored)])
        return quotas.update_full(["kv-1", "kv-2"])

    assert report(600) == []
    assert report(1000) == ["posts"]
    assert report(960) == ["posts"]  # hysteresis: not yet under 95%
    assert report(940) == []
    use = quotas.use_of("posts", ["kv-1"])
    assert (use.bytes, use.used_bytes, use.full) == (1000.0, 940, False)


def test_bytes_quota__the_primary_refuses_growth_of_a_full_keyspace_only() -> None:
    buckets = Buckets(Clock())
    buckets.admit_growth(["posts"])  # nothing full: nothing refused
    buckets.full = frozenset({"posts"})
    with pytest.raises(OverQuota) as refused:
        buckets.admit_growth(["jobs", "posts"])
    assert isinstance(refused.value, OverBytesQuota)
    buckets.admit_growth(["jobs"])
    (load,) = [e for e in buckets.load({"posts": 120}) if e.keyspace == "posts"]
    assert load.bytes == 120


def test_bytes_quota__saved_before_bytes_quotas__restores_as_keys_per_second() -> None:
    quotas = Quotas({})
    quotas.restore({"noisy": 120.0, "posts": [0.0, 5e6]})
    assert quotas.limits == {"noisy": 120.0}
    assert quotas.bytes_limits == {"posts": 5e6}


def _pressed_buckets(clock: Clock) -> Buckets:
    """A keyspace at its quota: refused a moment ago, tokens again now."""
    buckets = Buckets(clock)
    buckets.set_shares({"noisy": 100.0})
    buckets.admit({"noisy": 50})
    with pytest.raises(OverQuota):
        buckets.admit({"noisy": 1})
    clock.t += 0.5
    return buckets


def test_pressed__a_keyspace_refused_lately_with_tokens_again() -> None:
    clock = Clock()
    buckets = _pressed_buckets(clock)
    assert buckets.pressed(["noisy"])
    assert not buckets.pressed(["noisy", "quiet"])  # a request with a keyspace not at quota
    assert not buckets.pressed([])
    buckets.admit({"noisy": 100})
    assert not buckets.pressed(["noisy"])  # no tokens: refused at once, not held
    clock.t += PRESSED_S + 1.5
    assert not buckets.pressed(["noisy"])  # not refused lately: served as any other


def _write(keyspace: str) -> pb.WriteRequest:
    key = pb.Key(keyspace=keyspace, partition=b"p", key=b"k")
    return pb.WriteRequest(mutations=[pb.Mutation(key=key, put=pb.Mutation.Put(value=b"v"))])


async def test_over_quota_turn__holds_a_pressed_keyspace_s_writes_for_one_shared_turn() -> None:
    clock = Clock()
    settings = ReplicaSettings(over_quota_turn_ms=40)
    replica = Replica(settings, cast(Durable, None), clock=clock)
    replica.quotas = _pressed_buckets(clock)
    loop = asyncio.get_running_loop()

    started = loop.time()
    await replica.over_quota([_write("quiet")])  # not at its quota: no wait
    assert loop.time() - started < 0.02

    done: list[float] = []

    async def noisy() -> None:
        await replica.over_quota([_write("noisy")])
        done.append(loop.time())

    started = loop.time()
    first = asyncio.create_task(noisy())
    await asyncio.sleep(0.02)  # a second caller, half-way through the first one's turn
    await asyncio.gather(first, noisy(), noisy())
    assert min(done) - started >= 0.035  # held for the turn...
    assert max(done) - min(done) < 0.01  # ...and let go together: one sequencing, one flush
