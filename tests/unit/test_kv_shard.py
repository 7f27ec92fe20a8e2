"""A replica's shard log and in-memory data: the operations replication relies on."""

from __future__ import annotations

from mt_kv.data import Change, ShardData, decode_effects, moved_key, moved_value
from mt_kv.replica.moves import microshard_items
from mt_kv.replica.shard import Shard
from mt_kv.rules.log import LogRec
from mt_kv_contract.keys import microshard
from mt_proto import kv_pb2 as pb


def entry(seq: int, epoch: int) -> LogRec:
    return (seq, epoch, b"")


def test_log__epoch_at_knows_the_tail_and_the_entry_before_it() -> None:
    shard = Shard(0)
    assert shard.epoch_at(0) == 0
    for seq in range(1, 6):
        shard.append(entry(seq, 1 if seq < 4 else 2))
    assert [shard.epoch_at(s) for s in range(1, 6)] == [1, 1, 1, 2, 2]
    assert shard.epoch_at(6) is None
    assert (shard.last_seq, shard.last_epoch) == (5, 2)


def test_log__trim_keeps_only_applied_entries_out_and_remembers_the_floor() -> None:
    shard = Shard(0)
    for seq in range(1, 11):
        shard.append(entry(seq, 1))
    shard.applied_seq = 6
    floor = shard.trim(keep_entries=2)
    assert floor == 6  # never past what is applied, even if more could go
    assert shard.epoch_at(6) == 1  # the floor's epoch is kept for the next Append's prev
    assert shard.epoch_at(5) is None
    assert shard.epoch_at(0) is None  # the empty prefix is no longer ours to vouch for


def test_log__truncate_drops_an_uncommitted_suffix() -> None:
    shard = Shard(0)
    for seq in range(1, 6):
        shard.append(entry(seq, 1))
    shard.applied_seq = 2
    shard.truncate_after(3)
    assert shard.last_seq == 3
    shard.append(entry(4, 2))
    assert shard.epoch_at(4) == 2


def test_log__reset_positions_an_empty_log_after_a_snapshot() -> None:
    shard = Shard(0)
    shard.restart_log(100, 4)
    assert (shard.last_seq, shard.last_epoch, shard.epoch_at(100)) == (100, 4, 4)
    shard.append(entry(101, 5))
    assert shard.last_seq == 101


def _put(
    keyspace: str, partition: bytes, key: bytes, value: bytes, version: int, ttl: int = 0
) -> Change:
    return (keyspace, partition, key), (value, version, ttl)


def test_data__scan_stays_in_its_partition_and_prefix() -> None:
    data = ShardData()
    data.apply(
        [
            _put("t", b"p", b"a1", b"1", 1),
            _put("t", b"p", b"a2", b"2", 2),
            _put("t", b"p", b"b1", b"3", 3),
            _put("t", b"p\x00", b"a1", b"x", 4),  # another partition sorting right after
            _put("t", b"q", b"a1", b"y", 5),
        ]
    )
    found, more = data.scan("t", b"p", b"a", None, 10, False, 0)
    assert [k[2] for k, _ in found] == [b"a1", b"a2"]
    assert not more
    everything, _ = data.scan("t", b"p", b"", None, 10, False, 0)
    assert [k[2] for k, _ in everything] == [b"a1", b"a2", b"b1"]
    newest, more = data.scan("t", b"p", b"", None, 2, True, 0)
    assert [k[2] for k, _ in newest] == [b"b1", b"a2"]
    assert more
    rest, more = data.scan("t", b"p", b"", b"a2", 2, True, 0)
    assert [k[2] for k, _ in rest] == [b"a1"]
    assert not more


def test_data__expired_keys_are_invisible_and_listed_for_deletion() -> None:
    data = ShardData()
    data.apply([_put("t", b"p", b"otp", b"1", 1, ttl=1_000), _put("t", b"p", b"keep", b"2", 2)])
    assert data.get(("t", b"p", b"otp"), 999) is not None
    assert data.get(("t", b"p", b"otp"), 1_000) is None
    assert [k for k, _ in data.expired(1_000, 10)] == [("t", b"p", b"otp")]
    assert data.expired(1_000, 10) == []


def _delete(keyspace: str, partition: bytes, key: bytes) -> Change:
    return (keyspace, partition, key), None


def test_data__scans_page_like_a_sorted_model_through_writes_and_deletes() -> None:
    """Random puts and deletes in a few partitions, scans (both ways, by pages, with
    prefixes) before and after each batch: the pages match a plain sorted list."""
    import random

    rng = random.Random(7)
    data = ShardData()
    model: dict[tuple[bytes, bytes], bytes] = {}
    alphabet = [b"a", b"ab", b"b", b"\xff", b"\xff\xff", b"\x00", b"ba"]

    def expected(partition: bytes, prefix: bytes, reverse: bool) -> list[bytes]:
        keys = sorted(k for p, k in model if p == partition and k.startswith(prefix))
        return keys[::-1] if reverse else keys

    def paged(partition: bytes, prefix: bytes, reverse: bool, size: int) -> list[bytes]:
        out: list[bytes] = []
        after: bytes | None = None
        while True:
            page, more = data.scan("t", partition, prefix, after, size, reverse, 0)
            out += [k[2] for k, _ in page]
            if not more:
                return out
            after = page[-1][0][2]

    for step in range(60):
        effects = []
        for _ in range(rng.randint(1, 8)):
            partition = rng.choice([b"p", b"p\x00", b"q"])
            key = b"".join(rng.choices(alphabet, k=rng.randint(1, 3)))
            if rng.random() < 0.3:
                effects.append(_delete("t", partition, key))
                model.pop((partition, key), None)
            else:
                effects.append(_put("t", partition, key, b"v", step))
                model[(partition, key)] = b"v"
        data.apply(effects)
        for partition in (b"p", b"q", b"p\x00", b"r"):
            for prefix in (b"", b"a", b"\xff", b"b"):
                for reverse in (False, True):
                    size = rng.randint(1, 4)
                    assert paged(partition, prefix, reverse, size) == expected(
                        partition, prefix, reverse
                    ), (step, partition, prefix, reverse, size)
    assert len(data) == len(model)


def test_effects__a_payload_decodes_to_the_changes_it_was_made_of() -> None:
    items = [
        pb.Item(
            key=pb.Key(keyspace="t", partition=b"p", key=b"a"),
            found=True,
            value=b"1",
            version=7,
            expires_at_ms=99,
        ),
        pb.Item(key=pb.Key(keyspace="t", partition=b"p", key=b"b"), found=False, version=7),
    ]
    payload = pb.LogPayload(effects=items).SerializeToString()
    assert decode_effects(payload) == [
        (("t", b"p", b"a"), (b"1", 7, 99)),
        (("t", b"p", b"b"), None),
    ]


def test_memory__values_and_log_entries_drop_out_of_the_garbage_collectors_sight() -> None:
    """What a replica holds per key and per log entry must not make every collection walk it
    (data.py): plain tuples of bytes and ints, untracked after one collection."""
    import gc

    data, shard = ShardData(), Shard(0)
    data.apply([_put("t", b"p", b"k", b"v", 1)])
    shard.append((1, 1, b"payload"))
    gc.collect()
    assert not gc.is_tracked(data.items[("t", b"p", b"k")])
    assert not gc.is_tracked(shard.tail[0])
    assert not gc.is_tracked(data._keys[("t", b"p")])  # one key: bare bytes, no set


async def test_data__fences_of_moved_microshards_are_tracked_through_apply_and_replace() -> None:
    """A μshard's fence is an ordinary item (so it is logged, checkpointed, snapshotted); the
    set of moved μshards is derived from it on every path data arrives by."""
    data = ShardData()
    assert (data.moved, data.microshards) == (set(), 0)
    fence: Change = (moved_key(7), (moved_value(3, 64), 1, 0))
    data.apply([fence])
    assert (data.moved, data.microshards) == ({7}, 64)
    copy = ShardData()
    copy.replace(data.items.items())  # a checkpoint load or a snapshot install
    assert (copy.moved, copy.microshards) == ({7}, 64)
    data.apply([(moved_key(7), None)])  # the μshard came back
    assert data.moved == set()
    partitions = [f"p{i}".encode() for i in range(200)]
    data.apply([(("test", p, b"k"), (b"v", 2, 0)) for p in partitions])
    held = await microshard_items(data, 7, 64, 0)
    expected = {p for p in partitions if microshard("test", p, 64) == 7}
    assert expected  # 200 partitions over 64 μshards: some land in 7
    assert {key[1] for key, _ in held} == expected
