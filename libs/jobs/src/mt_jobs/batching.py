"""Batches: the local priority buffer a worker forms them from, and running one so that a
poison job fails alone. Generic over the item type, so tested without Kafka."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class PriorityBuffer(Generic[T]):
    """Polled records waiting for a batch slot: higher priority first, FIFO within one."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, T]] = []
        self._seq = itertools.count()
        self._counts: Counter[int] = Counter()
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, item: T, priority: int) -> None:
        heapq.heappush(self._heap, (-priority, next(self._seq), item))
        self._counts[priority] += 1
        self._nonempty.set()

    def has(self, priority: int) -> bool:
        return self._counts[priority] > 0

    def take(self, n: int, keep: Callable[[T], bool] = lambda _: True) -> list[T]:
        """Up to ``n`` items in priority order, dropping those ``keep`` rejects (e.g. records
        of a partition this worker no longer owns)."""
        out: list[T] = []
        while self._heap and len(out) < n:
            neg_priority, _, item = heapq.heappop(self._heap)
            self._counts[-neg_priority] -= 1
            if keep(item):
                out.append(item)
        if not self._heap:
            self._nonempty.clear()
        return out

    async def wait(self) -> None:
        await self._nonempty.wait()


@dataclass
class BatchResult(Generic[T]):
    """How a batch went: the whole batch's error (None if it succeeded as one), its latency,
    and per item the outcome (split runs, if the batch failed)."""

    error: Exception | None
    latency_ms: float
    succeeded: list[T] = field(default_factory=list)
    failed: list[tuple[T, Exception]] = field(default_factory=list)


async def run_with_split(
    call: Callable[[list[T]], Awaitable[Exception | None]], items: Sequence[T]
) -> BatchResult[T]:
    """Run ``items`` as one call; if that fails and there is more than one, run each alone, so
    only the failing ones are retried. ``call`` returns the error the handler raised, or None.
    The split runs are sequential: they stay within the one concurrency slot of the batch."""
    batch = list(items)
    started = time.monotonic()
    error = await call(batch)
    latency_ms = (time.monotonic() - started) * 1000
    result = BatchResult[T](error, latency_ms)
    if error is None:
        result.succeeded = batch
    elif len(batch) == 1:
        result.failed = [(batch[0], error)]
    else:
        for item in batch:
            alone = await call([item])
            if alone is None:
                result.succeeded.append(item)
            else:
                result.failed.append((item, alone))
    return result
