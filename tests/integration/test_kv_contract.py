"""The KV's contract, held by a real cluster and by the in-memory KV of the unit tests alike:
the same tests run against both (``store``), so a unit test on MemoryKV means what it says."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from mt_core.errors import FailedPrecondition, InvalidArgument
from mt_kv_client import ConditionFailed, Key, KVClient
from mt_kv_client.client import Check, Delete, Increment, Put
from mt_kv_client.memory import MemoryKV
from mt_kv_client.protocol import KV
from mt_kv_contract.keys import OUTBOX_KEY_PREFIX

_unique = itertools.count()


@pytest.fixture(params=["memory", "cluster"])
def store(request: pytest.FixtureRequest) -> KV:
    if request.param == "memory":
        return MemoryKV()
    client: KVClient = request.getfixturevalue("kv")
    return client


def part() -> bytes:
    """A partition no other test (or run against the same cluster) has used."""
    return f"contract-{next(_unique)}-{id(object())}".encode()


def k(partition: bytes, key: str = "k") -> Key:
    return Key("test", partition, key.encode())


def shard_of(store: KV, key: Key) -> int:
    assert isinstance(store, KVClient | MemoryKV)
    return store.shard_of(key)


async def test_put__versions_grow_and_a_read_sees_the_last(store: KV) -> None:
    key = k(part())
    first = await store.put(key, b"a")
    second = await store.put(key, b"b")
    assert second > first > 0
    item = await store.get(key)
    assert item is not None
    assert (item.value, item.version) == (b"b", second)
    await store.delete(key)
    assert await store.get(key) is None


async def test_write__a_failed_check_writes_nothing(store: KV) -> None:
    p = part()
    version = await store.put(k(p, "a"), b"1")
    with pytest.raises(ConditionFailed):
        await store.write(
            [Put(k(p, "a"), b"2"), Put(k(p, "b"), b"2")], [Check(k(p, "a"), version + 1)]
        )
    with pytest.raises(ConditionFailed):
        await store.write([Put(k(p, "b"), b"2")], [Check.present(k(p, "missing"))])
    with pytest.raises(ConditionFailed):
        await store.put_if_absent(k(p, "a"), b"3")
    found = await store.multi_get([k(p, "a"), k(p, "b")])
    assert found[k(p, "b")] is None
    held = found[k(p, "a")]
    assert held is not None
    assert (held.value, held.version) == (b"1", version)
    reply = await store.write([Put(k(p, "a"), b"4")], [Check(k(p, "a"), version)])
    assert reply.results[0].version > version


async def test_write__must_stay_within_one_shard(store: KV) -> None:
    await store.shards()  # (the routing table, for the real client)
    first = k(part())
    other = next(
        key
        for key in (k(part()) for _ in range(1000))
        if shard_of(store, key) != shard_of(store, first)
    )
    with pytest.raises(InvalidArgument) as refused:
        await store.write([Put(first, b"x"), Put(other, b"x")])
    assert refused.value.code == "cross_shard"
    with pytest.raises(InvalidArgument) as apart:
        await store.apply([Put(first, b"x"), Put(other, b"x")])
    assert apart.value.code == "cross_partition"
    with pytest.raises(InvalidArgument) as empty:
        await store.write([])
    assert empty.value.code == "empty_write"


async def test_increment__counts_from_zero_and_refuses_a_non_counter(store: KV) -> None:
    p = part()
    assert await store.increment(k(p, "n"), 5) == 5
    results = await store.apply([Increment(k(p, "n"), -2), Put(k(p, "s"), b"x")])
    assert int(results[0].value) == 3
    await store.put(k(p, "text"), b"abc")
    with pytest.raises(FailedPrecondition) as refused:
        await store.increment(k(p, "text"))
    assert refused.value.code == "not_a_counter"


async def test_ttl__an_expired_key_is_gone_everywhere(store: KV) -> None:
    p = part()
    await store.put(k(p, "short"), b"x", ttl_ms=300)
    await store.put(k(p, "kept"), b"y")
    item = await store.get(k(p, "short"))
    assert item is not None
    assert item.expires_at_ms > 0
    await asyncio.sleep(0.6)
    assert await store.get(k(p, "short")) is None
    items, _ = await store.scan("test", p)
    assert [i.key for i in items] == [k(p, "kept")]
    await store.put_if_absent(k(p, "short"), b"again")  # absent once expired


async def test_scan__pages_in_both_directions_without_repeat_or_gap(store: KV) -> None:
    p = part()
    keys = [f"i:{n:03d}" for n in range(25)]
    await store.multi_put([(k(p, key), key.encode()) for key in keys])
    await store.put(k(p, "other"), b"not under the prefix")
    for reverse in (False, True):
        seen: list[bytes] = []
        cursor = ""
        while True:
            items, cursor = await store.scan(
                "test", p, b"i:", cursor=cursor, limit=10, reverse=reverse
            )
            seen += [i.key.key for i in items]
            if not cursor:
                break
        expected = [key.encode() for key in keys]
        assert seen == (expected[::-1] if reverse else expected)
    # A cursor may be any key (the feed's is a post id): the page starts strictly past it.
    older, _ = await store.scan("test", p, b"i:", cursor=b"i:010".hex(), limit=3, reverse=True)
    assert [i.key.key for i in older] == [b"i:009", b"i:008", b"i:007"]
    exact, more = await store.scan("test", p, b"i:", limit=25)
    assert (len(exact), more) == (25, "")
    with pytest.raises(InvalidArgument):
        await store.scan("test", p, cursor="not-hex!")


async def test_claim__the_first_wins_and_the_others_see_the_holder(store: KV) -> None:
    key = k(part(), "handle")
    won, mine = await store.claim(key, b"ada")
    assert won
    lost, theirs = await store.claim(key, b"bob")
    assert not lost
    assert (theirs.value, theirs.version) == (b"ada", mine.version)


async def test_outbox__a_job_row_is_listed_in_its_shard_until_deleted(store: KV) -> None:
    row = Key("test", part(), OUTBOX_KEY_PREFIX + b"job-1")
    await store.put(row, b"job")
    await store.shards()
    shard = shard_of(store, row)
    listed: list[Key] = []
    cursor = ""
    while True:
        page, cursor = await store.outbox_page(shard, cursor=cursor, limit=50)
        listed += page
        if not cursor:
            break
    assert row in listed
    await store.apply([Delete(row)])
    page, _ = await store.outbox_page(shard, limit=1000)
    assert row not in page
