"""Live resharding under real faults: the old shard's primary killed mid-move, the shard
manager killed mid-move. The move completes, the μshard's keys are never writable in two
shards, and no acknowledged write is lost or applied twice."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time

import grpc
import pytest
from mt_cli.kvcluster import KVCluster, move_microshard
from mt_core.errors import MinithreadsError, Unavailable
from mt_kv_client import Key, KVClient
from mt_kv_contract.keys import microshard
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc

from tests.chaos.conftest import Tally

pytestmark = pytest.mark.chaos


class Counters:
    """Writers incrementing counters of one μshard (and one elsewhere) as fast as they can:
    an acknowledged increment must be counted once, an unknown one at most once."""

    def __init__(self, kv: KVClient, u: int) -> None:
        total = kv._table.microshards
        names = (f"c{i}".encode() for i in itertools.count())
        parts = itertools.islice((p for p in names if microshard("test", p, total) == u), 6)
        self.keys = [Key("test", p, b"n") for p in parts] + [Key("test", b"outside", b"n")]
        self.kv = kv
        self.acked = dict.fromkeys(self.keys, 0)
        self.unknown = dict.fromkeys(self.keys, 0)
        self.failures: list[MinithreadsError] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(k)) for k in self.keys for _ in range(3)]

    async def _run(self, key: Key) -> None:
        while not self._stop.is_set():
            try:
                await self.kv.increment(key)
                self.acked[key] += 1
            except Unavailable as err:
                # An unknown outcome (a primary killed under it), or a budget spent waiting
                # for a failover: neither may lose an acknowledged increment.
                self.unknown[key] += 1
                if err.code not in ("indeterminate", "kv_unavailable", "no_primary"):
                    self.failures.append(err)
            except MinithreadsError as err:
                self.failures.append(err)

    async def stop_and_verify(self) -> int:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        assert self.failures == []
        found = await self.kv.multi_get(self.keys)
        for key in self.keys:
            item = found[key]
            value = int(item.value) if item is not None else 0
            low, high = self.acked[key], self.acked[key] + self.unknown[key]
            assert low <= value <= high, f"{key}: {value} not in [{low}, {high}]"
        return sum(self.acked.values())


async def _done(cluster: KVCluster, u: int, timeout_s: float = 40) -> pb.MicroshardMove:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            moves = {m.microshard: m for m in (await cluster.status()).moves}
        except Exception:  # the manager restarting
            moves = {}
        if u in moves and moves[u].step == "done":
            return moves[u]
        await asyncio.sleep(0.2)
    raise AssertionError(f"the move of μshard {u} did not complete: {moves.get(u)}")


async def test_move__old_primary_killed_mid_move__the_move_completes_and_loses_nothing(
    cluster: KVCluster, tally: Tally
) -> None:
    async with KVClient(cluster.manager_addr, retry_budget_ms=20_000) as kv:
        u = kv.microshard_of(Key("test", b"c0", b""))
        source = kv._table.microshard_to_shard[u]
        target = (source + 1) % len(kv._table.shards)
        victim = kv._table.shards[source].primary
        counters = Counters(kv, u)
        await asyncio.sleep(1.0)
        move = await move_microshard(cluster.manager_addr, u, target, wait_s=0.001)
        cluster.kill(victim)  # the fence or the copy is under way at the old shard
        tally.kills += 1
        assert move.step != "done", "the move finished before the kill: nothing was tested"
        done = await _done(cluster, u)
        await asyncio.sleep(1.0)  # writes go on in the μshard's new shard
        acked = await counters.stop_and_verify()
        assert (done.from_shard, done.to_shard) == (source, target)
        await kv.refresh()
        assert kv._table.microshard_to_shard[u] == target
        tally.acked += acked
        print(f"killed at step {move.step}; keys refused for {done.fenced_ms} ms")
        cluster.start_replica(victim)
        await cluster.wait_rejoined(victim)


async def test_move__manager_killed_while_the_microshard_is_fenced__resumes_after_restart(
    cluster: KVCluster, tally: Tally
) -> None:
    """The worst moment for the manager to die: the μshard fenced at its old shard (its
    keys refused) and not yet flipped. Here the fence is laid first (what the move's fence
    step does) and the new shard's primary paused, so the move cannot get past its copy; the
    manager is killed there and restarted, takes the saved move up again, and the μshard's
    writers, refused meanwhile, carry on in its new shard without losing an increment."""
    async with KVClient(cluster.manager_addr, retry_budget_ms=20_000) as kv:
        u = kv.microshard_of(Key("test", b"c0", b""))
        source = kv._table.microshard_to_shard[u]
        target = next(
            s
            for s in range(len(kv._table.shards))
            if kv._table.shards[s].primary != kv._table.shards[source].primary
        )
        paused = kv._table.shards[target].primary
        counters = Counters(kv, u)
        await asyncio.sleep(1.0)
        info = kv._table.shards[source]
        async with grpc.aio.insecure_channel(info.addrs[info.primary]) as chan:
            await kv_pb2_grpc.ReplicationStub(chan).FenceMicroshard(
                pb.MicroshardRequest(
                    route=pb.Route(shard=source, epoch=info.epoch),
                    microshard=u,
                    microshards=kv._table.microshards,
                    to_shard=target,
                ),
                timeout=10,
            )
        cluster.signal(paused, signal.SIGSTOP)
        tally.pauses += 1
        try:
            move = await move_microshard(cluster.manager_addr, u, target, wait_s=0.5)
            assert move.step != "done", move  # stuck importing into the paused shard
            cluster.kill("kv")
            tally.kills += 1
        finally:
            cluster.signal(paused, signal.SIGCONT)
        cluster.start_manager()
        done = await _done(cluster, u)
        assert done.to_shard == target
        await asyncio.sleep(1.0)
        tally.acked += await counters.stop_and_verify()
        await kv.refresh()
        assert kv._table.microshard_to_shard[u] == target
