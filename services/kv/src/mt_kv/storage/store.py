"""A replica's durable store: the log on the write path, the items in checkpoints.

The replica keeps its working state in memory and uses this store to survive a crash:

- the **log** — the entries it acknowledged as durable (written, fsynced, before anything is
  acknowledged) and each shard's epoch and primary; every group commit is one transaction;
- the **items** — the applied state of every shard as of its last checkpoint, with the
  applied position each shard's items reflect (the log covers everything newer), as
  *segments*: packed blobs, a base holding every item of a shard and then deltas holding those
  changed since. Items are only ever read back whole (reads are served from memory), so they
  need no row per key: upserting random keys into a table cost 8-20 µs per key (a page
  written per key), ~a fifth of the box's CPU under the put benchmark; packing them costs ~1.

With SQLite they are two database files (``kv.sqlite`` holds the items, ``log.sqlite`` the
log), because SQLite has one writer per file: a checkpoint in the same file held the write
path's transactions behind it. Log transactions run on the event loop itself (a few hundred
microseconds, mostly the fsync: a hand-off to a thread and back cost more than that under
load); checkpoints run on a thread of their own. With PostgreSQL (by URL) both live in the one
database, through the async engine. On start each database is migrated (Alembic: both carry
the one schema, each using its part) and everything is loaded back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, cast

import sqlalchemy
import sqlalchemy.ext.asyncio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import event, select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from mt_kv.data import Entry, KeyT, decode_effects, encode_changes
from mt_kv.storage.schema import items, log, segments, shards

_logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The newest migration (tests/unit check it is the migrations' head). A store already at it is
# opened without importing Alembic: ~0.5 s of a replica's ~2 s of imports on this box (three
# times that while it is busy), and a restarting replica is on the path of a failover's
# quorum when another fault follows.
SCHEMA_HEAD = "0002"
ITEMS_PER_PART = 20_000  # items per blob of a segment


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


class EpochRow(NamedTuple):
    """A shard's epoch and primary, as the replica last learnt them (in the log)."""

    shard: int
    epoch: int
    primary: str


class Segment(NamedTuple):
    """A shard's items as of ``seq``: every one (``base``) or those changed since the shard's
    segment before (a delta; a deleted key is in it with None)."""

    shard: int
    seq: int
    base: bool
    items: Mapping[KeyT, Entry | None]


class Position(NamedTuple):
    """The applied position a shard's stored items reflect (with the items)."""

    shard: int
    applied_seq: int
    applied_epoch: int


@dataclass(frozen=True)
class ShardMeta:
    shard: int
    epoch: int
    primary: str
    applied_seq: int
    applied_epoch: int


@dataclass
class Batch:
    """What one group commit writes to the log, in one transaction."""

    log_appends: list[LogRow] = field(default_factory=list)
    log_truncate_after: dict[int, int] = field(default_factory=dict)  # shard -> keep seq <= n
    log_trim_upto: dict[int, int] = field(default_factory=dict)  # shard -> drop seq <= n
    epochs: dict[int, EpochRow] = field(default_factory=dict)
    dropped: set[int] = field(default_factory=set)  # shards no longer held: log and epoch go

    def empty(self) -> bool:
        return not (
            self.log_appends
            or self.log_truncate_after
            or self.log_trim_upto
            or self.epochs
            or self.dropped
        )


class Durable(Protocol):
    """What a replica needs of its store (:class:`Store`; the simulation's keeps it in memory)."""

    async def load(self) -> Loaded: ...

    def submit(self, *batches: Batch) -> asyncio.Future[None]: ...

    async def commit(self, *batches: Batch) -> None: ...

    async def checkpoint(
        self, written: Sequence[Segment], positions: Sequence[Position]
    ) -> None: ...

    async def replace_shard(
        self, shard: int, items: Mapping[KeyT, Entry | None], position: Position
    ) -> None: ...

    async def drop_shard(self, shard: int) -> None: ...


class StoreFailed(Exception):
    """A transaction failed: the store takes no more writes (restart the replica)."""


@dataclass
class Loaded:
    metas: dict[int, ShardMeta]
    items: dict[int, dict[KeyT, Entry]]  # shard -> its items as of its applied position
    log: list[LogRow]


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    # WAL + synchronous=FULL: a committed transaction is on disk (fsync) before we acknowledge
    # it. A 64 MB page cache (the default is 2 MB): past it, random-key upserts read pages back.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


def _no_auto_checkpoint(dbapi_conn: Any, _: Any) -> None:
    # The log's writer never copies its WAL into the database itself: that copy and its fsync
    # ran inside whichever commit crossed 1,000 pages, on the event loop, at the same moment in
    # every replica (they log the same bytes). The checkpoint thread does it (PASSIVE).
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def log_url_for(url: str) -> str:
    """The log's database for items at ``url``: a ``log.sqlite`` beside a SQLite file (one
    writer per file), else the same database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return url
    return parsed.set(database=str(Path(parsed.database).with_name("log.sqlite"))).render_as_string(
        hide_password=False
    )


class _Database:
    """One database: an async engine (migrations, loading, and PostgreSQL's writes) and, for
    SQLite, a synchronous engine that writes either on the event loop or on a thread."""

    def __init__(self, url: str, *, on_thread: bool, wal_elsewhere: bool = False) -> None:
        self.url = url
        self._on_thread = on_thread
        self._wal_elsewhere = wal_elsewhere  # its WAL is checkpointed by :meth:`checkpoint_wal`
        self._wal_conn: sqlite3.Connection | None = None
        self._engine: AsyncEngine | None = None
        self._sync_engine: Engine | None = None
        self._conn: Connection | None = None  # SQLite: held open, on the thread that writes
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def engine(self) -> AsyncEngine:
        assert self._engine is not None, "store not open"
        return self._engine

    async def open(self) -> None:
        if self.url.startswith("sqlite"):
            path = self.url.split("///", 1)[-1]
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Looked up at call time, not imported: OpenTelemetry's SQLAlchemy instrumentation wraps
        # the module attributes when the process starts, after this module was imported.
        self._engine = sqlalchemy.ext.asyncio.create_async_engine(
            self.url, pool_size=2, max_overflow=0
        )
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)
            sync_url = make_url(self.url).set(drivername="sqlite")
            self._sync_engine = sqlalchemy.create_engine(sync_url, pool_size=1, max_overflow=0)
            event.listen(self._sync_engine, "connect", _sqlite_pragmas)
            if self._wal_elsewhere:
                event.listen(self._sync_engine, "connect", _no_auto_checkpoint)
            if self._on_thread:
                self._thread = concurrent.futures.ThreadPoolExecutor(1, "kv-store")
        async with self._engine.begin() as conn:
            await conn.run_sync(_migrate)

    @property
    def paramstyle(self) -> str:
        return self.engine.dialect.paramstyle

    @property
    def inline(self) -> bool:
        """Transactions run on the caller's thread, synchronously (:meth:`transaction_now`)."""
        return self._sync_engine is not None and self._thread is None

    async def close(self) -> None:
        if self._thread is not None:
            self._thread.submit(self._close_conn).result()
            self._thread.shutdown(wait=True)
        else:
            self._close_conn()
        if self._sync_engine is not None:
            self._sync_engine.dispose()
        if self._engine is not None:
            await self._engine.dispose()

    async def transaction(
        self, work: Callable[[Connection], None], context: otel_context.Context | None
    ) -> None:
        """``work`` in one transaction, its SQL spans in ``context`` (none if None)."""
        if self._sync_engine is None:
            with _traced_by(context):
                async with self.engine.begin() as conn:
                    await conn.run_sync(work)
        elif self._thread is None:
            self._transaction_sync(work, context)
        else:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._thread, self._transaction_sync, work, context)

    async def run_on_thread(self, work: Callable[[], None]) -> None:
        """``work`` on this database's writing thread (here and now if it has none)."""
        if self._thread is None:
            work()
        else:
            await asyncio.get_running_loop().run_in_executor(self._thread, work)

    def transaction_now(self, work: Statements, context: otel_context.Context | None) -> None:
        """An inline database's transaction, run here and now. Untraced, it goes straight to
        the driver: SQLAlchemy's work per statement and per transaction was ~a third of the
        CPU of a log transaction; traced, through SQLAlchemy, whose spans join ``context``."""
        assert self.inline
        if context is not None:
            self._transaction_sync(functools.partial(_through, work), context)
            return
        driver = cast(sqlite3.Connection, self._connection().connection.dbapi_connection)
        cursor = driver.cursor()
        try:
            work(lambda sql, params: _driver_execute(cursor, sql, params))
            driver.commit()
        except BaseException:
            driver.rollback()
            raise
        finally:
            cursor.close()

    def _connection(self) -> Connection:
        # One connection held open: checking one out of the pool per transaction (and the
        # tracing instrumentation's wrapper around each) was ~half of a transaction's CPU.
        if self._conn is None:
            assert self._sync_engine is not None
            with suppress_instrumentation():  # once per process: no span for it in any trace
                self._conn = self._sync_engine.connect()
        return self._conn

    def _transaction_sync(
        self, work: Callable[[Connection], None], context: otel_context.Context | None
    ) -> None:
        conn = self._connection()
        with _traced_by(context), conn.begin():
            work(conn)

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def checkpoint_wal(self) -> None:
        """Copy the WAL's committed pages into the database (SQLite's PASSIVE checkpoint: it
        waits for no writer, and the writer starts the WAL over once all of it is copied).
        Blocking: call it from a thread that may wait on the disk, always the same one."""
        if not self._wal_elsewhere or self._sync_engine is None:
            return
        if self._wal_conn is None:
            database = make_url(self.url).database
            assert database, "a SQLite database in a file"
            self._wal_conn = sqlite3.connect(database)
        self._wal_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close_wal_conn(self) -> None:
        if self._wal_conn is not None:
            self._wal_conn.close()
            self._wal_conn = None


class Store:
    """The durable store of one replica: ``open``, ``load`` once, then write."""

    def __init__(self, url: str, log_url: str = "") -> None:
        log_url = log_url or log_url_for(url)
        self._items = _Database(url, on_thread=True)
        self._log = (
            self._items
            if log_url == url
            else _Database(log_url, on_thread=False, wal_elsewhere=True)
        )
        self._queue: list[_Queued] = []
        self._writer: asyncio.Task[None] | None = None
        self._write_scheduled = False
        self._failed: BaseException | None = None  # once a transaction failed, all do

    @property
    def engine(self) -> AsyncEngine:
        """The items database's engine."""
        return self._items.engine

    async def open(self) -> None:
        await self._items.open()
        if self._log is not self._items:
            await self._log.open()
            await self._move_log_out_of_items()
        await self._move_item_rows_into_segments()

    async def close(self) -> None:
        if self._log is not self._items:
            await self._items.run_on_thread(self._log.close_wal_conn)
        await self._items.close()
        if self._log is not self._items:
            await self._log.close()

    async def _move_log_out_of_items(self) -> None:
        """Stores written before the log had a database of its own keep it beside the items:
        move it (and the epochs) over once, so no acknowledged entry is left behind."""
        async with self._items.engine.connect() as conn:
            old_log = [tuple(r) for r in await conn.execute(select(log))]
            old_epochs = [
                EpochRow(r.shard, r.epoch, r.primary) for r in await conn.execute(select(shards))
            ]
        if not old_log:
            return
        async with self._log.engine.connect() as conn:
            if (await conn.execute(select(log.c.seq).limit(1))).first() is not None:
                return  # moved already (the items side is cleared right after)

        def copy(conn: Connection) -> None:
            sql = _statements(conn.dialect.paramstyle)
            conn.exec_driver_sql(sql.log_upsert, old_log)
            if old_epochs:
                conn.exec_driver_sql(sql.epoch_upsert, old_epochs)

        def clear(conn: Connection) -> None:
            conn.execute(log.delete())

        await self._log.transaction(copy, None)
        await self._items.transaction(clear, None)

    async def load(self) -> Loaded:
        async with self._log.engine.connect() as conn:
            epochs = {r.shard: (r.epoch, r.primary) for r in await conn.execute(select(shards))}
            log_rows = [
                LogRow(r.shard, r.seq, r.epoch, r.payload)
                for r in await conn.execute(select(log).order_by(log.c.shard, log.c.seq))
            ]
        async with self._items.engine.connect() as conn:
            positions = {
                r.shard: (r.applied_seq, r.applied_epoch)
                for r in await conn.execute(select(shards))
            }
            found = await conn.execute(
                select(segments).order_by(segments.c.shard, segments.c.seq, segments.c.part)
            )
            state: dict[int, dict[KeyT, Entry]] = {}
            for row in found:
                if row.base and row.part == 0:
                    state[row.shard] = {}  # a base replaces whatever came before it
                held = state.setdefault(row.shard, {})
                for key, entry in decode_effects(row.data):
                    if entry is None:
                        held.pop(key, None)
                    else:
                        held[key] = entry
        metas = {
            shard: ShardMeta(shard, *epochs.get(shard, (0, "")), *positions.get(shard, (0, 0)))
            for shard in epochs.keys() | positions.keys()
        }
        return Loaded(metas, state, log_rows)

    async def _move_item_rows_into_segments(self) -> None:
        """Stores written before segments keep a row per key in kv_items: each shard's rows
        become its base segment (at the applied position they reflect), once."""
        async with self._items.engine.connect() as conn:
            rows = list(await conn.execute(select(items)))
            if not rows:
                return
            positions = {r.shard: r.applied_seq for r in await conn.execute(select(shards))}
        by_shard: dict[int, dict[KeyT, Entry | None]] = {}
        for r in rows:
            entry = (r.value, r.version, r.expires_at_ms)
            by_shard.setdefault(r.shard, {})[(r.keyspace, r.partition, r.key)] = entry
        bases = [
            Segment(shard, positions.get(shard, 0), True, changes)
            for shard, changes in by_shard.items()
        ]

        def move(conn: Connection) -> None:
            _write_segments(conn, bases, [])
            conn.execute(items.delete())

        await self._items.transaction(move, None)

    # ---------------------------------------------------------------- the log

    async def commit(self, *batches: Batch) -> None:
        """Make ``batches`` durable in the log, atomically, applied in order."""
        await asyncio.shield(self.submit(*batches))

    def submit(self, *batches: Batch) -> asyncio.Future[None]:
        """Queue ``batches`` for the log's next transaction; the future resolves once it
        committed.

        Everything queued before the transaction starts shares it, so one fsync (the
        primary's writes and the Appends of the shards it follows), applied in the order
        queued. Nothing to write still resolves only once everything queued before it is
        synced: a follower answering a repeated Append must not acknowledge entries whose
        transaction is still on its way. The trace context current here decides where its SQL
        spans go.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._failed is not None:
            future.set_exception(StoreFailed(f"an earlier transaction failed: {self._failed!r}"))
            return future
        batches = tuple(b for b in batches if not b.empty())
        writing = self._writer is not None and not self._writer.done()
        if not batches and not self._queue and not writing:
            future.set_result(None)  # nothing on its way: everything asked is synced
            return future
        self._queue.append((batches, future, otel_context.get_current()))
        if self._log.inline:
            # Once this event-loop turn is over, whatever it queued goes in one transaction,
            # run right there (no task, no thread).
            if not self._write_scheduled:
                self._write_scheduled = True
                asyncio.get_running_loop().call_soon(self._write_queued_now)
        elif self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())
        return future

    async def _write_queued(self) -> None:
        while self._queue:
            queued, self._queue = self._queue, []
            if not any(group for group, *_ in queued):  # barriers only: what was before is
                self._settle(queued, None)  # synced (the transaction that ran meanwhile)
                continue
            work, context = _work_of(queued, self._log.paramstyle)
            try:
                await self._log.transaction(functools.partial(_through, work), context)
            except Exception as err:
                self._settle(queued, err)
            else:
                self._settle(queued, None)

    def _write_queued_now(self) -> None:
        self._write_scheduled = False
        queued, self._queue = self._queue, []
        if not queued:
            return
        work, context = _work_of(queued, self._log.paramstyle)
        try:
            self._log.transaction_now(work, context)
        except Exception as err:
            self._settle(queued, err)
        else:
            self._settle(queued, None)

    def _settle(self, queued: list[_Queued], err: Exception | None) -> None:
        if err is not None:
            self._fail(err)
        for _, future, _ in queued:
            if future.done():
                continue
            if err is None:
                future.set_result(None)
            else:
                future.set_exception(err)

    def _fail(self, err: BaseException) -> None:
        """Fail-stop: nothing may commit after a lost transaction (a log trim, say, after a
        checkpoint that is not there; an entry after a missing one)."""
        self._failed = err
        for _, future, _ in self._queue:
            future.set_exception(StoreFailed(f"an earlier transaction failed: {err!r}"))
        self._queue = []

    # ---------------------------------------------------------------- the items

    async def checkpoint(self, written: Sequence[Segment], positions: Sequence[Position]) -> None:
        """Write segments (a base replaces every earlier segment of its shard) and the applied
        positions the shards' items now reflect, in one transaction."""
        await self._items_transaction(
            functools.partial(_write_segments, written=written, positions=positions)
        )
        if self._log is not self._items:
            try:
                await self._items.run_on_thread(self._log.checkpoint_wal)
            except sqlite3.Error:
                # Nothing is lost (the WAL holds it): the next checkpoint copies it.
                _logger.warning("the log's WAL checkpoint failed", exc_info=True)

    async def replace_shard(
        self, shard: int, items: Mapping[KeyT, Entry | None], position: Position
    ) -> None:
        """A snapshot install: the shard's items are exactly ``items``, as of ``position``."""
        base = Segment(shard, position.applied_seq, True, items)
        await self.checkpoint([base], [position])

    async def drop_shard(self, shard: int) -> None:
        """Forget a shard this replica no longer holds a copy of: its log and epoch, then its
        items and position (a crash in between leaves items a restart drops again)."""
        await self.commit(Batch(dropped={shard}))

        def forget(conn: Connection) -> None:
            sql = _statements(conn.dialect.paramstyle)
            conn.exec_driver_sql(sql.segments_clear, (shard,))
            conn.exec_driver_sql(sql.shard_delete, (shard,))

        await self._items_transaction(forget)

    async def _items_transaction(self, work: Callable[[Connection], None]) -> None:
        if self._failed is not None:
            raise StoreFailed(f"an earlier transaction failed: {self._failed!r}")
        try:
            await self._items.transaction(work, None)
        except Exception as err:
            self._fail(err)
            raise


_Queued = tuple[tuple[Batch, ...], asyncio.Future[None], otel_context.Context]
Params = tuple[Any, ...] | list[Any]  # a list (of tuples): the statement once per row
Execute = Callable[[str, Params], None]
Statements = Callable[[Execute], None]  # a transaction's statements, through ``Execute``


def _through(work: Statements, conn: Connection) -> None:
    """``work`` executed through SQLAlchemy (so its instrumentation sees each statement)."""
    work(lambda sql, params: _sa_execute(conn, sql, params))


def _sa_execute(conn: Connection, sql: str, params: Params) -> None:
    conn.exec_driver_sql(sql, params)


def _driver_execute(cursor: sqlite3.Cursor, sql: str, params: Params) -> None:
    if isinstance(params, list):
        cursor.executemany(sql, params)
    else:
        cursor.execute(sql, params)


def _work_of(
    queued: list[_Queued], paramstyle: str
) -> tuple[Statements, otel_context.Context | None]:
    """One transaction for everything queued; its SQL spans go to the first caller that is
    being traced (a kv.persist or kv.append span), with none to no trace at all."""
    traced = [c for *_, c in queued if trace.get_current_span(c).is_recording()]
    batches = [batch for group, *_ in queued for batch in group]
    work = functools.partial(_apply_all, batches=batches, sql=_statements(paramstyle))
    return work, traced[0] if traced else None


def _apply_all(execute: Execute, batches: list[Batch], sql: _Statements) -> None:
    for batch in batches:
        for shard, after in batch.log_truncate_after.items():
            execute(sql.log_truncate, (shard, after))
        for shard, upto in batch.log_trim_upto.items():
            execute(sql.log_trim, (shard, upto))
        if batch.log_appends:
            execute(sql.log_upsert, batch.log_appends)
        if batch.epochs:
            execute(sql.epoch_upsert, list(batch.epochs.values()))
        for shard in batch.dropped:
            execute(sql.log_trim, (shard, 2**62))
            execute(sql.shard_delete, (shard,))


def _write_segments(
    conn: Connection, written: Sequence[Segment], positions: Sequence[Position]
) -> None:
    sql = _statements(conn.dialect.paramstyle)
    rows = []
    for segment in written:
        if segment.base:
            conn.exec_driver_sql(sql.segments_clear, (segment.shard,))
        changes = list(segment.items.items())
        for part, start in enumerate(range(0, max(len(changes), 1), ITEMS_PER_PART)):
            data = encode_changes(changes[start : start + ITEMS_PER_PART])
            rows.append((segment.shard, segment.seq, part, segment.base, data))
    if rows:
        conn.exec_driver_sql(sql.segment_upsert, rows)
    if positions:
        conn.exec_driver_sql(sql.position_upsert, list(positions))


@dataclass(frozen=True)
class _Statements:
    """The store's statements in one driver's parameter style, with positional parameters:
    executed with exec_driver_sql and tuples, so SQLAlchemy does no per-row parameter work
    (a dict per row through text() cost ~40% more per row here). ON CONFLICT ... DO UPDATE
    is the same in SQLite and PostgreSQL. A shard's row in kv_shards is written by two
    statements, each setting its own columns (the epoch with the log, the applied position
    with the items), so they may share one table in one database."""

    log_upsert: str
    log_truncate: str
    log_trim: str
    segments_clear: str
    segment_upsert: str
    epoch_upsert: str
    position_upsert: str
    shard_delete: str


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
        segments_clear=sql("DELETE FROM kv_segments WHERE shard = ?"),
        segment_upsert=sql(
            "INSERT INTO kv_segments (shard, seq, part, base, data) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (shard, seq, part) DO UPDATE SET base = excluded.base, "
            "data = excluded.data"
        ),
        epoch_upsert=sql(
            'INSERT INTO kv_shards (shard, epoch, "primary", applied_seq, applied_epoch) '
            "VALUES (?, ?, ?, 0, 0) ON CONFLICT (shard) DO UPDATE SET epoch = excluded.epoch, "
            '"primary" = excluded."primary"'
        ),
        shard_delete=sql("DELETE FROM kv_shards WHERE shard = ?"),
        position_upsert=sql(
            'INSERT INTO kv_shards (shard, epoch, "primary", applied_seq, applied_epoch) '
            "VALUES (?, 0, '', ?, ?) ON CONFLICT (shard) DO UPDATE SET "
            "applied_seq = excluded.applied_seq, applied_epoch = excluded.applied_epoch"
        ),
    )


def _migrate(connection: Connection) -> None:
    if _at_head(connection):
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _at_head(connection: Connection) -> bool:
    if not sqlalchemy.inspect(connection).has_table("alembic_version"):
        return False
    rows = connection.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).all()
    return [row[0] for row in rows] == [SCHEMA_HEAD]
