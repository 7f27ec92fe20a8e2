"""The KV store: its two SQLite files, the move of a log kept beside the items, fail-stop after
a failed transaction, and its statements in every driver parameter style it may meet."""

from __future__ import annotations

from pathlib import Path

import pytest
from mt_kv.storage.store import (
    Batch,
    EpochRow,
    ItemRow,
    LogRow,
    Position,
    ShardMeta,
    Store,
    StoreFailed,
    _statements,
)


def test_statements__each_style_numbers_or_marks_every_parameter() -> None:
    template = _statements("qmark").item_upsert
    assert template.count("?") == 7
    assert "$7" in _statements("numeric_dollar").item_upsert
    assert "$8" not in _statements("numeric_dollar").item_upsert
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
        await store.checkpoint([ItemRow(3, "t", b"p", b"k", b"v", 1, 0)], [Position(3, 1, 1)])
    finally:
        await store.close()
    assert (tmp_path / "log.sqlite").exists()
    store = Store(url)
    await store.open()
    try:
        loaded = await store.load()
    finally:
        await store.close()
    assert loaded.metas == {3: ShardMeta(3, 1, "kv-2", 1, 1)}
    assert loaded.items == [ItemRow(3, "t", b"p", b"k", b"v", 1, 0)]
    assert [row.seq for row in loaded.log] == [1, 2]


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
    store = Store(url)
    await store.open()
    try:
        loaded = await store.load()
    finally:
        await store.close()
    assert [(row.seq, row.payload) for row in loaded.log] == [(7, b"x")]
    assert loaded.metas[0].epoch == 2
    again = Store(url, log_url=url)  # the items' file no longer holds it
    await again.open()
    try:
        assert (await again.load()).log == []
    finally:
        await again.close()


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
