"""Batch formation and splitting, and the committable offset: pure logic, no broker."""

from __future__ import annotations

import asyncio

import pytest
from mt_jobs.batching import PriorityBuffer, run_with_split
from mt_jobs.offsets import OffsetTracker


async def test_split__a_failing_batch_is_rerun_job_by_job_so_only_the_poison_fails() -> None:
    calls: list[list[str]] = []

    async def call(items: list[str]) -> Exception | None:
        calls.append(items)
        return ValueError("poison") if "bad" in items else None

    result = await run_with_split(call, ["a", "bad", "c"])
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]
    assert result.succeeded == ["a", "c"]
    assert [(item, str(err)) for item, err in result.failed] == [("bad", "poison")]
    assert isinstance(result.error, ValueError)


async def test_split__a_good_batch_or_a_single_job_runs_once() -> None:
    calls: list[list[int]] = []

    async def call(items: list[int]) -> Exception | None:
        calls.append(items)
        return RuntimeError("x") if items == [9] else None

    ok = await run_with_split(call, [1, 2])
    single = await run_with_split(call, [9])
    assert calls == [[1, 2], [9]]
    assert (ok.succeeded, ok.failed, ok.error) == ([1, 2], [], None)
    assert single.succeeded == []
    assert [item for item, _ in single.failed] == [9]


async def test_buffer__gives_high_priority_first_then_fifo_and_skips_dropped() -> None:
    buffer = PriorityBuffer[str]()
    for name in ("n1", "n2", "n3"):
        buffer.push(name, 0)
    buffer.push("h1", 1)
    buffer.push("h2", 1)
    assert buffer.has(1)
    assert buffer.take(3) == ["h1", "h2", "n1"]
    assert not buffer.has(1)
    assert buffer.take(5, keep=lambda item: item != "n2") == ["n3"]
    assert len(buffer) == 0
    waiter = asyncio.create_task(buffer.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    buffer.push("late", 0)
    await asyncio.wait_for(waiter, 1)


def test_offsets__commit_only_the_finished_prefix() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12, 15):  # 13 and 14 were held back (not due) or are elsewhere
        tracker.add(offset)
    assert tracker.to_commit() is None
    tracker.done(11)
    tracker.done(12)
    assert tracker.to_commit() is None  # 10 still running: nothing may be committed
    tracker.done(10)
    assert tracker.to_commit() == 13
    tracker.committed(13)
    assert tracker.to_commit() is None
    assert len(tracker) == 1
    tracker.done(15)
    assert tracker.to_commit() == 16


def test_offsets__refuse_to_go_backwards() -> None:
    tracker = OffsetTracker()
    tracker.add(5)
    with pytest.raises(ValueError, match="handed out after"):
        tracker.add(5)
