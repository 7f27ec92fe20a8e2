"""An elastic KV on real processes: a replica added under writes and strong reads receives
shard copies (learner, then 3 -> 4 -> 3 voters) until copies are even, then is drained and
stopped — no request fails, every acknowledged write is there."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mt_cli.kvcluster import KVCluster
from mt_kv_client import Consistency, Key, KVClient

KEYS = [Key("test", f"elastic-{i}".encode(), b"v") for i in range(64)]


@dataclass
class Load:
    """A writer (exactly-once session puts) and a strong reader over ``KEYS``, counting."""

    kv: KVClient
    acked: dict[Key, int] = field(default_factory=dict)
    ops: int = 0
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def write(self) -> None:
        for n in itertools.count(1):
            if self.stop.is_set():
                return
            key = KEYS[n % len(KEYS)]
            try:
                await self.kv.put(key, str(n).encode())
            except Exception as err:  # any failure is a failed request
                self.failures.append(f"put {key.partition!r}: {err!r}")
            else:
                self.acked[key] = n
            self.ops += 1

    async def read(self) -> None:
        for n in itertools.count():
            if self.stop.is_set():
                return
            key = KEYS[n % len(KEYS)]
            floor = self.acked.get(key, 0)
            try:
                item = await self.kv.get(key, Consistency.STRONG)
            except Exception as err:
                self.failures.append(f"get {key.partition!r}: {err!r}")
            else:
                if floor and (item is None or int(item.value) < floor):
                    self.failures.append(f"get {key.partition!r}: stale ({item}, acked {floor})")
            self.ops += 1


async def _settled(cluster: KVCluster, *, holder: str, timeout_s: float = 90.0) -> Counter[str]:
    """Until placement is settled with ``holder`` holding copies (``""``: any): the copies
    held per replica then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = await cluster.status()
        held = Counter(r for s in status.shards for r in s.replicas)
        if status.placement_settled and (not holder or held[holder]):
            return held
        await asyncio.sleep(0.3)
    raise TimeoutError(f"placement not settled in {timeout_s}s: {await cluster.status()}")


@pytest.mark.timeout(240)
async def test_replicas__added_and_drained_under_load_without_a_failed_request(
    tmp_path: Path,
) -> None:
    cluster = KVCluster(tmp_path / "kv", shards=8)
    try:
        await cluster.start()
        async with KVClient(cluster.manager_addr) as kv:
            load = Load(kv)
            tasks = [asyncio.create_task(load.write()), asyncio.create_task(load.read())]
            await asyncio.sleep(1.0)

            started = time.monotonic()
            added = await cluster.add_replica()
            held = await _settled(cluster, holder=added)
            print(f"elastic: 3 -> 4 replicas settled in {time.monotonic() - started:.1f} s")
            assert sorted(held.values()) == [6, 6, 6, 6]  # 8 shards x 3 copies on 4
            status = await cluster.status()
            assert all(len(s.replicas) == 3 and not s.learners for s in status.shards)
            moves = [m for m in status.reconfigs if m.target == added]
            assert moves
            assert {m.step for m in moves} == {"done"}

            started = time.monotonic()
            await cluster.drain(added)
            held = await _settled(cluster, holder="")
            print(f"elastic: drained back to 3 in {time.monotonic() - started:.1f} s")
            assert held[added] == 0
            assert sorted(held.values()) == [8, 8, 8]

            load.stop.set()
            await asyncio.gather(*tasks)
            assert load.failures == []
            assert load.ops > 100
            print(f"elastic: {load.ops} requests, {len(load.failures)} failed")
            found = await kv.multi_get(list(load.acked))
            for key, n in load.acked.items():
                item = found[key]
                assert item is not None
                assert int(item.value) >= n
    finally:
        cluster.stop()
