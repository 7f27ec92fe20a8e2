"""The job platform on the real broker (127.0.0.1:9092): delivery and batching, dead letters,
delivery windows, priorities, at-least-once across a worker's restart, the outbox relay, and
capacity-aware async (opportunistic work waiting in Kafka while the foreground is saturated,
late rather than lost; a downstream's "overloaded" costing a job no attempt; deferrable topics
keeping records for days).

Every test uses kinds (so topics and consumer groups) of its own, with a random suffix, so the
tests neither see each other's records nor old runs'. The broker is whoever's is listening; if
none is, the tests fail (start one with `minithreads up kafka --no-install`).
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.partitioner import DefaultPartitioner
from mt_cli.kvcluster import KVCluster
from mt_core.errors import DeadlineExceeded, FailedPrecondition, Overloaded
from mt_core.messaging import kafka_consumer
from mt_jobs import (
    DEAD_ATTEMPTS_HEADER,
    DEAD_REASON_HEADER,
    Job,
    JobClass,
    JobProducer,
    KindConfig,
    Outbox,
    Permanent,
    Priority,
    Worker,
    topic,
)
from mt_jobs.capacity import OPPORTUNISTIC_RETENTION_S
from mt_jobs.control import Conditions
from mt_jobs.envelope import now_ms
from mt_kv_client import Key, KVClient
from mt_kv_client.client import Check, Put
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

BOOTSTRAP = "127.0.0.1:9092"
BROKER_WAIT_S = 30  # another engineer's run may be restarting the shared broker


def _listening() -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", 9092)) == 0


@pytest.fixture(autouse=True)
async def broker() -> None:
    """Fail (never skip) when no broker listens, after giving a restarting one some time."""
    deadline = time.monotonic() + BROKER_WAIT_S
    while not _listening():
        if time.monotonic() > deadline:
            pytest.fail(f"no Kafka broker at {BOOTSTRAP}: run `minithreads up kafka --no-install`")
        await asyncio.sleep(0.5)


def unique(name: str) -> str:
    return f"t-{name}-{uuid.uuid4().hex[:8]}"


async def eventually(check: Callable[[], bool], timeout_s: float = 15, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


async def dead_letters(kind: str, count: int, timeout_s: float = 15) -> list[Any]:
    """The first ``count`` records of the kind's dead-letter topic."""
    records: list[Any] = []
    async with kafka_consumer(
        BOOTSTRAP, unique("dead-reader"), [topic(kind, "dead")], client_id="tests"
    ) as consumer:
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            records += [r for part in batch.values() for r in part]
    assert len(records) == count, f"{len(records)} dead letters, expected {count}"
    return records


def headers_of(record: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers}


def partition_of(key: str) -> int:
    return int(DefaultPartitioner()(key.encode(), [0, 1, 2, 3], [0, 1, 2, 3]))


Handler = Callable[[list[Job]], Awaitable[None]]


def worker(kinds: Sequence[KindConfig], group: str) -> Worker:
    return Worker(BOOTSTRAP, kinds, group_prefix=group)


@pytest.fixture
async def producer() -> AsyncIterator[JobProducer]:
    async with JobProducer(BOOTSTRAP, client_id="tests") as jobs:
        yield jobs


async def test_delivery__batches_jobs_and_continues_the_producers_trace(
    producer: JobProducer, spans: InMemorySpanExporter
) -> None:
    kind = unique("deliver")
    batches: list[list[Job]] = []
    trace_ids: set[int] = set()

    async def handle(jobs: list[Job]) -> None:
        batches.append(jobs)
        trace_ids.add(trace.get_current_span().get_span_context().trace_id)

    jobs = [Job(kind, {"n": i}, key=f"k{i % 3}") for i in range(30)]
    with trace.get_tracer("tests").start_as_current_span("request") as request:
        await producer.enqueue_many(jobs)
    async with worker([KindConfig(kind, handle, batch_size=8)], unique("g")) as w:
        await eventually(lambda: sum(map(len, batches)) >= 30, what="30 jobs handled")
        await w.drain(10)
        stats = w.stats()[kind]

    handled = [job for batch in batches for job in batch]
    assert sorted(job.id for job in handled) == sorted(job.id for job in jobs)
    assert max(map(len, batches)) > 1, "jobs waiting together should be batched"
    assert all(len(batch) <= 8 for batch in batches)
    for key in ("k0", "k1", "k2"):  # one key: handled in the order enqueued
        assert [j.payload["n"] for j in handled if j.key == key] == [
            j.payload["n"] for j in jobs if j.key == key
        ]
    assert trace_ids == {request.get_span_context().trace_id}
    assert (stats.processed, stats.failed, stats.in_flight, stats.lag) == (30, 0, 0, 0)
    process_spans = [s for s in spans.get_finished_spans() if s.name == f"{kind} process"]
    assert process_spans
    assert process_spans[0].attributes is not None
    assert process_spans[0].attributes["job.kind"] == kind
    sizes = [(s.attributes or {}).get("job.batch_size") for s in process_spans]
    assert sum(size for size in sizes if isinstance(size, int)) == 30


async def test_poison_job__goes_to_dead_letters_without_stalling_its_partition(
    producer: JobProducer,
) -> None:
    kind = unique("poison")
    handled: list[str] = []
    poison_runs: list[int] = []
    good_done_at_last_poison_run: list[int] = []

    async def handle(jobs: list[Job]) -> None:
        for job in jobs:
            if job.payload.get("poison"):
                poison_runs.append(job.attempt)
                if job.attempt == 2:
                    good_done_at_last_poison_run.append(len(handled))
                raise ValueError("boom")
            if job.payload.get("gone"):
                raise Permanent("no such post")
        handled.extend(job.id for job in jobs)

    # One key, so one partition: the poison is at its head, the good jobs are behind it.
    jobs = [Job(kind, {"poison": True}, key="same")]
    jobs += [Job(kind, {"n": i}, key="same") for i in range(3)]
    jobs += [Job(kind, {"gone": True}, key="same")]
    jobs += [Job(kind, {"n": i}, key="same") for i in range(3, 8)]
    await producer.enqueue_many(jobs)
    config = KindConfig(kind, handle, batch_size=4, max_attempts=3, backoff_base_ms=50)
    async with worker([config], unique("g")) as w:
        dead = await dead_letters(kind, 2)
        await w.drain(10)
        stats = w.stats()[kind]

    good = [job.id for job in jobs if "n" in job.payload]
    assert sorted(handled) == sorted(good), "each good job handled exactly once"
    assert good_done_at_last_poison_run == [len(good)], "the poison stalled the good jobs"
    assert sorted(set(poison_runs)) == [0, 1, 2]
    reasons = {Job.decode(r.value).id: headers_of(r) for r in dead}
    assert reasons[jobs[0].id][DEAD_REASON_HEADER] == "attempts_exhausted: ValueError: boom"
    assert reasons[jobs[0].id][DEAD_ATTEMPTS_HEADER] == "3"
    assert reasons[jobs[4].id][DEAD_REASON_HEADER] == "permanent: no such post"
    assert reasons[jobs[4].id][DEAD_ATTEMPTS_HEADER] == "1"
    assert (stats.processed, stats.retried, stats.dead) == (8, 2, 2)


async def test_delivery_window__a_job_waits_until_due_and_holds_back_no_other_partition(
    producer: JobProducer,
) -> None:
    kind = unique("window")
    handled_at: dict[str, int] = {}

    async def handle(jobs: list[Job]) -> None:
        handled_at.update((job.id, now_ms()) for job in jobs)

    later_key = "later"
    other_keys = [f"k{i}" for i in range(20) if partition_of(f"k{i}") != partition_of(later_key)]
    async with worker([KindConfig(kind, handle)], unique("g")) as w:
        due = now_ms() + 1_500
        later = Job(kind, {}, key=later_key, not_before_ms=due)
        expired = Job(kind, {}, deadline_ms=now_ms() - 1)
        await producer.enqueue(later)
        await producer.enqueue(expired)
        now_jobs = [Job(kind, {}, key=key) for key in other_keys[:5]]
        await producer.enqueue_many(now_jobs)
        await eventually(lambda: later.id in handled_at, what="the delayed job")
        await w.drain(10)

    assert handled_at[later.id] >= due, "handled before its window opened"
    assert all(handled_at[job.id] < due for job in now_jobs), "other partitions were held back"
    assert expired.id not in handled_at
    (dead,) = await dead_letters(kind, 1)
    assert headers_of(dead)[DEAD_REASON_HEADER] == "deadline_exceeded"


async def test_priority__high_jobs_run_before_the_normal_ones_waiting_with_them(
    producer: JobProducer,
) -> None:
    kind = unique("prio")
    order: list[str] = []
    blocked = asyncio.Event()
    release = asyncio.Event()

    async def handle(jobs: list[Job]) -> None:
        (job,) = jobs
        if job.payload.get("blocker"):
            blocked.set()
            await release.wait()
        order.append(job.payload["name"])

    config = KindConfig(kind, handle, max_concurrency=1)  # one at a time: the order is visible
    async with worker([config], unique("g")) as w:
        await producer.enqueue(Job(kind, {"blocker": True, "name": "blocker"}))
        await asyncio.wait_for(blocked.wait(), 15)
        await producer.enqueue_many([Job(kind, {"name": f"n{i}"}) for i in range(10)])
        await eventually(lambda: w.stats()[kind].queued == 10, what="10 NORMAL jobs polled")
        high = [Job(kind, {"name": f"h{i}"}, priority=Priority.HIGH) for i in range(5)]
        await producer.enqueue_many(high)
        await eventually(lambda: w.stats()[kind].queued == 15, what="5 HIGH jobs polled")
        release.set()
        await eventually(lambda: len(order) == 16, what="all jobs")

    assert order[0] == "blocker"
    assert sorted(order[1:6]) == [f"h{i}" for i in range(5)]
    assert sorted(order[6:]) == sorted(f"n{i}" for i in range(10))


async def test_at_least_once__a_closed_workers_unfinished_jobs_go_to_the_next_one(
    producer: JobProducer,
) -> None:
    kind = unique("alo")
    group = unique("g")
    started: Counter[str] = Counter()
    done: set[str] = set()  # an idempotent effect: applying a job twice changes nothing
    hang = True

    async def handle(jobs: list[Job]) -> None:
        for job in jobs:
            started[job.id] += 1
        if hang and len(done) >= 10:
            await asyncio.Event().wait()  # stuck mid-job when the worker is closed
        done.update(job.id for job in jobs)

    jobs = [Job(kind, {"n": i}) for i in range(40)]
    await producer.enqueue_many(jobs)
    config = KindConfig(kind, handle, max_concurrency=4)
    async with worker([config], group) as first:
        await eventually(lambda: len(done) >= 10 and first.stats()[kind].in_flight > 0)
    stuck = {job_id for job_id in started if job_id not in done}
    assert stuck, "some jobs were in flight when the worker closed"

    hang = False
    async with worker([config], group) as second:
        await eventually(lambda: len(done) == 40, what="every job handled")
        await second.drain(10)

    assert done == {job.id for job in jobs}
    assert all(started[job_id] >= 2 for job_id in stuck), "in-flight jobs were not redelivered"


@pytest.fixture(scope="module")
async def kv_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KVCluster]:
    cluster = KVCluster(Path(tmp_path_factory.mktemp("jobs-kv")))
    try:
        await cluster.start()
        yield cluster
    finally:
        cluster.stop()


async def test_outbox__a_job_is_published_exactly_when_its_write_happened(
    producer: JobProducer, kv_cluster: KVCluster
) -> None:
    kind = unique("outbox")
    owner = unique("svc")
    received: dict[str, int] = {}

    async def handle(jobs: list[Job]) -> None:
        received.update((job.id, now_ms()) for job in jobs)

    async with (
        KVClient(kv_cluster.manager_addr) as kv,
        worker([KindConfig(kind, handle)], unique("g")) as w,
    ):
        # A process writes a change with its job beside it, then dies before publishing.
        async with Outbox(kv, producer, owner, relay_interval_ms=60_000) as dying:
            orphan = Job(kind, {"post": "p1"})
            where = Key("test", unique("state").encode())
            staged = dying.stage(where, [orphan])
            written_at = now_ms()
            await kv.write([Put(where, b"state"), *staged.puts])
            # A write that fails takes its job with it: nothing to publish, ever.
            never = Job(kind, {"post": "never"})
            failed = dying.stage(Key("test", b"outbox-failed"), [never])
            with pytest.raises(FailedPrecondition):
                await kv.write(list(failed.puts), [Check.present(Key("test", b"no-such-row"))])
        assert await kv.get(staged.rows[0]) is not None

        # Its successor publishes directly what it settles, and the orphan once it is stale.
        async with Outbox(
            kv, producer, owner, relay_interval_ms=100, stale_after_ms=1_000
        ) as outbox:
            fresh = Job(kind, {"post": "p2"})
            there = Key("test", unique("state").encode())
            settled = outbox.stage(there, [fresh])
            await kv.write([Put(there, b"state"), *settled.puts])
            assert await outbox.settle(settled)
            await eventually(lambda: orphan.id in received, what="the relayed job")
            await w.drain(10)

            deadline = time.monotonic() + 15  # published, then their rows deleted
            while any(
                v is not None for v in (await kv.multi_get(staged.rows + settled.rows)).values()
            ):
                assert time.monotonic() < deadline, "the published rows were never deleted"
                await asyncio.sleep(0.05)

        assert fresh.id in received
        assert never.id not in received
        assert received[orphan.id] >= written_at + 1_000, "relayed before it was stale"


# ---------------------------------------------------------------------- capacity-aware async


@dataclass
class Foreground:
    """The conditions the workers read, set by the test."""

    pressure: float = 0.0

    async def read(self) -> Conditions:
        return Conditions(pressure=self.pressure)


def opportunistic(kind: str, handled: list[Job]) -> KindConfig:
    async def handle(jobs: list[Job]) -> int:
        handled.extend(jobs)
        return len(jobs)

    return KindConfig(kind, handle, job_class=JobClass.OPPORTUNISTIC, batch_size=4)


async def test_opportunistic__waits_in_kafka_while_the_foreground_is_saturated(
    producer: JobProducer,
) -> None:
    kind = unique("defer")
    handled: list[Job] = []
    foreground = Foreground(pressure=2.0)
    await producer.enqueue_many([Job(kind, {"n": i}) for i in range(20)])
    async with Worker(
        BOOTSTRAP, [opportunistic(kind, handled)], group_prefix=unique("g"), conditions=foreground
    ) as w:
        # Waiting uncommitted: in Kafka, or in the buffer of what was fetched before the
        # foreground's state was known.
        await eventually(
            lambda: w.stats()[kind].lag + w.stats()[kind].queued == 20, what="the backlog seen"
        )
        await asyncio.sleep(2)
        stats = w.stats()[kind]
        assert handled == []
        assert stats.deferred
        assert stats.rate_limit == 0
        foreground.pressure = 0.0
        await eventually(lambda: len(handled) == 20, timeout_s=30, what="the backlog drained")
        await w.drain(10)
        stats = w.stats()[kind]
    assert sorted(j.payload["n"] for j in handled) == list(range(20))
    assert not stats.deferred
    assert stats.dead == 0
    assert stats.units == 20


async def test_opportunistic__a_deadline_passed_while_deferred_is_late_not_dead(
    producer: JobProducer,
) -> None:
    kind = unique("late")
    handled: list[Job] = []
    foreground = Foreground(pressure=5.0)
    deadline = now_ms() + 1_000
    await producer.enqueue_many([Job(kind, {"n": i}, deadline_ms=deadline) for i in range(6)])
    async with Worker(
        BOOTSTRAP, [opportunistic(kind, handled)], group_prefix=unique("g"), conditions=foreground
    ) as w:
        await asyncio.sleep(max(0.0, (deadline - now_ms()) / 1000) + 1)
        foreground.pressure = 0.0
        await eventually(lambda: len(handled) == 6, timeout_s=30, what="the late jobs run")
        stats = w.stats()[kind]
    assert stats.dead == 0
    assert stats.overdue == 6


async def test_backpressure__an_overloaded_downstream_costs_no_attempt(
    producer: JobProducer,
) -> None:
    """With one attempt allowed, a job refused twice as "overloaded" would be dead-lettered if
    a refusal counted; it runs once the downstream has room, and the kind's rate was cut."""
    kind = unique("busy")
    refusals = {"left": 6}
    handled: list[Job] = []
    limits: list[float | None] = []

    async def handle(jobs: list[Job]) -> None:
        if refusals["left"] > 0:
            refusals["left"] -= 1
            raise Overloaded("the downstream is busy", retry_after_s=0.1)
        handled.extend(jobs)

    config = KindConfig(kind, handle, max_attempts=1, backoff_base_ms=10)
    await producer.enqueue_many([Job(kind, {"n": i}) for i in range(3)])
    async with Worker(BOOTSTRAP, [config], group_prefix=unique("g"), conditions=Foreground()) as w:
        deadline = time.monotonic() + 30
        while len(handled) < 3 and time.monotonic() < deadline:
            limits.append(w.stats()[kind].rate_limit)
            await asyncio.sleep(0.05)
        stats = w.stats()[kind]
    assert sorted(j.payload["n"] for j in handled) == [0, 1, 2]
    assert stats.dead == 0
    assert stats.retried >= 3
    assert any(limit is not None for limit in limits), "the rate was never cut"


async def test_opportunistic__a_congested_downstream_exhausts_no_attempts(
    producer: JobProducer,
) -> None:
    """A celebrity's join step that times out more often than ``max_attempts`` allows is owed
    hours: it is retried (backed off) until it runs, never dead-lettered with its follows
    left pending; a reserved job in the same straits is dead-lettered as before."""
    kinds = {"opp": unique("slowjoin"), "res": unique("slowfan")}
    timeouts = {kind: 4 for kind in kinds.values()}
    handled: list[Job] = []

    async def handle(jobs: list[Job]) -> int:
        kind = jobs[0].kind
        if timeouts[kind] > 0:
            timeouts[kind] -= 1
            raise DeadlineExceeded("the step ran out of time")
        handled.extend(jobs)
        return len(jobs)

    configs = [
        KindConfig(
            kinds["opp"],
            handle,
            job_class=JobClass.OPPORTUNISTIC,
            max_attempts=2,
            backoff_base_ms=10,
            backoff_cap_ms=50,
        ),
        KindConfig(kinds["res"], handle, max_attempts=2, backoff_base_ms=10, backoff_cap_ms=50),
    ]
    await producer.enqueue_many([Job(kind, {"n": 0}) for kind in kinds.values()])
    async with Worker(BOOTSTRAP, configs, group_prefix=unique("g"), conditions=Foreground()) as w:
        await eventually(lambda: len(handled) == 1, timeout_s=30, what="the opportunistic job")
        await eventually(lambda: w.stats()[kinds["res"]].dead == 1, what="the reserved job dead")
        stats = w.stats()
    assert [j.kind for j in handled] == [kinds["opp"]]
    assert stats[kinds["opp"]].dead == 0
    assert stats[kinds["opp"]].retried == 4


async def test_topics__of_deferrable_kinds_keep_records_for_days() -> None:
    kind = unique("keep")
    async with Worker(
        BOOTSTRAP, [opportunistic(kind, [])], group_prefix=unique("g"), conditions=Foreground()
    ):
        pass
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic(kind))]
        )
    finally:
        await admin.close()
    configs = {c[0]: c[1] for c in response.resources[0][4]}
    assert int(configs["retention.ms"]) >= OPPORTUNISTIC_RETENTION_S * 1000
    assert configs["retention.bytes"] == "-1"
