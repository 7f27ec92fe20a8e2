"""Tenant quotas on real processes: a keyspace over its quota is refused with a typed error
that says when to come back, while another keyspace on the same primaries is served in full;
``kv status`` shows the quota and its use."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from mt_cli.kvcluster import KVCluster, manager_call
from mt_kv_client import Key, KVClient
from mt_kv_contract.errors import OverQuota
from mt_proto import kv_pb2 as pb

QUOTA = 200.0  # keys per second
RUN_S = 3.0


async def _hammer(kv: KVClient, keyspace: str, outcomes: Counter[str], until: float) -> None:
    """Puts of one key each, one after another, counting how each ended."""
    n = 0
    while time.monotonic() < until:
        n += 1
        try:
            await kv.put(Key(keyspace, f"q-{n % 97}".encode(), b"k"), str(n).encode())
        except OverQuota as err:
            outcomes["over_quota" if err.retry_after_s > 0 else "no retry-after"] += 1
        except Exception as err:  # any other failure is a failed request
            outcomes[f"failed: {err!r}"] += 1
        else:
            outcomes["ok"] += 1


@pytest.mark.timeout(120)
async def test_quota__holds_the_noisy_keyspace_and_not_the_other(tmp_path: Path) -> None:
    cluster = KVCluster(tmp_path / "kv", shards=4)
    try:
        await cluster.start()
        use = await manager_call(
            cluster.manager_addr, "SetQuota", pb.QuotaRequest(keyspace="test", ops_s=QUOTA)
        )
        assert use.ops_s == QUOTA
        await asyncio.sleep(0.5)  # the primaries hear their shares with their heartbeats
        noisy: Counter[str] = Counter()
        quiet: Counter[str] = Counter()
        async with KVClient(cluster.manager_addr) as kv:
            until = time.monotonic() + RUN_S
            await asyncio.gather(
                *(_hammer(kv, "test", noisy, until) for _ in range(32)),
                *(_hammer(kv, "bench", quiet, until) for _ in range(4)),
            )
            status = await cluster.status()
            assert set(quiet) == {"ok"}, quiet
            assert set(noisy) == {"ok", "over_quota"}, noisy
            # Held near its quota (the buckets' burst and the shares' lag allow some slack).
            assert noisy["ok"] <= QUOTA * RUN_S * 1.5, noisy
            (reported,) = status.quotas
            assert reported.keyspace == "test"
            assert reported.refused_per_s > 0
            assert reported.offered_per_s > reported.refused_per_s

            await manager_call(
                cluster.manager_addr, "SetQuota", pb.QuotaRequest(keyspace="test", ops_s=0)
            )
            await asyncio.sleep(0.5)
            after: Counter[str] = Counter()
            await asyncio.gather(
                *(_hammer(kv, "test", after, time.monotonic() + 1.0) for _ in range(32))
            )
            assert set(after) == {"ok"}, after
            assert not (await cluster.status()).quotas
    finally:
        cluster.stop()
