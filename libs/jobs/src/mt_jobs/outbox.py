"""The transactional outbox, over the KV: a job is published if and only if the write that
announces it committed — even if the process dies in between.

    staged = outbox.stage(where, [Job("fanout", {...})])     # job rows beside the state
    await kv.write([...state mutations..., *staged.puts], checks)  # one atomic write
    outbox.settle_soon(staged)            # to Kafka, after the answer; rows forgotten later

``stage`` makes each job a row in the partition of ``where`` (the partition the caller's write
changes), keyed under ``OUTBOX_KEY_PREFIX``: the job is written in the same atomic write as the
change it announces, so it exists exactly when the change does — a job is a fact, not an
intention, and its handler need not look whether the change happened. The KV lists every such
row in its shard's outbox index (same log entry), which is how the relay finds them.

``settle`` publishes the jobs and hands their rows to a deleter that removes them in the
background, batched; ``settle_soon`` does the same in a task of its own, so that the request
that staged them does not wait for the broker's ack (the rows are committed: should the task
not get there, the relay does). While an Outbox is open, its relay pages every shard's outbox
index every ``relay_interval_ms`` and publishes (then deletes) this owner's rows older than
``stale_after_ms``: the jobs of a process that died between its write and its publish, or that
could not reach the broker.

What consumers must accept: a job may arrive more than once (a relay may publish a job whose
publish was merely slow, a crash may come between a publish and the row's deletion, and Kafka
delivery is at-least-once anyway) — be idempotent — and a relayed job arrives late and out of
order with later ones.

Use one ``owner`` per service (not per process): every instance's relay takes the same rows, so
a crashed instance's jobs are picked up by its peers or its successor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mt_core.errors import MinithreadsError
from mt_core.messaging import inject_headers
from mt_kv_client import KV, Key
from mt_kv_client.client import Put
from mt_kv_contract.keys import OUTBOX_KEY_PREFIX
from opentelemetry import context as otel_context
from opentelemetry import propagate

from mt_jobs.envelope import Job, now_ms
from mt_jobs.producer import JobProducer

log = logging.getLogger(__name__)

INDEX_PAGE = 200
FORGET_EVERY_S = 0.25  # the deleter's batching window (a row outliving it costs nothing)


@dataclass(frozen=True)
class Staged:
    """Jobs as rows beside a state change (:meth:`Outbox.stage`): ``puts`` go into the
    caller's write; once it committed, :meth:`Outbox.settle` publishes the jobs."""

    jobs: tuple[Job, ...]
    puts: tuple[Put, ...]

    @property
    def rows(self) -> list[Key]:
        return [put.key for put in self.puts]


@dataclass(frozen=True)
class _Record:
    key: Key
    job: Job
    trace: dict[str, str]  # the staging request's trace context (W3C headers)
    at_ms: int


class Outbox:
    """``async with Outbox(kv, producer, "posts") as outbox: ...`` (see the module doc)."""

    def __init__(
        self,
        kv: KV,
        producer: JobProducer,
        owner: str,
        *,
        relay_interval_ms: int = 5_000,
        stale_after_ms: int = 5_000,
    ) -> None:
        if not owner or "/" in owner:
            raise ValueError("an outbox needs an owner (no '/')")
        self._kv = kv
        self._producer = producer
        self._owner = owner
        self._prefix = OUTBOX_KEY_PREFIX + f"{owner}/".encode()
        self._interval_s = relay_interval_ms / 1000
        self._stale_after_ms = stale_after_ms
        self._forgotten: list[Key] = []
        self._forgetting = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._settling: set[asyncio.Task[bool]] = set()

    async def __aenter__(self) -> Outbox:
        self._tasks = [
            asyncio.create_task(self._relay_loop(), name=f"outbox-relay-{self._owner}"),
            asyncio.create_task(self._forget_loop(), name=f"outbox-forget-{self._owner}"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._settling:  # a graceful stop publishes what it can; the relay, the rest
            await asyncio.wait(set(self._settling), timeout=2.0)
        for task in [*self._tasks, *self._settling]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(MinithreadsError):
            await self._delete(self._take_forgotten())  # the rest: the relay's, next time

    def row_key(self, where: Key, job: Job) -> Key:
        return Key(where.keyspace, where.partition, self._prefix + job.id.encode())

    def stage(self, where: Key, jobs: Sequence[Job]) -> Staged:
        """Rows for ``jobs`` in the partition of ``where``, for the caller's atomic write."""
        trace = {name: value.decode("latin-1") for name, value in inject_headers()}
        at_ms = now_ms()
        puts = tuple(
            Put(self.row_key(where, job), _encode_record(job, trace, at_ms)) for job in jobs
        )
        return Staged(tuple(jobs), puts)

    async def publish(self, staged: Staged) -> None:
        """Enqueue the jobs (their write committed), then let their rows go. If this raises,
        the relay publishes them later."""
        if not staged.jobs:
            return
        await self._producer.enqueue_many(staged.jobs)
        self._forget(staged.rows)

    async def settle(self, staged: Staged, timeout_s: float = 2.0) -> bool:
        """Publish, without ever failing the caller's request over it: with the broker down or
        slow, the rows stay in the KV and the relay publishes them once it is back. Returns
        whether it was published now."""
        try:
            await asyncio.wait_for(self.publish(staged), timeout_s)
        except Exception as err:  # any broker trouble: the relay is the backstop
            log.warning("publish deferred to the outbox relay", extra={"reason": repr(err)})
            return False
        return True

    def settle_soon(self, staged: Staged) -> None:
        """:meth:`settle` in the background: the caller answers without waiting for the
        broker's ack (the jobs' rows committed with its write, so they are published either
        way — by this task, or by the relay)."""
        if not staged.jobs:
            return
        task = asyncio.create_task(self.settle(staged), name=f"outbox-settle-{self._owner}")
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def emit(self, where: Key, jobs: Sequence[Job]) -> None:
        """Jobs that announce no write of their own: written as rows (durable), then
        published."""
        staged = self.stage(where, jobs)
        if staged.puts:
            await self._kv.write(list(staged.puts))
            await self.settle(staged)

    # ------------------------------------------------------------------ forgetting

    def _forget(self, rows: Sequence[Key]) -> None:
        self._forgotten.extend(rows)
        self._forgetting.set()

    def _take_forgotten(self) -> list[Key]:
        rows, self._forgotten = self._forgotten, []
        return rows

    async def _forget_loop(self) -> None:
        """Delete published rows a batch at a time, off the requests' path: a row outliving its
        publish costs only a duplicate, should the relay see it first."""
        while True:
            await self._forgetting.wait()
            await asyncio.sleep(FORGET_EVERY_S)
            self._forgetting.clear()
            rows = self._take_forgotten()
            try:
                await self._delete(rows)
            except MinithreadsError as err:
                log.warning("outbox rows not deleted: %r", err, extra={"owner": self._owner})

    async def _delete(self, rows: Sequence[Key]) -> None:
        # One delete per row: the KV client sends them as one BatchWrite per primary.
        outcomes = await asyncio.gather(*(self._kv.delete(r) for r in rows), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    # ------------------------------------------------------------------ the relay

    async def relay(self) -> int:
        """One pass of the relay over every shard's outbox index; how many jobs it published."""
        published = 0
        for shard in await self._kv.shards():
            published += await self._relay_shard(shard)
        return published

    async def _relay_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                published = await self.relay()
            except Exception:  # KV or Kafka away: the rows wait for the next pass
                log.exception("outbox relay pass failed", extra={"owner": self._owner})
            else:
                if published:
                    log.info(
                        "outbox relayed %d stale jobs",
                        published,
                        extra={"owner": self._owner, "jobs": published},
                    )

    async def _relay_shard(self, shard: int) -> int:
        published = 0
        cursor = ""
        while True:
            keys, cursor = await self._kv.outbox_page(shard, cursor=cursor, limit=INDEX_PAGE)
            ours = [k for k in keys if k.key.startswith(self._prefix)]
            if ours:
                published += await self._relay_rows(ours)
            if not cursor:
                return published

    async def _relay_rows(self, keys: list[Key]) -> int:
        cutoff = now_ms() - self._stale_after_ms
        found = await self._kv.multi_get(keys)
        stale: list[_Record] = []
        for key, item in found.items():
            record = _decode_record(key, item.value) if item is not None else None
            if record is not None and record.at_ms <= cutoff:
                stale.append(record)
            elif item is not None and record is None:
                await self._delete([key])  # unreadable: logged by _decode_record
        if not stale:
            return 0
        futures = []
        for record in stale:
            # Publish in the trace of the request that staged the job, not the relay's.
            token = otel_context.attach(propagate.extract(record.trace))
            try:
                futures.append(await self._producer.submit(record.job))
            finally:
                otel_context.detach(token)
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        done = [
            r.key for r, o in zip(stale, outcomes, strict=True) if not isinstance(o, BaseException)
        ]
        await self._delete(done)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return len(done)


def _encode_record(job: Job, trace: dict[str, str], at_ms: int) -> bytes:
    doc = {"at_ms": at_ms, "trace": trace, "job": job.encode().decode()}
    return json.dumps(doc, separators=(",", ":")).encode()


def _decode_record(key: Key, value: bytes) -> _Record | None:
    try:
        doc: Any = json.loads(value)
        return _Record(key, Job.decode(doc["job"].encode()), dict(doc["trace"]), int(doc["at_ms"]))
    except Exception as err:
        log.error("dropping an unreadable outbox record %s: %r", key, err)
        return None
