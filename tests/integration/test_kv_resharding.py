"""Live resharding on a real 3-replica cluster: μshards move between shards while clients
keep reading and writing them."""

from __future__ import annotations

import asyncio
import itertools
import time

import grpc
import pytest
from mt_cli.kvcluster import KVCluster, manager_status, move_microshard
from mt_core.errors import InvalidArgument, Unavailable
from mt_core.rpc.status import error_from_rpc
from mt_kv_client import Consistency, Key, KVClient
from mt_kv_client.client import Check, Put
from mt_kv_contract.errors import Behind, Moved
from mt_kv_contract.keys import OUTBOX_KEY_PREFIX, microshard
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc

from tests.integration.conftest import write_as_is


def partitions_of(kv: KVClient, u: int, count: int, tag: str) -> list[bytes]:
    """``count`` partition names that hash to μshard ``u``."""
    total = kv._table.microshards
    names = (f"{tag}-{i}".encode() for i in itertools.count())
    return list(itertools.islice((p for p in names if microshard("test", p, total) == u), count))


def other_shard(kv: KVClient, u: int) -> int:
    return (kv._table.microshard_to_shard[u] + 1) % len(kv._table.shards)


async def test_move__keys_follow_their_microshard_with_values_versions_and_ttls(
    kv: KVClient, cluster: KVCluster
) -> None:
    u = kv.microshard_of(Key("test", b"mover-a", b""))
    source, target = kv._table.microshard_to_shard[u], other_shard(kv, u)
    parts = partitions_of(kv, u, 20, "mover")
    keys = [Key("test", p, f"k{i}".encode()) for p in parts for i in range(5)]
    await kv.multi_put((key, key.partition + key.key) for key in keys)
    versions = {key: item.version for key, item in (await kv.multi_get(keys)).items() if item}
    await kv.put(Key("test", parts[0], b"ttl"), b"short-lived", ttl_ms=1_500)
    bystander = Key("test", b"not-moving", b"x")
    assert kv.microshard_of(bystander) != u
    await kv.put(bystander, b"stays")

    move = await move_microshard(cluster.manager_addr, u, target)

    assert (move.step, move.from_shard, move.to_shard) == ("done", source, target)
    assert move.keys == len(keys) + 1
    assert move.delta_keys == 0  # nothing changed between the pre-copy and the fence
    await kv.refresh()
    assert kv._table.microshard_to_shard[u] == target
    found = await kv.multi_get(keys)
    for key in keys:
        item = found[key]
        assert item is not None, key
        assert (item.value, item.version) == (key.partition + key.key, versions[key])
    # A version read before the move still guards a conditional write after it...
    first = keys[0]
    await kv.write([Put(first, b"updated")], [Check(first, versions[first])])
    updated = await kv.get(first)
    assert updated is not None
    # ...and versions written in the new shard start above every one it brought along.
    assert updated.version > max(versions.values())
    page, _ = await kv.scan("test", parts[1], b"k")
    assert [item.key.key for item in page] == [f"k{i}".encode() for i in range(5)]
    assert await kv.get(Key("test", parts[0], b"ttl")) is not None
    await asyncio.sleep(2)
    assert await kv.get(Key("test", parts[0], b"ttl")) is None  # its TTL came along
    assert (await kv.get(bystander)) is not None

    status = await manager_status(cluster.manager_addr)
    assert any(m.microshard == u and m.step == "done" for m in status.moves)
    # Non-strong reads in the new shard are served only past the import (a follower still
    # behind it would answer "not found" for keys that exist).
    assert move.import_seq > 0
    assert kv._table.shards[target].min_read_seq >= move.import_seq
    for consistency in (Consistency.STALE, Consistency.RYW):
        found = await kv.multi_get(keys[1:], consistency)
        assert all(found[key] is not None for key in keys[1:]), consistency


async def test_reads__a_replica_behind_the_required_position_refuses_non_strong_reads(
    kv: KVClient,
) -> None:
    info = kv._table.shards[0]
    follower = next(r for r in info.replicas if r != info.primary)
    async with grpc.aio.insecure_channel(info.addrs[follower]) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await kv_pb2_grpc.KVStub(chan).Get(
                pb.GetRequest(
                    route=pb.Route(shard=0),
                    keys=[pb.Key(keyspace="test", partition=b"p", key=b"k")],
                    read=pb.ReadOptions(
                        consistency=pb.BOUNDED_STALENESS,
                        min_version=pb.Version(shard=0, seq=10**12),
                    ),
                ),
                timeout=5,
            )
    assert isinstance(error_from_rpc(refused.value), Behind)


async def test_move__a_key_deleted_before_the_move_comes_back_with_a_newer_version(
    kv: KVClient, cluster: KVCluster
) -> None:
    """Versions stay unique per key across a move, for keys that did not travel too: the
    new shard's versions start above every version the old one gave."""
    u = kv.microshard_of(Key("test", b"aba-a", b""))
    source, target = kv._table.microshard_to_shard[u], other_shard(kv, u)
    (part,) = partitions_of(kv, u, 1, "aba")
    # Push the old shard's versions well past the new shard's.
    busy = [
        Key("test", p, b"x")
        for p in (f"aba-busy-{i}".encode() for i in range(5000))
        if kv.shard_of(Key("test", p, b"")) == source and kv.microshard_of(Key("test", p, b"")) != u
    ]
    for key in busy[:300]:
        await kv.put(key, b"1")
    gone = Key("test", part, b"k")
    seen = await kv.put(gone, b"first")
    await kv.delete(gone)
    move = await move_microshard(cluster.manager_addr, u, target)
    assert move.step == "done"
    again = await kv.put(gone, b"second")
    assert again > seen, (again, seen)  # a client holding `seen` cannot mistake the new value


async def test_move__old_shard_refuses_the_microshard_with_moved(
    kv: KVClient, cluster: KVCluster
) -> None:
    u = kv.microshard_of(Key("test", b"refused-a", b""))
    source, target = kv._table.microshard_to_shard[u], other_shard(kv, u)
    (part,) = partitions_of(kv, u, 1, "refused")
    await kv.put(Key("test", part, b"k"), b"v")
    await move_microshard(cluster.manager_addr, u, target)
    info = kv._table.shards[source]  # our table is from before the move
    async with grpc.aio.insecure_channel(info.addrs[info.primary]) as chan:
        stub = kv_pb2_grpc.KVStub(chan)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Get(
                pb.GetRequest(
                    route=pb.Route(shard=source, epoch=info.epoch),
                    keys=[pb.Key(keyspace="test", partition=part, key=b"k")],
                ),
                timeout=5,
            )
    assert isinstance(error_from_rpc(refused.value), Moved)
    # The client with the old table is refused too, refreshes, and finds the key.
    item = await kv.get(Key("test", part, b"k"))
    assert item is not None
    assert item.value == b"v"


async def test_move__under_concurrent_writes_loses_no_acknowledged_write(
    kv: KVClient, cluster: KVCluster
) -> None:
    """Writers hammer counters in a μshard (and outside it) while it moves away and back:
    every acknowledged increment is counted exactly once, none fails."""
    u = kv.microshard_of(Key("test", b"busy-a", b""))
    home, away = kv._table.microshard_to_shard[u], other_shard(kv, u)
    counters = [Key("test", p, b"n") for p in partitions_of(kv, u, 8, "busy")]
    counters.append(Key("test", b"elsewhere", b"n"))
    # Keys of other μshards in the same shard: coalesced into the same writes as the moving
    # ones, they must not fail when those are refused (nor be counted twice).
    counters += [
        Key("test", p, b"n")
        for p in itertools.islice(
            (
                p
                for p in (f"busy-neighbour-{i}".encode() for i in itertools.count())
                if kv.shard_of(Key("test", p, b"")) == home
                and kv.microshard_of(Key("test", p, b"")) != u
            ),
            4,
        )
    ]
    acked = dict.fromkeys(counters, 0)
    unknown = dict.fromkeys(counters, 0)
    failures: list[Exception] = []
    stop = asyncio.Event()

    async def writer(key: Key) -> None:
        while not stop.is_set():
            try:
                await kv.increment(key)
                acked[key] += 1
            except Unavailable as err:
                if err.code != "indeterminate":
                    failures.append(err)
                unknown[key] += 1
            except Exception as err:  # any other failure fails the test
                failures.append(err)

    toggled = Key("test", partitions_of(kv, u, 9, "busy")[-1], b"toggle")
    last: list[bytes | None] = []  # what each acknowledged put/delete left, in order

    async def toggler() -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            value = None if i % 3 == 2 else str(i).encode()
            try:
                if value is None:
                    await kv.delete(toggled)
                else:
                    await kv.put(toggled, value)
            except Unavailable:
                last.clear()  # unknown outcome: nothing to hold the end state to
                continue
            last.append(value)

    writers = [asyncio.create_task(writer(key)) for key in counters for _ in range(4)]
    writers.append(asyncio.create_task(toggler()))
    await asyncio.sleep(0.5)
    there = await move_microshard(cluster.manager_addr, u, away)
    await asyncio.sleep(0.5)
    back = await move_microshard(cluster.manager_addr, u, home)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*writers)

    assert (there.step, back.step) == ("done", "done")
    assert failures == []
    values = await kv.multi_get(counters)
    for key in counters:
        item = values[key]
        value = int(item.value) if item is not None else 0
        assert acked[key] <= value <= acked[key] + unknown[key], (key, value, acked[key])
    assert sum(acked.values()) > 100  # the writers really ran across both moves
    if last:  # puts and deletes made it across (a delete after the pre-copy is copied too)
        item = await kv.get(toggled)
        assert (item.value if item is not None else None) == last[-1]


async def test_move__bad_requests_get_clear_errors(kv: KVClient, cluster: KVCluster) -> None:
    total, shards = kv._table.microshards, len(kv._table.shards)
    for microshard_, shard in ((total, 0), (0, shards)):
        with pytest.raises(InvalidArgument) as refused:
            await move_microshard(cluster.manager_addr, microshard_, shard, wait_s=2)
        assert refused.value.code in ("bad_microshard", "bad_shard")
    # Moving a μshard where it already is: nothing to do, and done.
    u = 5
    same = await move_microshard(cluster.manager_addr, u, kv._table.microshard_to_shard[u])
    assert same.step == "done"
    assert same.keys == 0


async def test_move__a_transaction_spanning_a_moved_microshard_is_refused_not_split(
    kv: KVClient, cluster: KVCluster
) -> None:
    """Two keys of one shard in different μshards stop sharing a shard when one moves: a
    write over both is refused as cross-shard, never applied half here, half there."""
    u = kv.microshard_of(Key("test", b"txn-a", b""))
    source = kv._table.microshard_to_shard[u]
    (moving,) = partitions_of(kv, u, 1, "txn")
    staying = next(
        p
        for p in (f"txn-stay-{i}".encode() for i in itertools.count())
        if kv.shard_of(Key("test", p, b"")) == source and kv.microshard_of(Key("test", p, b"")) != u
    )
    await move_microshard(cluster.manager_addr, u, other_shard(kv, u))
    with pytest.raises(InvalidArgument) as refused:
        await kv.write(
            [Put(Key("test", moving, b"a"), b"1"), Put(Key("test", staying, b"b"), b"1")]
        )
    assert refused.value.code == "cross_shard"
    assert await kv.get(Key("test", staying, b"b")) is None


async def _outbox(kv: KVClient, shard: int) -> set[Key]:
    listed: set[Key] = set()
    cursor = ""
    while True:
        keys, cursor = await kv.outbox_page(shard, cursor=cursor)
        listed.update(keys)
        if not cursor:
            return listed


async def test_move__an_outbox_job_row_is_listed_by_the_shard_that_holds_it(
    kv: KVClient, cluster: KVCluster
) -> None:
    u = kv.microshard_of(Key("test", b"outbox-mover-a", b""))
    source, target = kv._table.microshard_to_shard[u], other_shard(kv, u)
    part = partitions_of(kv, u, 1, "outbox-mover")[0]
    row = Key("test", part, OUTBOX_KEY_PREFIX + b"job-1")
    await kv.write([Put(Key("test", part, b"state"), b"s"), Put(row, b"job")])
    assert row in await _outbox(kv, source)

    await move_microshard(cluster.manager_addr, u, target)

    assert row not in await _outbox(kv, source)  # the purge took its listing along
    assert row in await _outbox(kv, target)  # the import listed it where it lives now
    await kv.refresh()
    await kv.delete(row)
    assert row not in await _outbox(kv, target)


async def test_session_write__a_repeat_after_its_microshard_moved_is_answered_by_the_old_shard(
    kv: KVClient, cluster: KVCluster
) -> None:
    """Exactly-once across a move: a write that landed before the move is answered from its
    record by the shard it was sent to; one that never landed is refused as ``moved`` there
    (the fence orders it), so the client may route it afresh."""
    u = kv.microshard_of(Key("test", b"once-mover", b""))
    source, target = kv._table.microshard_to_shard[u], other_shard(kv, u)
    key = pb.Key(keyspace="test", partition=b"once-mover", key=b"n")
    sent_ms = int(time.time() * 1000)

    def increment(seq: int) -> pb.WriteRequest:
        return pb.WriteRequest(
            mutations=[pb.Mutation(key=key, increment=pb.Mutation.Increment(delta=1))],
            session=4242,
            session_seq=seq,
            first_sent_ms=sent_ms,
        )

    first = await write_as_is(cluster, source, increment(1))
    await move_microshard(cluster.manager_addr, u, target)
    again = await write_as_is(cluster, source, increment(1))
    assert again == first  # the first outcome, from the old shard's record
    with pytest.raises(grpc.aio.AioRpcError) as never_landed:
        await write_as_is(cluster, source, increment(2))
    assert isinstance(error_from_rpc(never_landed.value), Moved)
    await kv.refresh()
    item = await kv.get(Key("test", b"once-mover", b"n"))
    assert item is not None
    assert item.value == b"1"  # applied once, and moved with its μshard
