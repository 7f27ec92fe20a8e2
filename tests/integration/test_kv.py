"""The KV service through its client, on a real 3-replica cluster of its own."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from mt_cli.kvcluster import KVCluster
from mt_core.errors import FailedPrecondition, InvalidArgument, TooLarge
from mt_core.rpc.status import error_from_rpc
from mt_kv_client import Consistency, Durability, Key, KVClient
from mt_kv_client.client import Check, Delete, Increment, Put
from mt_kv_contract.errors import Behind, NotPrimary, SessionExpired
from mt_kv_contract.keys import OUTBOX_KEY_PREFIX
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc

from tests.integration.conftest import write_as_is


def k(partition: str, key: str = "", keyspace: str = "test") -> Key:
    return Key(keyspace, partition.encode(), key.encode())


async def test_put_get__strong_and_ryw_reads_see_an_acknowledged_write(kv: KVClient) -> None:
    version = await kv.put(k("alice", "name"), b"Alice")
    assert version > 0
    for consistency in (Consistency.STRONG, Consistency.RYW):
        item = await kv.get(k("alice", "name"), consistency)
        assert item is not None, consistency
        assert (item.value, item.version) == (b"Alice", version)
    assert await kv.get(k("alice", "missing")) is None


async def test_stale_read__sees_the_write_within_the_staleness_bound(kv: KVClient) -> None:
    await kv.put(k("alice", "bio"), b"hi")
    seen = None
    for _ in range(20):  # a follower may lag, but by no more than the bound (1 s by default)
        seen = await kv.get(k("alice", "bio"), Consistency.STALE)
        if seen is not None:
            break
        await asyncio.sleep(0.1)
    assert seen is not None
    assert seen.value == b"hi"


async def test_delete__removes_the_key(kv: KVClient) -> None:
    await kv.put(k("bob", "x"), b"1")
    await kv.delete(k("bob", "x"))
    assert await kv.get(k("bob", "x")) is None


async def test_multi_put_and_multi_get__span_many_shards_in_one_call_each(kv: KVClient) -> None:
    keys = [k(f"user-{i}", "profile") for i in range(200)]
    assert len({kv.shard_of(key) for key in keys}) > 8
    await kv.multi_put((key, key.partition) for key in keys)
    found = await kv.multi_get(keys)
    assert all(found[key] is not None and found[key].value == key.partition for key in keys)  # type: ignore[union-attr]


async def test_scan__pages_a_partition_in_key_order_both_ways(kv: KVClient) -> None:
    await kv.multi_put((k("carol", f"post:{i:04d}"), str(i).encode()) for i in range(250))
    await kv.put(k("carol", "zzz-other"), b"not a post")
    seen: list[bytes] = []
    cursor = ""
    while True:
        items, cursor = await kv.scan("test", b"carol", b"post:", cursor=cursor, limit=100)
        seen += [item.key.key for item in items]
        if not cursor:
            break
    assert seen == [f"post:{i:04d}".encode() for i in range(250)]
    newest, cursor = await kv.scan("test", b"carol", b"post:", limit=3, reverse=True)
    assert [i.key.key for i in newest] == [b"post:0249", b"post:0248", b"post:0247"]
    older, _ = await kv.scan("test", b"carol", b"post:", limit=2, reverse=True, cursor=cursor)
    assert [i.key.key for i in older] == [b"post:0246", b"post:0245"]


async def test_conditional_writes__absent_present_and_version(kv: KVClient) -> None:
    key = k("dave", "handle")
    v1 = await kv.put_if_absent(key, b"dave")
    with pytest.raises(FailedPrecondition) as lost:
        await kv.put_if_absent(key, b"other")
    assert lost.value.code == "condition_failed"
    await kv.write([Put(key, b"dave2")], [Check.present(key)])
    with pytest.raises(FailedPrecondition):
        await kv.write([Put(key, b"dave3")], [Check(key, v1)])  # stale version
    item = await kv.get(key)
    assert item is not None
    assert item.value == b"dave2"


async def test_transaction__concurrent_read_modify_writes_never_lose_an_update(
    kv: KVClient,
) -> None:
    key = k("erin", "balance")
    await kv.put(key, b"0")

    async def add_one() -> None:
        while True:
            item = await kv.get(key)
            assert item is not None
            try:
                await kv.write(
                    [Put(key, str(int(item.value) + 1).encode())], [Check(key, item.version)]
                )
                return
            except FailedPrecondition:
                continue  # someone else won: read again

    await asyncio.gather(*(add_one() for _ in range(40)))
    item = await kv.get(key)
    assert item is not None
    assert item.value == b"40"


async def test_increment__concurrent_increments_sum_exactly(kv: KVClient) -> None:
    key = k("frank", "likes")
    results = await asyncio.gather(*(kv.increment(key, 1) for _ in range(300)))
    assert sorted(results) == list(range(1, 301))
    item = await kv.get(key)
    assert item is not None
    assert item.value == b"300"


async def test_write__across_shards_is_refused(kv: KVClient) -> None:
    a, b = (
        k("x1"),
        next(k(f"y{i}") for i in range(100) if kv.shard_of(k(f"y{i}")) != kv.shard_of(k("x1"))),
    )
    with pytest.raises(InvalidArgument) as err:
        await kv.write([Put(a, b"1"), Increment(b, 1)])
    assert err.value.code == "cross_shard"


async def test_ttl__a_key_expires(kv: KVClient) -> None:
    await kv.put(k("gina", "otp"), b"123456", ttl_ms=300)
    assert await kv.get(k("gina", "otp")) is not None
    await asyncio.sleep(0.5)
    assert await kv.get(k("gina", "otp")) is None


async def test_fast_ack__returns_a_token_and_the_write_becomes_readable(kv: KVClient) -> None:
    await kv.put(k("hank", "draft"), b"v", durability=Durability.FAST_ACK)
    item = await kv.get(k("hank", "draft"), Consistency.RYW)
    assert item is not None
    assert item.value == b"v"


async def test_bad_input__gets_clear_errors_not_crashes(kv: KVClient, cluster: KVCluster) -> None:
    with pytest.raises(TooLarge):
        await kv.put(k("ivy", "x" * 2000), b"v")
    with pytest.raises(TooLarge):
        await kv.put(k("ivy", "big"), b"x" * (1024 * 1024 + 1))
    with pytest.raises(InvalidArgument) as unknown:
        await kv.put(k("ivy", "x", keyspace="no-such-keyspace"), b"v")
    assert unknown.value.code == "unknown_keyspace"
    with pytest.raises(InvalidArgument):
        await kv.scan("test", b"ivy", cursor="not-hex!")
    # A malformed request straight to a replica: a clear status, and the replica lives on.
    async with grpc.aio.insecure_channel(cluster.addr("kv-1")) as chan:
        stub = kv_pb2_grpc.KVStub(chan)
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await stub.Write(pb.WriteRequest(route=pb.Route(shard=999)))
        assert isinstance(error_from_rpc(raw.value), NotPrimary)  # refused: nothing was done
        with pytest.raises(grpc.aio.AioRpcError) as token:
            await stub.Get(
                pb.GetRequest(
                    route=pb.Route(shard=0),
                    keys=[pb.Key(keyspace="test", partition=b"p")],
                    read=pb.ReadOptions(
                        consistency=pb.READ_YOUR_WRITES, min_version=pb.Version(shard=0, seq=2**62)
                    ),
                )
            )
        assert isinstance(error_from_rpc(token.value), Behind)
    assert await cluster.replica_up("kv-1")


async def test_status__shows_every_shard_with_a_primary_and_live_replicas(
    cluster: KVCluster,
) -> None:
    status = await cluster.status()
    assert len(status.shards) == 16
    assert all(s.primary and s.epoch >= 1 and len(s.replicas) == 3 for s in status.shards)
    assert {r.id for r in status.replicas if r.alive} == {"kv-1", "kv-2", "kv-3"}
    # Each reports where its replication link listens (its peers learn it from the manager).
    assert all(r.repl_addr.startswith("127.0.0.1:") for r in status.replicas), status.replicas


async def test_outbox_index__lists_a_job_row_written_with_its_state_until_it_is_deleted(
    kv: KVClient,
) -> None:
    state = Key("test", b"outbox-p", b"state")
    rows = [Key("test", b"outbox-p", OUTBOX_KEY_PREFIX + f"job-{i}".encode()) for i in range(3)]
    shard = kv.shard_of(state)

    async def listed() -> set[Key]:
        found: set[Key] = set()
        cursor = ""
        while True:
            keys, cursor = await kv.outbox_page(shard, cursor=cursor, limit=2)  # pages too
            found.update(keys)
            if not cursor:
                return found

    await kv.write([Put(state, b"s"), *(Put(r, b"job") for r in rows)])
    assert set(rows) <= await listed()
    assert Key("test", b"outbox-p", b"state") not in await listed()  # only job rows
    await kv.write([Delete(rows[0])])
    assert rows[0] not in await listed()
    assert set(rows[1:]) <= await listed()
    await kv.write([Delete(r) for r in rows[1:]])
    assert not set(rows) & await listed()


async def test_conditional_writes__sharing_a_batch_each_keep_their_own_outcome(
    kv: KVClient,
) -> None:
    keys = [k("coalesced", f"c{i}") for i in range(10)]
    # Two claims per key and a plain write, all in one loop turn: one BatchWrite per primary.
    outcomes = await asyncio.gather(
        *(kv.write([Put(key, tag)], [Check.absent(key)]) for key in keys for tag in (b"a", b"b")),
        kv.write([Put(k("coalesced", "plain"), b"p")]),
        return_exceptions=True,
    )
    claims = outcomes[:-1]
    assert not isinstance(outcomes[-1], BaseException)
    for i in range(len(keys)):
        first, second = claims[2 * i], claims[2 * i + 1]
        won = [o for o in (first, second) if not isinstance(o, BaseException)]
        lost = [o for o in (first, second) if isinstance(o, BaseException)]
        assert len(won) == 1, (first, second)
        assert len(lost) == 1, (first, second)
        assert isinstance(lost[0], FailedPrecondition)
    found = await kv.multi_get(keys)
    assert all(item is not None and item.value in (b"a", b"b") for item in found.values())


async def _session_write(
    kv: KVClient, cluster: KVCluster, request: pb.WriteRequest
) -> pb.WriteResponse:
    key = request.mutations[0].key
    shard = kv.shard_of(Key(key.keyspace, key.partition, key.key))
    return await write_as_is(cluster, shard, request)


def _increment(partition: str, session: int, seq: int, first_sent_ms: int) -> pb.WriteRequest:
    key = pb.Key(keyspace="test", partition=partition.encode(), key=b"n")
    return pb.WriteRequest(
        mutations=[pb.Mutation(key=key, increment=pb.Mutation.Increment(delta=5))],
        session=session,
        session_seq=seq,
        first_sent_ms=first_sent_ms,
    )


async def test_session_write__a_repeat_is_answered_with_the_first_outcome_not_applied_again(
    kv: KVClient, cluster: KVCluster
) -> None:
    now_ms = int(time.time() * 1000)
    first = await _session_write(kv, cluster, _increment("once", 77, 1, now_ms))
    again = await _session_write(kv, cluster, _increment("once", 77, 1, now_ms))
    assert again == first  # the same version and result: the first outcome
    assert first.results[0].value == b"5"
    item = await kv.get(k("once", "n"))
    assert item is not None
    assert item.value == b"5"  # applied once
    other = await _session_write(kv, cluster, _increment("once", 77, 2, now_ms))  # a new number
    assert other.results[0].value == b"10"


async def test_session_write__a_repeat_first_sent_too_long_ago_is_refused_not_applied(
    kv: KVClient, cluster: KVCluster
) -> None:
    long_ago = int(time.time() * 1000) - 10 * 60_000
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _session_write(kv, cluster, _increment("expired", 78, 1, long_ago))
    assert isinstance(error_from_rpc(refused.value), SessionExpired)
    assert await kv.get(k("expired", "n")) is None  # never applied
