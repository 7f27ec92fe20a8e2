"""The KV client's coalescer: calls of one loop turn share an RPC; a cap on RPCs in flight
holds later calls back to share the next one."""

from __future__ import annotations

import asyncio
from typing import Any

from mt_kv_client.client import _Coalescer


class Sender:
    """A fake RPC: records each batch and blocks until released."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.release: list[asyncio.Future[None]] = []

    async def send(self, group: Any, payloads: list[Any]) -> list[Any]:
        self.batches.append(payloads)
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.release.append(gate)
        await gate
        return [(group, p) for p in payloads]


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_coalescer__calls_of_one_turn_share_an_rpc() -> None:
    sender = Sender()
    batcher = _Coalescer(sender.send)
    futures = [batcher.submit("a", i) for i in range(5)] + [batcher.submit("b", 9)]
    await _turns()
    assert sorted(map(len, sender.batches)) == [1, 5]
    for gate in sender.release:
        gate.set_result(None)
    assert await asyncio.gather(*futures) == [("a", i) for i in range(5)] + [("b", 9)]


async def test_coalescer__without_a_cap_each_turn_sends_at_once() -> None:
    sender = Sender()
    batcher = _Coalescer(sender.send)
    for i in range(4):
        batcher.submit("a", i)
        await _turns()
    assert sender.batches == [[0], [1], [2], [3]]
    for gate in sender.release:
        gate.set_result(None)


async def test_coalescer__cap_holds_later_calls_for_one_shared_rpc() -> None:
    sender = Sender()
    batcher = _Coalescer(sender.send, max_in_flight=2)
    futures = []
    for i in range(5):
        futures.append(batcher.submit("a", i))
        await _turns()
    assert sender.batches == [[0], [1]]  # two out; 2, 3 and 4 wait
    other = batcher.submit("b", 7)  # another group is not held up
    await _turns()
    assert sender.batches[-1] == [7]
    sender.release[0].set_result(None)
    await _turns(6)
    assert sender.batches[-1] == [2, 3, 4]  # the held calls go together
    for gate in sender.release[1:]:
        if not gate.done():
            gate.set_result(None)
    assert await asyncio.gather(*futures, other) == [("a", i) for i in range(5)] + [("b", 7)]


async def test_coalescer__a_failed_rpc_frees_its_slot_and_fails_only_its_calls() -> None:
    calls: list[list[Any]] = []

    async def send(group: Any, payloads: list[Any]) -> list[Any]:
        calls.append(payloads)
        if payloads == [0]:
            raise ConnectionError("down")
        return payloads

    batcher = _Coalescer(send, max_in_flight=1)
    first = batcher.submit("a", 0)
    await asyncio.sleep(0)
    later = [batcher.submit("a", i) for i in (1, 2)]
    results = await asyncio.gather(first, *later, return_exceptions=True)
    assert isinstance(results[0], ConnectionError)
    assert results[1:] == [1, 2]
    assert calls == [[0], [1, 2]]


async def test_coalescer__callers_answered_by_a_reply_join_the_next_rpc() -> None:
    """The next RPC goes once the callers a reply answered have made their next calls (each
    of the bench's callers writes again at once), not ahead of them."""
    sender = Sender()
    batcher = _Coalescer(sender.send, max_in_flight=1)

    async def caller(i: int) -> None:
        await batcher.submit("a", i)
        await batcher.submit("a", i + 10)

    tasks = [asyncio.create_task(caller(0))]
    await _turns()
    tasks += [asyncio.create_task(caller(i)) for i in (1, 2)]
    await _turns()
    assert sender.batches == [[0]]  # 1 and 2 wait behind the cap
    sender.release[0].set_result(None)
    await _turns(6)
    assert sender.batches[1] == [1, 2, 10]  # the held calls and the answered caller's next
    while not all(t.done() for t in tasks):
        for gate in sender.release:
            if not gate.done():
                gate.set_result(None)
        await _turns()
    assert len(sender.batches) == 3
    assert sender.batches[2] == [11, 12]


async def test_coalescer__a_stalled_rpc_stops_holding_its_group_up() -> None:
    """A batch that waits (a read behind a lease check) gives its slot back after
    ``stall_ms``: calls behind it go, and its own answer still arrives."""
    sender = Sender()
    batcher = _Coalescer(sender.send, max_in_flight=1, stall_ms=20)
    slow = batcher.submit("a", 0)
    await _turns()
    behind = batcher.submit("a", 1)
    await _turns()
    assert sender.batches == [[0]]  # held behind the cap
    await asyncio.sleep(0.05)
    assert sender.batches == [[0], [1]]  # the slot came back when the first stalled
    sender.release[1].set_result(None)
    assert await behind == ("a", 1)
    sender.release[0].set_result(None)
    assert await slow == ("a", 0)
    third = batcher.submit("a", 2)  # the count is right again: one out at a time
    fourth = batcher.submit("a", 3)
    await _turns()
    assert sender.batches[2:] == [[2, 3]]
    sender.release[2].set_result(None)
    assert [await third, await fourth] == [("a", 2), ("a", 3)]
    assert batcher._in_flight["a"] == 0
