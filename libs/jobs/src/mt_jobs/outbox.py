"""The transactional outbox, over the KV: no job is lost between a service's write and its
publish, even if the process dies in between.

    intent = await outbox.intend([Job("fanout", {"post": post_id})])  # durable in the KV
    await kv.write(...)                                                # the state change
    await outbox.publish(intent)                                       # to Kafka, then forgotten

``intend`` writes the jobs to keyspace ``outbox``, partition ``<owner>:<bucket>`` (one bucket
per intent, so the write is atomic), before the caller changes its state. ``publish`` enqueues
them and deletes the records. While an Outbox is open, a relay scans the owner's buckets every
``relay_interval_ms`` and publishes (then deletes) records older than ``stale_after_ms``: the
jobs of a process that died between intend and publish are published by the next one.

What consumers must accept (document it to every handler author):

* Jobs may arrive more than once (a relay may publish a job whose publish was merely slow, and
  Kafka delivery is at-least-once anyway): be idempotent, keyed on ``Job.id``.
* A job may arrive for a write that never happened (the process died, or the write failed,
  after ``intend``): check the state the job refers to, never trust the job alone.
* A relayed job arrives late (after ``stale_after_ms``) and out of order with later ones.
* ``stale_after_ms`` must exceed the longest time between ``intend`` and ``publish`` (the
  write's retry budget): otherwise a relay can publish a job before its write is visible. A
  handler that finds no state for a job younger than that should raise (and be retried)
  rather than drop it; one that finds none for an older job may drop it.

Use one ``owner`` per service (not per process): every instance's relay scans the same buckets,
so a crashed instance's records are picked up by its peers or its successor, not orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mt_core.errors import MinithreadsError
from mt_core.messaging import inject_headers
from mt_kv_client import Key, KVClient
from mt_kv_client.client import Delete, Put
from mt_kv_client.routing import MAX_BATCH
from opentelemetry import context as otel_context
from opentelemetry import propagate

from mt_jobs.envelope import Job, now_ms
from mt_jobs.producer import JobProducer

log = logging.getLogger(__name__)

KEYSPACE = "outbox"
SCAN_PAGE = 200


@dataclass(frozen=True)
class Intent:
    """Jobs recorded by :meth:`Outbox.intend`, to be published after the caller's write."""

    jobs: tuple[Job, ...]
    bucket: int
    partition: bytes

    def keys(self) -> list[Key]:
        return [Key(KEYSPACE, self.partition, job.id.encode()) for job in self.jobs]


@dataclass(frozen=True)
class _Record:
    key: Key
    job: Job
    trace: dict[str, str]  # the intending request's trace context (W3C headers)
    at_ms: int


class Outbox:
    """``async with Outbox(kv, producer, "posts") as outbox: ...`` (see the module doc)."""

    def __init__(
        self,
        kv: KVClient,
        producer: JobProducer,
        owner: str,
        *,
        buckets: int = 16,
        relay_interval_ms: int = 1000,
        stale_after_ms: int = 3000,
    ) -> None:
        if buckets < 1 or not owner:
            raise ValueError("an outbox needs an owner and at least one bucket")
        self._kv = kv
        self._producer = producer
        self._owner = owner
        self._buckets = buckets
        self._interval_s = relay_interval_ms / 1000
        self._stale_after_ms = stale_after_ms
        self._relay: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Outbox:
        self._relay = asyncio.create_task(self._relay_loop(), name=f"outbox-relay-{self._owner}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._relay is not None:
            self._relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay
            self._relay = None

    def partition(self, bucket: int) -> bytes:
        return f"{self._owner}:{bucket}".encode()

    async def intend(self, jobs: Sequence[Job]) -> Intent:
        """Durably record ``jobs`` (call BEFORE the state change they announce)."""
        if not jobs:
            return Intent((), 0, b"")
        bucket = zlib.crc32(jobs[0].id.encode()) % self._buckets
        intent = Intent(tuple(jobs), bucket, self.partition(bucket))
        trace = {name: value.decode("latin-1") for name, value in inject_headers()}
        at_ms = now_ms()
        puts = [
            Put(key, _encode_record(job, trace, at_ms))
            for key, job in zip(intent.keys(), intent.jobs, strict=True)
        ]
        for start in range(0, len(puts), MAX_BATCH):  # one atomic write per KV batch
            await self._kv.write(puts[start : start + MAX_BATCH])
        return intent

    async def publish(self, intent: Intent) -> None:
        """Enqueue the intent's jobs, then forget them. If this raises, the relay publishes
        them later: the caller may log and go on."""
        if not intent.jobs:
            return
        await self._producer.enqueue_many(intent.jobs)
        await self._forget(intent.keys())

    async def settle(self, intent: Intent, timeout_s: float = 2.0) -> bool:
        """Publish, without ever failing the caller's request over it: with the broker down or
        slow, the intent stays in the KV and the relay publishes it once the broker is back.
        Returns whether it was published now."""
        try:
            await asyncio.wait_for(self.publish(intent), timeout_s)
        except Exception as err:  # any broker trouble: the relay is the backstop
            log.warning("publish deferred to the outbox relay", extra={"reason": repr(err)})
            return False
        return True

    async def emit(self, jobs: Sequence[Job]) -> None:
        """intend + publish, for events that need no ordering with a write."""
        await self.publish(await self.intend(jobs))

    async def cancel(self, intent: Intent) -> None:
        """Forget an intent without publishing it (the caller's write definitely failed)."""
        if intent.jobs:
            await self._forget(intent.keys(), quiet=False)

    async def relay(self) -> int:
        """One pass of the relay over every bucket; returns how many jobs it published."""
        published = 0
        for bucket in range(self._buckets):
            published += await self._relay_bucket(bucket)
        return published

    async def _relay_loop(self) -> None:
        while True:
            try:
                published = await self.relay()
            except Exception:  # KV or Kafka away: the records wait for the next pass
                log.exception("outbox relay pass failed", extra={"owner": self._owner})
            else:
                if published:
                    log.info(
                        "outbox relayed %d stale jobs",
                        published,
                        extra={"owner": self._owner, "jobs": published},
                    )
            await asyncio.sleep(self._interval_s)

    async def _relay_bucket(self, bucket: int) -> int:
        stale = await self._stale_records(self.partition(bucket))
        if not stale:
            return 0
        futures = []
        for record in stale:
            # Publish in the trace of the request that intended the job, not the relay's.
            token = otel_context.attach(propagate.extract(record.trace))
            try:
                futures.append(await self._producer.submit(record.job))
            finally:
                otel_context.detach(token)
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        published = [
            r.key for r, o in zip(stale, outcomes, strict=True) if not isinstance(o, BaseException)
        ]
        await self._forget(published)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return len(published)

    async def _stale_records(self, partition: bytes) -> list[_Record]:
        cutoff = now_ms() - self._stale_after_ms
        stale: list[_Record] = []
        cursor = ""
        while True:
            items, cursor = await self._kv.scan(KEYSPACE, partition, cursor=cursor, limit=SCAN_PAGE)
            for item in items:
                record = _decode_record(item.key, item.value)
                if record is None:
                    await self._forget([item.key], quiet=False)  # logged by _decode_record
                elif record.at_ms <= cutoff:
                    stale.append(record)
            if not cursor:
                return stale

    async def _forget(self, keys: list[Key], *, quiet: bool = True) -> None:
        """Delete outbox records. After a publish a failure is only logged: the records would
        be published again by the relay (a duplicate, which consumers tolerate)."""
        deletes = [Delete(key) for key in keys]
        try:
            for start in range(0, len(deletes), MAX_BATCH):
                await self._kv.write(deletes[start : start + MAX_BATCH])
        except MinithreadsError as err:
            if not quiet:
                raise
            log.warning("outbox records not deleted: %r", err, extra={"owner": self._owner})


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
