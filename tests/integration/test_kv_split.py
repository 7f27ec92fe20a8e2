"""A shard split on real processes under session puts and strong reads: a new shard takes half
the μshards of the one split, moved live one at a time — no request fails, every acknowledged
write is there, and the split survives a restart of the shard manager."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from mt_cli.kvcluster import KVCluster, manager_call
from mt_kv_client import Key, KVClient
from mt_proto import kv_pb2 as pb

from tests.integration.test_kv_elastic import Load

SHARDS, MICROSHARDS = 4, 64


async def _split_done(cluster: KVCluster, new_shard: int, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = await cluster.status()
        if not any(s.new_shard == new_shard for s in status.splits):
            return
        await asyncio.sleep(0.3)
    raise TimeoutError(f"split not done in {timeout_s}s: {await cluster.status()}")


@pytest.mark.timeout(240)
async def test_split__under_load_without_a_failed_request(tmp_path: Path) -> None:
    cluster = KVCluster(
        tmp_path / "kv", shards=SHARDS, extra_env={"MT_MICROSHARDS": str(MICROSHARDS)}
    )
    try:
        await cluster.start()
        async with KVClient(cluster.manager_addr) as kv:
            load = Load(kv)
            tasks = [asyncio.create_task(load.write()), asyncio.create_task(load.read())]
            await asyncio.sleep(1.0)

            started = time.monotonic()
            split = await manager_call(cluster.manager_addr, "SplitShard", pb.SplitRequest(shard=1))
            assert split.new_shard == SHARDS
            assert len(split.remaining) == MICROSHARDS // SHARDS // 2
            await _split_done(cluster, split.new_shard)
            print(f"split: {len(split.remaining)} μshards in {time.monotonic() - started:.1f} s")

            table = await manager_call(cluster.manager_addr, "GetRoutingTable", pb.RoutingRequest())
            assert len(table.shards) == SHARDS + 1
            assert table.shards[SHARDS].primary
            moved = [u for u, s in enumerate(table.microshard_to_shard) if s == SHARDS]
            assert sorted(moved) == sorted(split.remaining)
            assert sum(s == 1 for s in table.microshard_to_shard) == len(moved)

            load.stop.set()
            await asyncio.gather(*tasks)
            assert load.failures == []
            assert load.ops > 100
            found = await kv.multi_get(list(load.acked))
            for key, n in load.acked.items():
                item = found[key]
                assert item is not None
                assert int(item.value) >= n

        cluster.kill("kv")  # the shard manager: the split is in its saved state
        cluster.start_manager()
        await cluster.wait_healthy(30)
        status = await cluster.status()
        assert len(status.shards) == SHARDS + 1
        assert status.shards[SHARDS].replicas
    finally:
        cluster.stop()


@pytest.mark.timeout(120)
async def test_split__a_shard_grown_too_large_is_split_by_the_manager(tmp_path: Path) -> None:
    cluster = KVCluster(
        tmp_path / "kv",
        shards=2,
        extra_env={"MT_MICROSHARDS": "16", "MT_KV_SPLIT_ITEMS": "150"},
    )
    try:
        await cluster.start()
        async with KVClient(cluster.manager_addr) as kv:
            keys = [Key("test", f"p{n}".encode(), b"k") for n in range(400)]
            await asyncio.gather(*(kv.put(key, b"v") for key in keys))  # ~200 keys a shard
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status = await cluster.status()
                if len(status.shards) > 2 and not status.splits:
                    break
                await asyncio.sleep(0.5)
            else:
                raise TimeoutError(f"no split by itself in 60 s: {status}")
            table = await manager_call(cluster.manager_addr, "GetRoutingTable", pb.RoutingRequest())
            assert len(table.shards) == 3  # one at a time: the next waits out a cooldown
            assert sum(s == 2 for s in table.microshard_to_shard) == 4  # half of 8
            found = await kv.multi_get(keys)
            assert all(item is not None and item.value == b"v" for item in found.values())
    finally:
        cluster.stop()
