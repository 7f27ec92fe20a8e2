"""A replica's durable store: each group commit is one transaction (one fsync).

The replica keeps its working state in memory and uses this store to survive a crash: the log
entries it acknowledged as durable (written before they are acknowledged), the effects it
applied (in checkpoints, every second or so: the log covers what is newer), and each shard's
epoch. On start it migrates the schema (Alembic) and loads everything back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy
import sqlalchemy.ext.asyncio
from alembic import command
from alembic.config import Config
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import event, select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from mt_kv.storage.schema import items, log, shards

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


@contextlib.contextmanager
def _traced_by(context: otel_context.Context | None) -> Iterator[None]:
    """Run in ``context`` (a caller's trace), or with instrumentation suppressed if none."""
    if context is None:
        with suppress_instrumentation():
            yield
        return
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


# Rows are tuples in their statements' column order: they go to the driver as they are.


class LogRow(NamedTuple):
    shard: int
    seq: int
    epoch: int
    payload: bytes


class ItemRow(NamedTuple):
    shard: int
    keyspace: str
    partition: bytes
    key: bytes
    value: bytes | None  # None deletes
    version: int
    expires_at_ms: int


class ShardMeta(NamedTuple):
    shard: int
    epoch: int
    primary: str
    applied_seq: int  # the applied position the stored items reflect
    applied_epoch: int


@dataclass
class Batch:
    """Everything one round makes durable, in one transaction."""

    log_appends: list[LogRow] = field(default_factory=list)
    log_truncate_after: dict[int, int] = field(default_factory=dict)  # shard -> keep seq <= n
    log_trim_upto: dict[int, int] = field(default_factory=dict)  # shard -> drop seq <= n
    replace_shards: dict[int, list[ItemRow]] = field(default_factory=dict)  # snapshot installs
    item_writes: list[ItemRow] = field(default_factory=list)
    metas: dict[int, ShardMeta] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (
            self.log_appends
            or self.log_truncate_after
            or self.log_trim_upto
            or self.replace_shards
            or self.item_writes
            or self.metas
        )


class StoreFailed(Exception):
    """A transaction failed: the store takes no more writes (restart the replica)."""


@dataclass
class Loaded:
    metas: dict[int, ShardMeta]
    items: list[ItemRow]
    log: list[LogRow]


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    # WAL + synchronous=FULL: a committed transaction is on disk (fsync) before we acknowledge
    # it. A 64 MB page cache (the default is 2 MB): past it, random-key upserts read pages back.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


class Store:
    """The durable store of one replica: ``open``, ``load`` once, then ``commit`` rounds.

    Commits to SQLite run on a thread of their own through SQLAlchemy's synchronous engine:
    one hand-off per transaction. Through aiosqlite every cursor, execute and close is a
    hand-off to its thread and back through a busy event loop, which measured 5.5 to 7.5 ms per
    round's transaction under the bench (most of it waiting for loop turns), serialising the
    replica's rounds behind it. Other databases (PostgreSQL by URL) commit through the async
    engine, whose driver is natively async. Schema migrations and the initial load use the
    async engine either way.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._engine: AsyncEngine | None = None
        self._sync_engine: Engine | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._queue: list[tuple[tuple[Batch, ...], asyncio.Future[None], otel_context.Context]] = []
        self._writer: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None  # once a transaction failed, all do

    @property
    def engine(self) -> AsyncEngine:
        assert self._engine is not None, "store not open"
        return self._engine

    async def open(self) -> None:
        if self._url.startswith("sqlite"):
            path = self._url.split("///", 1)[-1]
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Looked up at call time, not imported: OpenTelemetry's SQLAlchemy instrumentation wraps
        # the module attributes when the process starts, after this module was imported.
        self._engine = sqlalchemy.ext.asyncio.create_async_engine(
            self._url, pool_size=1, max_overflow=0
        )
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)
            sync_url = make_url(self._url).set(drivername="sqlite")
            self._sync_engine = sqlalchemy.create_engine(sync_url, pool_size=1, max_overflow=0)
            event.listen(self._sync_engine, "connect", _sqlite_pragmas)
            self._thread = concurrent.futures.ThreadPoolExecutor(1, "kv-store")
        async with self._engine.begin() as conn:
            await conn.run_sync(_migrate)

    async def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._sync_engine is not None:
            self._sync_engine.dispose()
        if self._engine is not None:
            await self._engine.dispose()

    async def load(self) -> Loaded:
        async with self.engine.connect() as conn:
            metas = {
                row.shard: ShardMeta(
                    row.shard, row.epoch, row.primary, row.applied_seq, row.applied_epoch
                )
                for row in await conn.execute(select(shards))
            }
            item_rows = [
                ItemRow(
                    r.shard, r.keyspace, r.partition, r.key, r.value, r.version, r.expires_at_ms
                )
                for r in await conn.execute(select(items))
            ]
            log_rows = [
                LogRow(r.shard, r.seq, r.epoch, r.payload)
                for r in await conn.execute(select(log).order_by(log.c.shard, log.c.seq))
            ]
        return Loaded(metas, item_rows, log_rows)

    async def commit(self, *batches: Batch) -> None:
        """Make ``batches`` durable, atomically, applied in order (see :meth:`submit`)."""
        await asyncio.shield(self.submit(*batches))

    def submit(self, *batches: Batch) -> asyncio.Future[None]:
        """Queue ``batches`` for the next transaction; the future resolves once it committed.

        Commits queued while one is being written share the next transaction, so one fsync
        (the primary's writes and the Appends of the shards it follows), applied in the order
        they were queued. The trace context current here decides where its SQL spans go.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._failed is not None:
            future.set_exception(StoreFailed(f"an earlier transaction failed: {self._failed!r}"))
            return future
        batches = tuple(b for b in batches if not b.empty())
        if not batches:
            future.set_result(None)
            return future
        self._queue.append((batches, future, otel_context.get_current()))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())
        return future

    async def _write_queued(self) -> None:
        while self._queue:
            queued, self._queue = self._queue, []
            # The transaction's SQL spans go to the first caller that is being traced (a
            # kv.persist or kv.append span); with none, to no trace at all.
            traced = [c for *_, c in queued if trace.get_current_span(c).is_recording()]
            batches = [batch for group, *_ in queued for batch in group]
            try:
                await self._transaction(batches, traced[0] if traced else None)
            except Exception as err:
                # Fail-stop: nothing queued behind a lost transaction may commit without it
                # (a checkpoint's last chunk, say, would claim items that are not there).
                self._failed = err
                for _, future, _ in self._queue:
                    future.set_exception(StoreFailed(f"an earlier transaction failed: {err!r}"))
                self._queue = []
                for _, future, _ in queued:
                    if not future.done():
                        future.set_exception(err)
            else:
                for _, future, _ in queued:
                    if not future.done():
                        future.set_result(None)

    async def _transaction(
        self, batches: list[Batch], context: otel_context.Context | None
    ) -> None:
        if self._thread is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._thread, self._transaction_sync, batches, context)
            return
        with _traced_by(context):
            async with self.engine.begin() as conn:
                await conn.run_sync(_apply_all, batches)

    def _transaction_sync(self, batches: list[Batch], context: otel_context.Context | None) -> None:
        assert self._sync_engine is not None
        with _traced_by(context), self._sync_engine.begin() as conn:
            _apply_all(conn, batches)


def _apply_all(conn: Connection, batches: list[Batch]) -> None:
    for batch in batches:
        _apply(conn, batch)


def _apply(conn: Connection, batch: Batch) -> None:
    sql = _statements(conn.dialect.paramstyle)
    for shard, after in batch.log_truncate_after.items():
        conn.exec_driver_sql(sql.log_truncate, (shard, after))
    for shard, upto in batch.log_trim_upto.items():
        conn.exec_driver_sql(sql.log_trim, (shard, upto))
    if batch.log_appends:
        conn.exec_driver_sql(sql.log_upsert, batch.log_appends)
    for shard, rows in batch.replace_shards.items():
        conn.exec_driver_sql(sql.items_clear, (shard,))
        _write_items(conn, sql, rows)
    _write_items(conn, sql, batch.item_writes)
    if batch.metas:
        conn.exec_driver_sql(sql.meta_upsert, list(batch.metas.values()))


def _write_items(conn: Connection, sql: _Statements, rows: Sequence[ItemRow]) -> None:
    # In order: callers pass each key once per batch (a checkpoint's rows are per key).
    upserts = [
        (r.keyspace, r.partition, r.key, r.shard, r.value, r.version, r.expires_at_ms)
        for r in rows
        if r.value is not None
    ]
    deletes = [(r.keyspace, r.partition, r.key) for r in rows if r.value is None]
    if upserts:
        conn.exec_driver_sql(sql.item_upsert, upserts)
    if deletes:
        conn.exec_driver_sql(sql.item_delete, deletes)


@dataclass(frozen=True)
class _Statements:
    """The store's statements in one driver's parameter style, with positional parameters:
    executed with exec_driver_sql and tuples, so SQLAlchemy does no per-row parameter work
    (a dict per row through text() cost ~40% more per row here). ON CONFLICT ... DO UPDATE
    is the same in SQLite and PostgreSQL."""

    log_upsert: str
    log_truncate: str
    log_trim: str
    items_clear: str
    item_upsert: str
    item_delete: str
    meta_upsert: str


@functools.cache
def _statements(paramstyle: str) -> _Statements:
    def sql(template: str) -> str:
        """``template`` (qmark style) in the driver's style."""
        if paramstyle == "qmark":
            return template
        if paramstyle in ("format", "pyformat"):
            return template.replace("?", "%s")
        marks = {"numeric": ":{}", "numeric_dollar": "${}"}
        if paramstyle not in marks:
            raise ValueError(f"unsupported driver parameter style {paramstyle!r}")
        parts = template.split("?")
        numbered = (part + marks[paramstyle].format(n) for n, part in enumerate(parts[:-1], 1))
        return "".join(numbered) + parts[-1]

    return _Statements(
        log_upsert=sql(
            "INSERT INTO kv_log (shard, seq, epoch, payload) VALUES (?, ?, ?, ?) ON CONFLICT "
            "(shard, seq) DO UPDATE SET epoch = excluded.epoch, payload = excluded.payload"
        ),
        log_truncate=sql("DELETE FROM kv_log WHERE shard = ? AND seq > ?"),
        log_trim=sql("DELETE FROM kv_log WHERE shard = ? AND seq <= ?"),
        items_clear=sql("DELETE FROM kv_items WHERE shard = ?"),
        item_upsert=sql(
            "INSERT INTO kv_items (keyspace, partition, key, shard, value, version, "
            "expires_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (keyspace, partition, key) "
            "DO UPDATE SET shard = excluded.shard, value = excluded.value, "
            "version = excluded.version, expires_at_ms = excluded.expires_at_ms"
        ),
        item_delete=sql("DELETE FROM kv_items WHERE keyspace = ? AND partition = ? AND key = ?"),
        meta_upsert=sql(
            'INSERT INTO kv_shards (shard, epoch, "primary", applied_seq, applied_epoch) '
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (shard) DO UPDATE SET epoch = excluded.epoch, "
            '"primary" = excluded."primary", applied_seq = excluded.applied_seq, '
            "applied_epoch = excluded.applied_epoch"
        ),
    )


def _migrate(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
