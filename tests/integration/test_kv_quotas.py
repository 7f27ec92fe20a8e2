"""Tenant quotas on real processes: a keyspace over its quota is refused with a typed error
that says when to come back, while another keyspace on the same primaries is served in full;
``kv status`` shows the quota and its use."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest
from mt_cli.kvcluster import KVCluster, manager_call
from mt_kv_client import Key, KVClient
from mt_kv_contract.errors import OverBytesQuota, OverQuota
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


BYTES_QUOTA = 20_000  # bytes stored
VALUE = b"x" * 100  # with its partition and key: ~105 bytes a put


async def _fill(kv: KVClient, keyspace: str) -> tuple[list[Key], OverQuota]:
    """Puts of new keys until one is refused; the keys written and the refusal."""
    keys: list[Key] = []
    for n in range(5_000):
        key = Key(keyspace, f"p{n}".encode(), b"k")
        try:
            await kv.put(key, VALUE)
        except OverQuota as err:
            return keys, err
        keys.append(key)
    raise AssertionError(f"{len(keys)} puts of {len(VALUE)} bytes and none refused")


async def _refused_within(attempts: Iterator[Awaitable[object]]) -> None:
    """One of ``attempts`` refused over the bytes quota (every primary hears that its keyspace
    is full with its next heartbeat), 0.1 s apart."""
    for attempt in attempts:
        try:
            await attempt
        except OverBytesQuota:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("never refused")


@pytest.mark.timeout(120)
async def test_bytes_quota__a_full_keyspace_takes_deletes_and_not_puts(tmp_path: Path) -> None:
    cluster = KVCluster(tmp_path / "kv", shards=4)
    try:
        await cluster.start()
        request = pb.QuotaRequest(keyspace="test", bytes=BYTES_QUOTA)
        await manager_call(cluster.manager_addr, "SetQuota", request)
        await asyncio.sleep(0.5)
        async with KVClient(cluster.manager_addr) as kv:
            keys, refused = await _fill(kv, "test")
            assert isinstance(refused, OverBytesQuota)
            # Refused once the primaries' reports reach the manager: a heartbeat or two late.
            stored = len(keys) * (len(VALUE) + 5)
            assert BYTES_QUOTA <= stored <= 2 * BYTES_QUOTA, len(keys)
            (use,) = (await cluster.status()).quotas
            assert use.full
            assert use.used_bytes >= BYTES_QUOTA
            await kv.put(Key("bench", b"p", b"k"), VALUE)  # another keyspace is not held
            await _refused_within(kv.put(keys[0], VALUE * 2) for _ in range(50))  # may grow it

            for key in keys[: len(keys) // 2]:
                await kv.delete(key)  # deletes pass, and free it
            deadline = time.monotonic() + 10
            while True:
                try:
                    await kv.put(keys[0], VALUE)
                    break
                except OverQuota:
                    assert time.monotonic() < deadline, "still full after deleting half"
                    await asyncio.sleep(0.2)
            assert not (await cluster.status()).quotas[0].full
    finally:
        cluster.stop()
