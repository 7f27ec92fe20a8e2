"""The KV client's write parts: the keys of a keyspace with a quota go in a part of their own,
and a routing table refreshed while a batch is on its way does not lose its parts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mt_kv_client import Key, KVClient
from mt_kv_client.client import Put
from mt_kv_contract.errors import OverQuota
from mt_proto import kv_pb2 as pb

ADDR = "127.0.0.1:1"  # never dialled: the stub below answers


class _Stub:
    """A primary that answers every part of a BatchWrite, after ``during`` ran."""

    def __init__(self, during: Any) -> None:
        self.during = during
        self.requests: list[pb.BatchWriteRequest] = []

    async def BatchWrite(self, request: pb.BatchWriteRequest, **_: Any) -> pb.BatchWriteResponse:
        self.requests.append(request)
        self.during()
        results = [
            pb.WriteResult(
                ok=pb.WriteResponse(
                    results=[pb.Item(key=m.key, value=m.put.value, version=1) for m in w.mutations]
                )
            )
            for w in request.writes
        ]
        return pb.BatchWriteResponse(results=results)


def _client(quota_keyspaces: list[str], during: Any = lambda: None) -> tuple[KVClient, _Stub]:
    kv = KVClient("127.0.0.1:2")
    kv._table = pb.RoutingTable(
        version=1,
        microshards=1,
        shards=[
            pb.ShardInfo(id=0, epoch=1, primary="kv-1", replicas=["kv-1"], addrs={"kv-1": ADDR})
        ],
        microshard_to_shard=[0],
        quota_keyspaces=quota_keyspaces,
    )
    kv._quota_keyspaces = frozenset(quota_keyspaces)
    stub = _Stub(during)
    kv._stubs[ADDR] = stub  # type: ignore[assignment]
    return kv, stub


def _serving(stub: Any) -> KVClient:
    """A client of a table listing ``test`` with a quota, whose one replica is ``stub``."""
    kv, _ = _client(["test"])
    kv._stubs[ADDR] = stub
    return kv


async def _two_puts(kv: KVClient) -> list[int]:
    return list(
        await asyncio.gather(
            kv.put(Key("test", b"p", b"a"), b"1"), kv.put(Key("bench", b"p", b"b"), b"2")
        )
    )


async def test_write_parts__a_quota_keyspace_goes_apart() -> None:
    kv, stub = _client(["test"])
    assert await _two_puts(kv) == [1, 1]
    (request,) = stub.requests
    assert sorted(len(w.mutations) for w in request.writes) == [1, 1]


async def test_write_parts__without_quotas_share_one_part() -> None:
    kv, stub = _client([])
    assert await _two_puts(kv) == [1, 1]
    (request,) = stub.requests
    assert [len(w.mutations) for w in request.writes] == [2]


async def test_write_parts__quota_removed_while_in_flight__each_put_gets_its_answer() -> None:
    kv: KVClient
    kv, _ = _client(["test"], during=lambda: setattr(kv, "_quota_keyspaces", frozenset()))
    assert await _two_puts(kv) == [1, 1]


class _OverQuotaReads:
    """A primary whose bucket for ``test`` is empty for the next 50 ms, for reads."""

    def __init__(self) -> None:
        self.requests: list[pb.BatchGetRequest] = []

    async def BatchGet(self, request: pb.BatchGetRequest, **_: Any) -> pb.BatchGetResponse:
        self.requests.append(request)
        over = pb.Error(kind="OverQuota", code="over_quota", message="over", retry_after_ms=50)
        return pb.BatchGetResponse(
            results=[
                pb.GetResult(error=over)
                if get.keys[0].keyspace == "test"
                else pb.GetResult(ok=pb.GetResponse(items=[pb.Item(key=k) for k in get.keys]))
                for get in request.gets
            ]
        )


async def test_over_quota__a_refused_read_is_the_callers_answer_not_retried() -> None:
    stub = _OverQuotaReads()
    kv = _serving(stub)
    noisy, quiet = Key("test", b"p", b"a"), Key("bench", b"p", b"b")
    with pytest.raises(OverQuota):
        await kv.get(noisy)
    assert len(stub.requests) == 1  # back-pressure is the caller's answer: not sent again
    assert await kv.get(quiet) is None  # another keyspace is served


class _OverQuotaWrites(_Stub):
    """A primary whose bucket for ``test`` is empty for the next 50 ms, for writes."""

    def __init__(self) -> None:
        super().__init__(lambda: None)

    async def BatchWrite(self, request: pb.BatchWriteRequest, **_: Any) -> pb.BatchWriteResponse:
        answered = await super().BatchWrite(request)
        over = pb.Error(kind="OverQuota", code="over_quota", message="over", retry_after_ms=50)
        for write, result in zip(request.writes, answered.results, strict=True):
            if write.mutations[0].key.keyspace == "test":
                result.Clear()
                result.error.CopyFrom(over)
        return answered


async def test_over_quota__a_refused_keyspace_is_held_at_the_client_until_retry_after() -> None:
    stub = _OverQuotaWrites()
    kv = _serving(stub)
    noisy, quiet = Key("test", b"p", b"a"), Key("bench", b"p", b"b")
    with pytest.raises(OverQuota):
        await kv.put(noisy, b"1")
    with pytest.raises(OverQuota) as held:
        await kv.put(noisy, b"2")
    assert len(stub.requests) == 1  # refused here, as the replica would have: no RPC
    assert 0 < held.value.retry_after_s <= 0.05
    assert await kv.put(quiet, b"3") == 1  # another keyspace is sent
    assert len(stub.requests) == 2
    assert kv.holds.refused == 1
    assert dict(stub.requests[1].held) == {"test": 1}  # told with the next batch there
    await asyncio.sleep(0.06)
    with pytest.raises(OverQuota):
        await kv.put(noisy, b"4")
    assert len(stub.requests) == 3  # asked again once the replica said to
    assert not stub.requests[2].held  # (once)


async def test_over_quota__a_refused_read_holds_the_keyspace_s_reads_too() -> None:
    stub = _OverQuotaReads()
    kv = _serving(stub)
    noisy = Key("test", b"p", b"a")
    for _ in range(3):
        with pytest.raises(OverQuota):
            await kv.get(noisy)
    assert len(stub.requests) == 1
    assert kv.holds.refused == 2


async def test_over_quota__a_held_put_is_refused_before_it_is_batched() -> None:
    stub = _OverQuotaWrites()
    kv = _serving(stub)
    noisy = Key("test", b"p", b"a")
    with pytest.raises(OverQuota):
        await kv.put(noisy, b"1")

    def never(*_: Any) -> Any:
        raise AssertionError("a held keyspace's put reached the batcher")

    kv._writes.submit = never  # type: ignore[method-assign,assignment]
    with pytest.raises(OverQuota):
        await kv.put(noisy, b"2")
    assert kv.holds.refused == 1
    assert kv.holds.take(ADDR) == {"test": 1}  # still told to the replica


async def test_apply_many__with_return_exceptions__each_group_gets_its_own_answer() -> None:
    kv = _serving(_OverQuotaWrites())
    groups = [[Put(Key("test", b"p", b"a"), b"1")], [Put(Key("bench", b"p", b"b"), b"2")]]
    refused, written = await kv.apply_many(groups, return_exceptions=True)
    assert isinstance(refused, OverQuota)
    assert not isinstance(written, BaseException)
    assert written[0].version == 1
    with pytest.raises(OverQuota):
        await kv.apply_many(groups)
