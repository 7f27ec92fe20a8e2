"""Workers: consume a kind's topics and run its handler on batches, with retries, dead letters,
delivery windows, priorities and an AIMD concurrency limit; commit only what is finished.

Per kind, one consumer (group ``<group_prefix>.<kind>``) reads ``jobs.<kind>``, ``.high`` and
``.retry``, and two tasks move the work along::

    poll loop ──> priority buffer ──> dispatcher ──(gate: AIMD limit)──> batch tasks
        └── pauses partitions: not-yet-due heads, HIGH traffic, a full buffer
    batch task: handler (split on failure) -> retry / dead-letter (acked) -> offset done
    poll loop: commit the finished prefix of each partition every COMMIT_INTERVAL_S

Delivery is at-least-once: an offset is committed only once every record before it was handled
or handed (acked) to the retry or dead-letter topic, so a crash or a rebalance redelivers work,
never skips it. Handlers must therefore be idempotent (key their effects on ``Job.id``).

Ordering: jobs with the same key never run concurrently and start in the order they were
polled (a batch waits for the earlier batches that hold its keys). A retried job goes behind:
per-key order holds for first attempts only.

Delivery windows: Kafka has no per-message delay, so a record that is not due yet makes its
partition seek back to it and pause until it is due (the records behind it wait too; other
partitions and kinds go on). On the retry topic that head-of-line wait is at most the backoff
cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import ConsumerStoppedError, IllegalStateError, KafkaError
from mt_core import criticality
from mt_core.criticality import Criticality
from mt_core.messaging import context_of, kafka_consumer
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from mt_jobs.batching import BatchResult, PriorityBuffer, run_with_split
from mt_jobs.capacity import (
    OPPORTUNISTIC_RETENTION_S,
    JobClass,
    RateController,
    RateSettings,
    TokenBucket,
    UsedRate,
)
from mt_jobs.control import Conditions
from mt_jobs.envelope import (
    DEAD_ATTEMPTS_HEADER,
    DEAD_REASON_HEADER,
    KIND_PATTERN,
    Job,
    Priority,
    now_ms,
    topic,
)
from mt_jobs.limiter import AIMDLimit, ConcurrencyGate
from mt_jobs.offsets import OffsetTracker
from mt_jobs.policy import (
    DEADLINE_EXCEEDED,
    Permanent,
    backoff_ms,
    exhausted_reason,
    is_backpressure,
    is_congestion,
    permanent_reason,
)
from mt_jobs.producer import JobProducer
from mt_jobs.topics import ensure_topics

log = logging.getLogger(__name__)
tracer = trace.get_tracer("mt_jobs")

POLL_MS = 100  # longest wait in one poll: bounds how late a window or freed buffer is noticed
COMMIT_INTERVAL_S = 0.2  # commits are a round trip to the coordinator: batch them
RATE_WINDOW_S = 10.0
PUBLISH_BACKOFF_CAP_S = 5.0
# On a rebalance, how long the batches of the partitions we lose may take to finish (their
# results committed, not redone by the next owner); the whole group waits meanwhile.
REVOKE_GRACE_S = 3.0
CONDITIONS_INTERVAL_S = 0.25  # how often the foreground's pressure is read
LAG_INTERVAL_S = 1.0

__all__ = ["KindConfig", "KindStats", "Permanent", "Worker"]


Handler = Callable[[list[Job]], Awaitable[int | None]]


@dataclass
class KindConfig:
    kind: str
    # Gets 1..batch_size jobs of this kind; returns the units of work it did (follows applied,
    # say) for the kind's rate, or None for one unit per job.
    handler: Handler
    job_class: JobClass = JobClass.RESERVED
    rate: RateSettings = dataclasses.field(default_factory=RateSettings)
    batch_size: int = 1
    max_concurrency: int = 16  # hard cap of batches in flight for the kind
    min_concurrency: int = 1
    max_attempts: int = 5  # then dead-letter with the last error as reason
    backoff_base_ms: int = 200
    backoff_cap_ms: int = 30_000  # exponential backoff with full jitter between attempts
    target_latency_ms: int = 1_000  # AIMD: a slower batch, or a retriable error, is congestion

    def __post_init__(self) -> None:
        if not KIND_PATTERN.fullmatch(self.kind):
            raise ValueError(f"job kind {self.kind!r} is not [a-z][a-z0-9_-]*")
        if self.batch_size < 1 or self.max_attempts < 1:
            raise ValueError("batch_size and max_attempts must be at least 1")
        if not 1 <= self.min_concurrency <= self.max_concurrency:
            raise ValueError("need 1 <= min_concurrency <= max_concurrency")


@dataclass(frozen=True)
class KindStats:
    processed: int  # jobs handled successfully
    failed: int  # handler failures (of jobs run alone or in a batch that succeeded no part of)
    retried: int  # jobs republished to the retry topic
    dead: int  # jobs dead-lettered
    in_flight: int  # batches running
    limit: int  # current AIMD concurrency limit
    rate_per_s: float  # jobs handled per second over the last 10 s
    lag: int  # records not yet polled: sum over partitions of highwater - position
    queued: int = 0  # polled, waiting in the buffer for a batch slot
    job_class: str = JobClass.RESERVED.value
    rate_limit: float | None = None  # units/s allowed to this process; None: unlimited
    deferred: bool = False  # opportunistic and held at rate zero (its topics left unread)
    paused: bool = False  # held by an operator
    units: int = 0  # units of work done since start
    units_per_s: float = 0.0  # recently
    overdue: int = 0  # opportunistic jobs run past their deadline (deferred that long)


@dataclass(eq=False)
class _Item:
    record: Any  # the ConsumerRecord
    job: Job
    tracker: OffsetTracker


@contextlib.contextmanager
def _in_trace_of(record: Any) -> Iterator[None]:
    """Make the trace context carried by ``record`` the current one."""
    token = otel_context.attach(context_of(record))
    try:
        yield
    finally:
        otel_context.detach(token)


class _Rate:
    """Jobs per second over a sliding window, with O(1) reads."""

    def __init__(self) -> None:
        self._events: deque[tuple[float, int]] = deque()
        self._sum = 0
        self._started = time.monotonic()

    def add(self, n: int) -> None:
        self._events.append((time.monotonic(), n))
        self._sum += n

    def per_s(self) -> float:
        now = time.monotonic()
        while self._events and self._events[0][0] < now - RATE_WINDOW_S:
            self._sum -= self._events.popleft()[1]
        return self._sum / max(1.0, min(RATE_WINDOW_S, now - self._started))


class _KindRunner:
    """Everything one kind needs: its consumer, buffer, limiter, offsets and counters."""

    def __init__(self, config: KindConfig, consumer: Any, producer: JobProducer) -> None:
        self.config = config
        self.topics = [topic(config.kind, suffix) for suffix in ("", "high", "retry")]
        self._main_topic = topic(config.kind)
        self._dead_topic = topic(config.kind, "dead")
        self._retry_topic = topic(config.kind, "retry")
        self._consumer = consumer
        self._producer = producer
        self._limit = AIMDLimit(
            min_limit=config.min_concurrency,
            max_limit=config.max_concurrency,
            target_latency_ms=config.target_latency_ms,
        )
        self._gate = ConcurrencyGate(self._limit)
        started = time.monotonic()
        self._control = RateController(config.job_class, config.rate)
        self._bucket = TokenBucket(started)
        self._used = UsedRate(started)
        self._share = 1  # processes of this kind: each takes its share of the rate
        self._units_per_job = 0.0  # moving average: a batch is charged this much as it starts
        self._held_back = False  # the rate made a batch wait since the last observation
        self._units = 0
        self._overdue = 0
        self._rate_changed = asyncio.Event()
        self._buffer = PriorityBuffer[_Item]()
        # Enough for every slot to get a full batch twice over; more would only be redelivered
        # after a crash.
        self._capacity = max(64, 2 * config.max_concurrency * config.batch_size)
        self._trackers: dict[Any, OffsetTracker] = {}
        self._windows: dict[Any, int] = {}  # paused partition -> when its head record is due
        self._key_tails: dict[str, asyncio.Future[None]] = {}  # key -> its last batch's end
        self._tasks: set[asyncio.Task[None]] = set()  # batches and raw dead-letterings
        self._partitions_of: dict[asyncio.Task[None], set[OffsetTracker]] = {}  # of batches
        self._loops: list[asyncio.Task[None]] = []
        self._commit_lock = asyncio.Lock()
        self._last_commit = 0.0
        self._batches = 0
        self._processed = self._failed = self._retried = self._dead = self._lag = 0
        self._lag_at = 0.0
        self._paused_lag: dict[Any, int] = {}  # paused partition -> its lag, from the broker
        self._rate = _Rate()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._poll_loop(), name=f"jobs-poll-{self.config.kind}"),
            asyncio.create_task(self._dispatch_loop(), name=f"jobs-dispatch-{self.config.kind}"),
        ]

    async def stop(self) -> None:
        """Stop polling, cancel the batches in flight (their records will be delivered again),
        and commit what finished."""
        for task in [*self._loops, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._tasks, return_exceptions=True)
        await self._commit(force=True)
        for tracker in self._trackers.values():
            tracker.revoked = True
        self._trackers.clear()

    def stats(self) -> KindStats:
        return KindStats(
            processed=self._processed,
            failed=self._failed,
            retried=self._retried,
            dead=self._dead,
            in_flight=self._batches,
            limit=self._limit.limit,
            rate_per_s=self._rate.per_s(),
            lag=self._lag,
            queued=len(self._buffer),
            job_class=self.config.job_class.value,
            rate_limit=None if math.isinf(rate := self._allowed_rate()) else round(rate, 2),
            deferred=self._control.deferred,
            paused=self._control.paused,
            units=self._units,
            units_per_s=round(self._used.per_s, 2),
            overdue=self._overdue,
        )

    # ------------------------------------------------------------------ capacity

    def _allowed_rate(self) -> float:
        """This process's share of the kind's allowed rate."""
        return self._control.rate / max(1, self._share)

    def observe(self, conditions: Conditions, now: float) -> None:
        """The foreground's state and the operator's pauses, every few hundred ms."""
        self._share = max(1, conditions.workers.get(self.config.kind, 1))
        self._control.paused = self.config.kind in conditions.paused
        used = self._used.update(now) * self._share  # the kind's, not this process's
        before = self._control.rate
        binding, self._held_back = self._held_back, False
        self._control.on_pressure(conditions.pressure, used, now, binding=binding)
        self._control.on_tick(now, binding=binding)
        if self._control.rate != before:
            self._rate_changed.set()

    async def _await_rate(self) -> None:
        """Until the kind's rate lets another batch start (never while deferred)."""
        loop = asyncio.get_running_loop()
        while True:
            wait = self._bucket.wait_s(self._allowed_rate(), loop.time())
            if wait == 0:
                return
            self._held_back = True
            self._rate_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rate_changed.wait(), min(wait or 1.0, 1.0))

    def _charge(self, estimated: float, units: float, jobs: int) -> None:
        """A batch is done: correct the estimate it was charged, learn its size."""
        self._bucket.charge(units - estimated)
        self._used.add(units)
        self._units += round(units)
        if jobs:
            size = units / jobs  # the first batch says it; a moving average follows it after
            known = self._units_per_job
            self._units_per_job = 0.8 * known + 0.2 * size if known else size
            self._control.job_units = self._units_per_job

    async def is_drained(self) -> bool:
        """Nothing buffered or running, every assigned partition read to its end (asked of the
        broker, not the last fetch), and the finished offsets committed."""
        if len(self._buffer) or self._tasks:
            return False
        assigned = self._consumer.assignment()
        if not assigned:
            return False
        ends = await self._consumer.end_offsets(list(assigned))
        for tp in assigned:
            try:
                position = await asyncio.wait_for(self._consumer.position(tp), 1.0)
            except (TimeoutError, IllegalStateError):
                return False
            if position < ends[tp]:
                return False
        await self._commit(force=True)
        return all(t.to_commit() is None for t in self._trackers.values())

    # ------------------------------------------------------------------ rebalances

    async def revoked(self, partitions: Sequence[Any]) -> None:
        """Hand the partitions over: start no more of their buffered records, give their
        running batches a grace period, commit what finished, and forget them (a batch still
        running then is redone by the next owner)."""
        lost = {self._trackers[tp] for tp in partitions if tp in self._trackers}
        for tracker in lost:
            tracker.revoked = True
        running = [task for task, trackers in self._partitions_of.items() if trackers & lost]
        if running:
            await asyncio.wait(running, timeout=REVOKE_GRACE_S)
        await self._commit(force=True)
        for tp in partitions:
            self._trackers.pop(tp, None)
            self._windows.pop(tp, None)

    # ------------------------------------------------------------------ polling

    async def _poll_loop(self) -> None:
        while True:
            try:
                await self._poll_once()
            except ConsumerStoppedError:
                return
            except Exception:  # a broker hiccup must not end the worker: log, wait, go on
                log.exception("job poll failed", extra={"job_kind": self.config.kind})
                await asyncio.sleep(1.0)

    async def _poll_once(self) -> None:
        self._apply_pauses(now_ms())
        room = self._capacity - len(self._buffer)
        records = await self._consumer.getmany(
            timeout_ms=self._poll_timeout_ms(now_ms()), max_records=max(1, room)
        )
        self._ingest(records)
        await self._refresh_lag()
        await self._commit()

    def _poll_timeout_ms(self, now: int) -> int:
        if not self._windows:
            return POLL_MS
        return max(1, min(POLL_MS, min(self._windows.values()) - now))

    def _apply_pauses(self, now: int) -> None:
        """Pause what must not be fetched now; resume the rest. A partition is paused while its
        head record is not due, the main (NORMAL) topic while HIGH jobs wait, everything while
        the buffer is full (back-pressure: polling goes on, so the group keeps us)."""
        assigned = self._consumer.assignment()
        self._windows = {tp: t for tp, t in self._windows.items() if t > now and tp in assigned}
        want = set(self._windows)
        if len(self._buffer) >= self._capacity or self._control.deferred:
            want = set(assigned)  # deferred: the work waits in Kafka, not in our memory
        elif self._buffer.has(Priority.HIGH):
            want |= {tp for tp in assigned if tp.topic == self._main_topic}
        paused = self._consumer.paused()
        if to_pause := want - paused:
            self._consumer.pause(*to_pause)
        if to_resume := (paused & assigned) - want:
            self._consumer.resume(*to_resume)

    def _ingest(self, records: dict[Any, list[Any]]) -> None:
        now = now_ms()
        for tp, batch in records.items():
            tracker = self._trackers.setdefault(tp, OffsetTracker())
            for record in batch:
                job = self._decode(record)
                if isinstance(job, str):
                    tracker.add(record.offset)
                    self._spawn(self._dead_letter_raw(record, tracker, job))
                    continue
                if not job.is_due(now) and not job.is_hopeless(now):
                    self._hold(tp, record.offset, job.not_before_ms)
                    break  # the records behind it are fetched again once it is due
                tracker.add(record.offset)
                self._buffer.push(_Item(record, job, tracker), int(job.priority))

    def _decode(self, record: Any) -> Job | str:
        """The record's job, or why it is not one of ours."""
        try:
            job = Job.decode(record.value)
        except Exception as err:
            return f"undecodable: {err}"
        if job.kind != self.config.kind:
            return f"undecodable: a {job.kind!r} job on {record.topic}"
        return job

    def _hold(self, tp: Any, offset: int, due_ms: int) -> None:
        """Kafka has no per-message delay: read this partition again from ``offset`` once it
        is due, and fetch nothing from it until then."""
        self._consumer.seek(tp, offset)
        self._consumer.pause(tp)
        self._windows[tp] = due_ms

    async def _refresh_lag(self) -> None:
        """Records not yet polled: from the high watermark of each partition being fetched,
        and for paused ones (not fetched: their watermark goes stale while the work they
        hold, deferred, is what the status must show) from the broker, once a second."""
        paused = self._consumer.paused() & self._consumer.assignment()
        if paused and time.monotonic() - self._lag_at >= LAG_INTERVAL_S:
            self._lag_at = time.monotonic()
            with contextlib.suppress(KafkaError):
                ends = await self._consumer.end_offsets(list(paused))
                for tp in paused:
                    start = await self._position_now(tp)
                    if start is None:  # never fetched: from what the group committed
                        start = await self._consumer.committed(tp) or 0
                    self._paused_lag[tp] = max(0, ends[tp] - start)
        total = 0
        for tp in self._consumer.assignment():
            if tp in paused:
                total += self._paused_lag.get(tp, 0)
                continue
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue  # not fetched yet (its position may not be known either)
            try:
                total += max(0, highwater - await self._consumer.position(tp))
            except IllegalStateError:
                continue
        self._lag = total

    async def _position_now(self, tp: Any) -> int | None:
        """The partition's position if the consumer knows it (it waits for one otherwise)."""
        try:
            position: int = await asyncio.wait_for(self._consumer.position(tp), 0.01)
        except (TimeoutError, IllegalStateError):
            return None
        return position

    async def _commit(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_commit < COMMIT_INTERVAL_S:
            return
        async with self._commit_lock:
            self._last_commit = time.monotonic()
            assigned = self._consumer.assignment()
            due = {
                tp: (tracker, offset)
                for tp, tracker in self._trackers.items()
                if tp in assigned and (offset := tracker.to_commit()) is not None
            }
            if not due:
                return
            try:
                await self._consumer.commit({tp: offset for tp, (_, offset) in due.items()})
            except KafkaError as err:  # e.g. a rebalance: the next owner redoes the work
                log.warning(
                    "job offsets not committed: %r", err, extra={"job_kind": self.config.kind}
                )
                return
            for tracker, offset in due.values():
                tracker.committed(offset)

    # ------------------------------------------------------------------ dispatching

    async def _dispatch_loop(self) -> None:
        while True:
            await self._gate.acquire()
            try:
                await self._await_rate()
                items = await self._next_batch()
            except BaseException:
                self._gate.release()
                raise
            estimated = len(items) * (self._units_per_job or 1.0)
            self._bucket.charge(estimated)
            self._start_batch(items, estimated)

    async def _next_batch(self) -> list[_Item]:
        while True:
            # Taken only once a slot is free, so HIGH jobs polled meanwhile still go first.
            items = self._buffer.take(self.config.batch_size, lambda i: not i.tracker.revoked)
            if items:
                return items
            await self._buffer.wait()

    def _start_batch(self, items: list[_Item], estimated: float) -> None:
        keys = {item.job.routing_key for item in items}
        earlier = {self._key_tails[key] for key in keys if key in self._key_tails}
        finished = asyncio.get_running_loop().create_future()
        for key in keys:
            self._key_tails[key] = finished
        self._batches += 1
        task = self._spawn(self._run_batch(items, earlier, finished, keys, estimated))
        self._partitions_of[task] = {item.tracker for item in items}

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._partitions_of.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "job batch crashed; its offsets stay uncommitted until a rebalance",
                exc_info=task.exception(),
                extra={"job_kind": self.config.kind},
            )

    async def _run_batch(
        self,
        items: list[_Item],
        earlier: set[asyncio.Future[None]],
        finished: asyncio.Future[None],
        keys: set[str],
        estimated: float,
    ) -> None:
        done = [0.0]  # units the handler reported
        try:
            if earlier:  # same-key jobs run one after the other
                await asyncio.wait(earlier)
            await self._process(items, done)
        finally:
            self._charge(estimated, done[0], len(items))
            self._batches -= 1
            if not finished.done():
                finished.set_result(None)
            for key in keys:
                if self._key_tails.get(key) is finished:
                    del self._key_tails[key]
            self._gate.release()

    async def _process(self, items: list[_Item], done: list[float]) -> None:
        now = now_ms()
        runnable: list[_Item] = []
        for item in items:
            if not item.job.is_hopeless(now):
                runnable.append(item)
            elif self._control.opportunistic:
                self._overdue += 1  # deferred past its deadline: late, not lost
                runnable.append(item)
            else:
                await self._dead_letter(item, DEADLINE_EXCEEDED, attempts=item.job.attempt)
        if runnable:
            result = await run_with_split(functools.partial(self._call, done), runnable)
            self._account(result)
            for item, error in result.failed:
                await self._fail(item, error)
        for item in items:
            item.tracker.done(item.record.offset)

    async def _call(self, done: list[float], items: list[_Item]) -> Exception | None:
        """Run the handler on ``items`` in a span continuing the first job's trace; adds the
        units it reports to ``done``."""
        first = items[0]
        attributes: dict[str, str | int] = {
            "job.kind": self.config.kind,
            "job.attempt": first.job.attempt,
            "job.batch_size": len(items),
        }
        with tracer.start_as_current_span(
            f"{self.config.kind} process",
            context=context_of(first.record),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            try:
                # Every call a job makes is the async platform's: first to go under overload.
                with criticality.scope(Criticality.ASYNC):
                    units = await self.config.handler([item.job for item in items])
            except Exception as err:
                span.record_exception(err)
                span.set_status(Status(StatusCode.ERROR, f"{type(err).__name__}: {err}"))
                return err
        done[0] += len(items) if units is None else units
        return None

    def _account(self, result: BatchResult[_Item]) -> None:
        self._processed += len(result.succeeded)
        self._failed += len(result.failed)
        self._rate.add(len(result.succeeded))
        # A bad job is no news about the downstream; a congestion error in any run is.
        errors = [result.error, *(e for _, e in result.failed)]
        congestion = [e for e in errors if is_congestion(e)]
        error = congestion[0] if congestion else result.error
        self._limit.observe(result.latency_ms, now_ms(), error=error)
        if any(is_backpressure(e) for e in errors):
            now = time.monotonic()
            self._control.on_backpressure(self._used.update(now) * self._share, now)
            self._rate_changed.set()
        self._gate.wake()

    async def _fail(self, item: _Item, error: Exception) -> None:
        job = item.job
        if is_backpressure(error):
            # "Not now" from downstream is no attempt of the job's: it comes back once its
            # kind's (now lower) rate allows, however many times that takes.
            delay = backoff_ms(1, base_ms=1_000, cap_ms=2_000)
            again = dataclasses.replace(job, not_before_ms=now_ms() + 500 + delay)
            await self._deliver(
                item.record, lambda: self._producer.submit(again, topic_name=self._retry_topic)
            )
            self._retried += 1
            return
        attempts = job.attempt + 1
        if isinstance(error, Permanent):
            await self._dead_letter(item, permanent_reason(error), attempts=attempts)
            return
        if attempts >= self.config.max_attempts and not self._outlasts(job, error):
            await self._dead_letter(item, exhausted_reason(error), attempts=attempts)
            return
        delay = backoff_ms(
            attempts, base_ms=self.config.backoff_base_ms, cap_ms=self.config.backoff_cap_ms
        )
        retry = dataclasses.replace(job, attempt=attempts, not_before_ms=now_ms() + delay)
        if retry.is_hopeless(now_ms()) and not self._control.opportunistic:
            await self._dead_letter(item, DEADLINE_EXCEEDED, attempts=attempts)
            return
        await self._deliver(
            item.record, lambda: self._producer.submit(retry, topic_name=self._retry_topic)
        )
        self._retried += 1

    def _outlasts(self, job: Job, error: Exception) -> bool:
        """Opportunistic work that keeps meeting a congested downstream is owed hours, not five
        tries: it waits (backoff capped) for as long as its deadline allows."""
        return (
            self._control.opportunistic and is_congestion(error) and not job.is_hopeless(now_ms())
        )

    # ------------------------------------------------------------------ publishing

    async def _dead_letter(self, item: _Item, reason: str, *, attempts: int) -> None:
        headers = _dead_headers(reason, attempts)
        await self._deliver(
            item.record,
            lambda: self._producer.submit(item.job, topic_name=self._dead_topic, headers=headers),
        )
        self._dead += 1
        log.warning(
            "job dead-lettered: %s",
            reason,
            extra={
                "job_kind": item.job.kind,
                "job_id": item.job.id,
                "reason": reason,
                "attempts": attempts,
            },
        )

    async def _dead_letter_raw(self, record: Any, tracker: OffsetTracker, reason: str) -> None:
        """A record that is not a job of this kind: kept as it was, for an operator."""
        headers = _dead_headers(reason, 0)
        await self._deliver(
            record,
            lambda: self._producer.send_raw(
                self._dead_topic, record.value, key=record.key, headers=headers
            ),
        )
        self._dead += 1
        log.warning(
            "record dead-lettered: %s",
            reason,
            extra={
                "job_kind": self.config.kind,
                "reason": reason,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
            },
        )
        tracker.done(record.offset)

    async def _deliver(
        self, record: Any, send: Callable[[], Awaitable[asyncio.Future[Any]]]
    ) -> None:
        """Publish (in ``record``'s trace) until the broker acks. The record's offset is not
        committed before, so giving up is no option; stopping the worker cancels this."""
        delay = 0.1
        while True:
            try:
                with _in_trace_of(record):
                    future = await send()
                await future
                return
            except KafkaError as err:
                log.warning(
                    "job publish failed, retrying: %r", err, extra={"job_kind": self.config.kind}
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, PUBLISH_BACKOFF_CAP_S)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _dead_headers(reason: str, attempts: int) -> list[tuple[str, bytes]]:
    return [(DEAD_REASON_HEADER, reason.encode()), (DEAD_ATTEMPTS_HEADER, str(attempts).encode())]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: _KindRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: Sequence[Any]) -> None:
        await self._runner.revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[Any]) -> None:
        pass  # fresh partitions start from the committed offsets; trackers are made on use


class ConditionSource(Protocol):
    """Where the foreground's pressure and the operator's pauses come from (Redis, in the
    workers: :class:`mt_jobs.control.RedisConditions`)."""

    async def read(self) -> Conditions: ...


class Worker:
    """``async with Worker(bootstrap, [KindConfig("fanout", handle)]) as worker: ...``.

    Handlers get batches of jobs and must be idempotent (at-least-once; key effects on
    ``Job.id``). A handler raising :class:`Permanent` dead-letters the job at once; any other
    exception retries it (backoff) until ``max_attempts``. Closing cancels the batches in
    flight; their jobs are delivered again to the next worker of the group.
    """

    def __init__(
        self,
        bootstrap: str,
        kinds: Sequence[KindConfig],
        *,
        group_prefix: str = "mt-workers",
        producer: JobProducer | None = None,
        conditions: ConditionSource | None = None,
    ) -> None:
        names = [k.kind for k in kinds]
        if len(set(names)) != len(names):
            raise ValueError(f"a kind may be configured once: {names}")
        self._bootstrap = bootstrap
        self._kinds = list(kinds)
        self._group_prefix = group_prefix
        self._producer = producer
        self._conditions = conditions
        self._runners: dict[str, _KindRunner] = {}
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Worker:
        stack = AsyncExitStack()
        try:
            producer = self._producer
            if producer is None:
                producer = await stack.enter_async_context(
                    JobProducer(self._bootstrap, client_id=f"{self._group_prefix}-producer")
                )
            await ensure_topics(
                self._bootstrap,
                [k.kind for k in self._kinds],
                retention_ms={
                    k.kind: OPPORTUNISTIC_RETENTION_S * 1000
                    for k in self._kinds
                    if k.job_class is JobClass.OPPORTUNISTIC
                },
            )
            for config in self._kinds:
                await self._start_kind(stack, config, producer)
            watch = asyncio.create_task(self._watch_conditions(), name="jobs-conditions")
            stack.push_async_callback(_cancel, watch)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()  # per kind: stop the runner, then its consumer; producer last
        self._runners.clear()

    async def _start_kind(
        self, stack: AsyncExitStack, config: KindConfig, producer: JobProducer
    ) -> None:
        group = f"{self._group_prefix}.{config.kind}"
        consumer = await stack.enter_async_context(
            kafka_consumer(self._bootstrap, group, (), client_id=group)
        )
        runner = _KindRunner(config, consumer, producer)
        consumer.subscribe(runner.topics, listener=_Rebalance(runner))
        runner.start()
        stack.push_async_callback(runner.stop)
        self._runners[config.kind] = runner

    def stats(self) -> dict[str, KindStats]:
        return {kind: runner.stats() for kind, runner in self._runners.items()}

    async def _watch_conditions(self) -> None:
        """Every runner hears the foreground's pressure (without a source: none, no pauses)."""
        while True:
            try:
                conditions = await self._conditions.read() if self._conditions else Conditions()
            except Exception:  # the watch must outlive any failure of its source
                log.exception("job conditions unreadable")
                conditions = Conditions(pressure=1.0)
            now = time.monotonic()
            for runner in self._runners.values():
                runner.observe(conditions, now)
            await asyncio.sleep(CONDITIONS_INTERVAL_S)

    async def drain(self, timeout_s: float) -> None:
        """Wait until no job is buffered or in flight, every partition is read to its end and
        the offsets are committed (for tests: a worker holding no partition never drains)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            drained = [await runner.is_drained() for runner in self._runners.values()]
            if all(drained):
                return
            if loop.time() >= deadline:
                raise TimeoutError(f"not drained after {timeout_s} s: {self.stats()}")
            await asyncio.sleep(0.1)
