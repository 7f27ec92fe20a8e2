"""The KV under real faults: kill -9 a primary under write load, kill a follower, pause a
primary past its lease. No acknowledged write may be lost, and a deposed primary must not
accept writes."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from mt_cli.kvcluster import KVCluster
from mt_core.errors import MinithreadsError, Unavailable
from mt_core.rpc.status import error_from_rpc
from mt_kv_client import Consistency, Key, KVClient
from mt_kv_contract.errors import NotPrimary, StaleEpoch
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc

from tests.chaos.conftest import Tally, indeterminate

pytestmark = pytest.mark.chaos


async def _busiest_primary(cluster: KVCluster) -> str:
    status = await cluster.status()
    return Counter(s.primary for s in status.shards).most_common(1)[0][0]


class Writers:
    """Clients putting unique keys as fast as they can, recording what was acknowledged."""

    def __init__(self, kv: KVClient, clients: int = 16) -> None:
        self.kv = kv
        self.acked: dict[Key, bytes] = {}
        self.failed = 0
        self.unsure = 0  # answered without a definite outcome (see conftest.indeterminate)
        self.last_ack_at = 0.0
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(c)) for c in range(clients)]

    async def _run(self, client: int) -> None:
        n = 0
        while not self._stop.is_set():
            key = Key("test", f"w{client}-{n}".encode(), b"v")
            value = f"{client}:{n}".encode()
            n += 1
            try:
                await self.kv.put(key, value)
            except MinithreadsError as err:
                self.failed += 1
                self.unsure += indeterminate(err)
                continue
            self.acked[key] = value
            self.last_ack_at = time.monotonic()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def _put_surely(kv: KVClient, key: Key, value: bytes) -> None:
    """A put repeated until acknowledged: the client repeats a write of unknown outcome
    itself, but gives up (with an unknown outcome) once its retry budget is spent; here nobody
    else writes these keys, so the caller may go on."""
    for _ in range(10):
        try:
            await kv.put(key, value)
            return
        except Unavailable as err:
            if err.code != "indeterminate":
                raise
    raise AssertionError(f"{key} never acknowledged")


async def _verify(kv: KVClient, acked: dict[Key, bytes]) -> None:
    found = await kv.multi_get(list(acked))
    lost = [key for key, value in acked.items() if found[key] is None or found[key].value != value]  # type: ignore[union-attr]
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"


async def test_kill_primary_under_write_load__loses_no_acknowledged_write(
    cluster: KVCluster, tally: Tally
) -> None:
    async with KVClient(cluster.manager_addr, retry_budget_ms=20_000) as kv:
        writers = Writers(kv)
        await asyncio.sleep(1.5)
        victim = await _busiest_primary(cluster)
        before = len(writers.acked)
        killed_at = time.monotonic()
        cluster.kill(victim)
        tally.kills += 1
        await asyncio.sleep(4)
        await writers.stop()
        assert len(writers.acked) > before + 100, "writes did not resume after the kill"
        status = await cluster.status()
        assert victim not in {s.primary for s in status.shards}, "leadership did not move"
        assert status.failovers, "no failover recorded"
        assert max(f.detect_ms for f in status.failovers) < 5_000
        await _verify(kv, writers.acked)
        tally.acked += len(writers.acked)
        tally.indeterminate += writers.unsure
        tally.retried += kv.writes.repeated
        assert not writers.unsure, f"{writers.unsure} writes ended with an unknown outcome"
        # The killed replica comes back and catches up before it serves stale reads.
        cluster.start_replica(victim)
        await cluster.wait_healthy()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            progress = {r.id: r.applied_seq for r in (await cluster.status()).replicas}
            if len(set(progress.values())) == 1:
                break
            await asyncio.sleep(0.2)
        assert len(set(progress.values())) == 1, f"replicas did not converge: {progress}"
    del killed_at


async def test_kill_every_replica__acknowledged_writes_come_back_from_the_log(
    tmp_path: Path, tally: Tally
) -> None:
    """All three replicas kill -9'd under write load, with no checkpoint of the items since
    the start: everything acknowledged must come back from the replicas' logs (re-committed
    by the new primaries), and strong reads must not miss any of it."""
    cluster = KVCluster(tmp_path, extra_env={"MT_CHECKPOINT_INTERVAL_MS": "600000"})
    try:
        await cluster.start()
        async with KVClient(cluster.manager_addr, retry_budget_ms=30_000) as kv:
            writers = Writers(kv)
            await asyncio.sleep(2.0)
            for name in list(cluster.ports):
                cluster.kill(name)
                tally.kills += 1
            before = len(writers.acked)
            assert before > 100, "too few writes before the kill to tell anything"
            # The writes in flight wait it out: repeated until the cluster is back.
            for name in cluster.ports:
                cluster.start_replica(name)
            await cluster.wait_healthy()
            await kv.refresh()
            await asyncio.sleep(1.0)
            await writers.stop()
            await _verify(kv, writers.acked)
            tally.acked += len(writers.acked)
            tally.indeterminate += writers.unsure
            tally.retried += kv.writes.repeated
    finally:
        cluster.stop()


async def test_kill_follower__writes_continue_and_it_catches_up(
    cluster: KVCluster, tally: Tally
) -> None:
    async with KVClient(cluster.manager_addr) as kv:
        status = await cluster.status()
        follower = "kv-3"
        # Only keys of shards where kv-3 is a follower: their writes must not even pause.
        keys = [
            key
            for key in (Key("test", f"f{i}".encode(), b"") for i in range(600))
            if status.shards[kv.shard_of(key)].primary != follower
        ][:300]
        cluster.kill(follower)
        tally.kills += 1
        started = time.monotonic()
        await kv.multi_put((key, b"x") for key in keys)
        assert time.monotonic() - started < 2, "writes stalled without a follower"
        cluster.start_replica(follower)
        await cluster.wait_healthy()
        deadline = time.monotonic() + 20
        async with grpc.aio.insecure_channel(cluster.addr(follower)) as chan:
            stub = kv_pb2_grpc.KVStub(chan)
            while time.monotonic() < deadline:
                missing = 0
                for key in keys[:50]:
                    shard = kv.shard_of(key)
                    try:
                        reply = await stub.Get(
                            pb.GetRequest(
                                route=pb.Route(shard=shard),
                                keys=[
                                    pb.Key(
                                        keyspace=key.keyspace, partition=key.partition, key=key.key
                                    )
                                ],
                                read=pb.ReadOptions(consistency=pb.BOUNDED_STALENESS),
                            )
                        )
                        missing += not reply.items[0].found
                    except grpc.aio.AioRpcError:
                        missing += 1
                if missing == 0:
                    break
                await asyncio.sleep(0.3)
        assert missing == 0, "the restarted follower never caught up"


async def test_paused_primary__cannot_write_after_failover(
    cluster: KVCluster, tally: Tally
) -> None:
    async with KVClient(cluster.manager_addr) as kv:
        key = Key("test", b"stale", b"k")
        await kv.put(key, b"before")
        shard = kv.shard_of(key)
        old = (await cluster.status()).shards[shard]
        cluster.signal(old.primary, signal.SIGSTOP)
        tally.pauses += 1
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            now = (await cluster.status()).shards[shard]
            if now.primary and now.primary != old.primary:
                break
            await asyncio.sleep(0.2)
        assert now.primary != old.primary, "no failover while the primary was paused"
        await kv.refresh()  # (a write in flight to the paused one would end "indeterminate")
        await kv.put(key, b"after")  # the new primary takes writes
        cluster.signal(old.primary, signal.SIGCONT)
        async with grpc.aio.insecure_channel(cluster.addr(old.primary)) as chan:
            stub = kv_pb2_grpc.KVStub(chan)
            stale_write = pb.WriteRequest(
                route=pb.Route(shard=shard, epoch=old.epoch),
                mutations=[
                    pb.Mutation(
                        key=pb.Key(keyspace="test", partition=b"stale", key=b"k"),
                        put=pb.Mutation.Put(value=b"from-the-stale-primary"),
                    )
                ],
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Write(stale_write, timeout=5)
            assert isinstance(error_from_rpc(refused.value), NotPrimary | StaleEpoch)
        item = await kv.get(key, Consistency.STRONG)
        assert item is not None
        assert item.value == b"after"


async def test_far_behind_follower__catches_up_from_a_snapshot(tmp_path: Path) -> None:
    # A tiny log retention: a follower down for 600 writes to its shard is past the log.
    cluster = KVCluster(tmp_path, extra_env={"MT_LOG_RETENTION_ENTRIES": "100"})
    try:
        await cluster.start()
        async with KVClient(cluster.manager_addr) as kv:
            status = await cluster.status()
            shard = 0
            primary = status.shards[shard].primary
            victim = next(r for r in status.shards[shard].replicas if r != primary)
            keys = [
                key
                for key in (Key("test", f"s{i}".encode(), b"") for i in range(20_000))
                if kv.shard_of(key) == shard
            ]
            cluster.kill(victim)
            for key in keys[:600]:
                await _put_surely(kv, key, key.partition)  # one at a time: 600 log entries
            cluster.start_replica(victim)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if "snapshot installed" in cluster.log(victim):
                    break
                await asyncio.sleep(0.2)
            assert "snapshot installed" in cluster.log(victim), cluster.log(victim)[-3000:]
            # Once caught up it serves bounded-staleness reads with every value.
            async with grpc.aio.insecure_channel(cluster.addr(victim)) as chan:
                stub = kv_pb2_grpc.KVStub(chan)
                for _ in range(50):
                    try:
                        reply = await stub.Get(
                            pb.GetRequest(
                                route=pb.Route(shard=shard),
                                keys=[
                                    pb.Key(keyspace="test", partition=k.partition)
                                    for k in keys[:600]
                                ],
                                read=pb.ReadOptions(consistency=pb.BOUNDED_STALENESS),
                            )
                        )
                        if all(item.found for item in reply.items):
                            break
                    except grpc.aio.AioRpcError:
                        pass
                    await asyncio.sleep(0.2)
                assert all(item.found and item.value == item.key.partition for item in reply.items)
    finally:
        cluster.stop()
