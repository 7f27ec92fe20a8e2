"""The KV store: its two SQLite files, items as segments (a base, then deltas; a new base drops
what came before), the moves of a log kept beside the items and of items kept a row per key,
fail-stop after a failed transaction, and its statements in every driver parameter style."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from mt_kv.storage.schema import items, segments, shards
from mt_kv.storage.store import (
    MIGRATIONS,
    SCHEMA_HEAD,
    Batch,
    EpochRow,
    Loaded,
    LogRow,
    Position,
    Segment,
    ShardMeta,
    Store,
    StoreFailed,
    _statements,
)
from sqlalchemy import select


async def reopened(url: str, log_url: str = "") -> Loaded:
    """What a store at ``url`` loads when it is opened again."""
    store = Store(url, log_url=log_url)
    await store.open()
    try:
        return await store.load()
    finally:
        await store.close()


def test_statements__each_style_numbers_or_marks_every_parameter() -> None:
    template = _statements("qmark").segment_upsert
    assert template.count("?") == 5
    assert "$5" in _statements("numeric_dollar").segment_upsert
    assert "$6" not in _statements("numeric_dollar").segment_upsert
    assert ":3" in _statements("numeric").log_upsert
    assert _statements("format").log_trim == "DELETE FROM kv_log WHERE shard = %s AND seq <= %s"


def test_statements__an_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError, match="named"):
        _statements("named")


async def test_store__log_and_items_in_files_of_their_own_load_back_together(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/kv.sqlite"
    store = Store(url)
    await store.open()
    try:
        await store.commit(
            Batch(
                log_appends=[LogRow(3, 1, 1, b"a"), LogRow(3, 2, 1, b"b")],
                epochs={3: EpochRow(3, 1, "kv-2")},
            )
        )
        base = {("t", b"p", b"k"): (b"v", 1, 0), ("t", b"p", b"gone"): (b"x", 1, 0)}
        await store.checkpoint([Segment(3, 1, True, base)], [Position(3, 1, 1)])
        delta = {("t", b"p", b"gone"): None, ("t", b"p", b"new"): (b"n", 2, 0)}
        await store.checkpoint([Segment(3, 2, False, delta)], [Position(3, 2, 1)])
    finally:
        await store.close()
    assert (tmp_path / "log.sqlite").exists()
    loaded = await reopened(url)
    assert loaded.metas == {3: ShardMeta(3, 1, "kv-2", 2, 1)}
    assert loaded.items == {3: {("t", b"p", b"k"): (b"v", 1, 0), ("t", b"p", b"new"): (b"n", 2, 0)}}
    assert [row.seq for row in loaded.log] == [1, 2]


async def test_store__nothing_to_write_waits_for_what_was_queued_before(tmp_path: Path) -> None:
    # A follower answering a repeated Append writes nothing; its answer must still wait for
    # the transaction carrying those entries (the simulation found answers that did not).
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/kv.sqlite")
    await store.open()
    try:
        entries = store.submit(Batch(log_appends=[LogRow(3, 1, 1, b"a")]))
        barrier = store.submit(Batch())
        assert not barrier.done()
        await barrier
        assert entries.done()
        assert store.submit(Batch()).done()  # nothing on its way: at once
    finally:
        await store.close()


async def test_store__a_log_kept_beside_the_items_moves_to_its_own_file(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/kv.sqlite"
    old = Store(url, log_url=url)  # how stores were laid out before the log had its own file
    await old.open()
    try:
        await old.commit(
            Batch(log_appends=[LogRow(0, 7, 2, b"x")], epochs={0: EpochRow(0, 2, "kv-1")})
        )
    finally:
        await old.close()
    loaded = await reopened(url)
    assert [(row.seq, row.payload) for row in loaded.log] == [(7, b"x")]
    assert loaded.metas[0].epoch == 2
    assert (await reopened(url, log_url=url)).log == []  # the items' file no longer holds it


async def test_store__the_log_wal_is_copied_by_checkpoints_not_by_commits(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/kv.sqlite"
    store = Store(url)
    await store.open()
    log_file = tmp_path / "log.sqlite"
    try:
        payload = b"x" * 4_000  # ~a page per entry: 1,500 of them pass SQLite's 1,000 pages
        for seq in range(1, 1_501):
            await store.commit(Batch(log_appends=[LogRow(1, seq, 1, payload)]))
        written_by_commits = log_file.stat().st_size
        assert written_by_commits < 1_000 * 4_096  # no commit copied the WAL into the file
        await store.checkpoint([Segment(1, 1, False, {})], [Position(1, 1, 1)])
        assert log_file.stat().st_size > 1_500 * 4_000  # the checkpoint did
    finally:
        await store.close()
    assert [r.seq for r in (await reopened(url)).log] == list(range(1, 1_501))


async def test_store__after_a_failed_transaction_every_write_fails(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/kv.sqlite")
    await store.open()
    try:
        with pytest.raises(Exception, match="NOT NULL"):
            await store.commit(Batch(log_appends=[LogRow(0, 1, 1, None)]))  # type: ignore[arg-type]
        with pytest.raises(StoreFailed):
            await store.commit(Batch(log_appends=[LogRow(0, 2, 1, b"fine")]))
        with pytest.raises(StoreFailed):
            await store.checkpoint([], [Position(0, 1, 1)])
    finally:
        await store.close()


async def test_store__a_new_base_replaces_every_segment_before_it(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/kv.sqlite"
    store = Store(url)
    await store.open()
    try:
        await store.checkpoint([Segment(1, 5, True, {("t", b"a", b""): (b"1", 5, 0)})], [])
        await store.checkpoint([Segment(1, 6, False, {("t", b"b", b""): (b"2", 6, 0)})], [])
        await store.checkpoint([Segment(1, 9, True, {("t", b"c", b""): (b"3", 9, 0)})], [])
        loaded = await store.load()
        async with store.engine.connect() as conn:
            seqs = [r.seq for r in await conn.execute(select(segments))]
    finally:
        await store.close()
    assert loaded.items == {1: {("t", b"c", b""): (b"3", 9, 0)}}
    assert seqs == [9]


async def test_store__items_kept_a_row_per_key_become_base_segments(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/kv.sqlite"
    store = Store(url)
    await store.open()
    async with store.engine.begin() as conn:  # how stores kept items before segments
        await conn.execute(
            items.insert(),
            [
                {
                    "keyspace": "t",
                    "partition": b"p",
                    "key": b"k",
                    "shard": 2,
                    "value": b"v",
                    "version": 4,
                    "expires_at_ms": 0,
                },
            ],
        )
        await conn.execute(
            shards.insert(),
            [{"shard": 2, "epoch": 1, "primary": "", "applied_seq": 4, "applied_epoch": 1}],
        )
    await store.close()
    store = Store(url)
    await store.open()
    try:
        loaded = await store.load()
        async with store.engine.connect() as conn:
            left = list(await conn.execute(select(items)))
    finally:
        await store.close()
    assert loaded.items == {2: {("t", b"p", b"k"): (b"v", 4, 0)}}
    assert loaded.metas[2].applied_seq == 4
    assert left == []


def test_schema_head__is_the_newest_migration() -> None:
    """A store at SCHEMA_HEAD skips Alembic on open: it must be the migrations' real head."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_heads() == [SCHEMA_HEAD]


def test_outbox_index__a_job_row_is_listed_with_its_change_and_nothing_else_is() -> None:
    from mt_kv.data import META_KEYSPACE, outbox_index_key, outbox_row_of, with_outbox_index
    from mt_kv_contract.keys import OUTBOX_KEY_PREFIX

    row = ("posts", b"u:1", OUTBOX_KEY_PREFIX + b"job")
    state = ("posts", b"u:1", b"p:1")
    put = with_outbox_index([(state, (b"x", 7, 0)), (row, (b"job", 7, 0))])
    assert put[:2] == [(state, (b"x", 7, 0)), (row, (b"job", 7, 0))]
    assert put[2:] == [(outbox_index_key(row), (b"", 7, 0))]
    assert outbox_row_of(outbox_index_key(row)[2]) == row
    assert with_outbox_index([(row, None)])[1:] == [(outbox_index_key(row), None)]
    assert with_outbox_index([(state, None)]) == [(state, None)]
    meta = (META_KEYSPACE, b"moved", OUTBOX_KEY_PREFIX)
    assert with_outbox_index([(meta, None)]) == [(meta, None)]  # the KV's own keys: never
