"""The linearizability checker against histories whose answer is known."""

from __future__ import annotations

import math
import random

import pytest
from mt_chaos.linearizability import UNKNOWN, Op, check, check_key

INF = math.inf


def put(value: str, call: float, ret: float, key: str = "k") -> Op:
    return Op(key, "put", value, None, call, ret)


def get(output: str | None, call: float, ret: float, key: str = "k") -> Op:
    return Op(key, "get", None, output, call, ret)


def incr(delta: int, output: int, call: float, ret: float, key: str = "n") -> Op:
    return Op(key, "incr", delta, output, call, ret)


def test_sequential_reads_of_the_last_write__are_linearizable() -> None:
    assert check_key([put("a", 0, 1), get("a", 2, 3), put("b", 4, 5), get("b", 6, 7)])


def test_a_read_of_an_overwritten_value__is_not() -> None:
    assert not check_key([put("a", 0, 1), put("b", 2, 3), get("a", 4, 5)])


def test_a_read_of_a_value_never_written__is_not() -> None:
    assert not check_key([put("a", 0, 1), get("z", 2, 3)])


def test_concurrent_write__may_be_seen_or_not() -> None:
    # The put of b overlaps both reads: a then b is a valid order, and so is b seen by both.
    assert check_key([put("a", 0, 1), put("b", 2, 6), get("a", 3, 4), get("b", 5, 7)])
    assert check_key([put("a", 0, 1), put("b", 2, 6), get("b", 3, 4), get("b", 5, 7)])


def test_a_read_going_back_in_time__is_not() -> None:
    # Once one read saw b (and returned), a later read may not see a again: the stale read.
    assert not check_key([put("a", 0, 1), put("b", 2, 9), get("b", 3, 4), get("a", 5, 6)])


def test_an_unknown_outcome__may_have_happened_or_not() -> None:
    lost_or_not = put("b", 2, INF)  # e.g. the primary died before answering
    assert check_key([put("a", 0, 1), lost_or_not, get("a", 3, 4)])
    assert check_key([put("a", 0, 1), lost_or_not, get("b", 3, 4)])
    assert check_key([put("a", 0, 1), lost_or_not, get("b", 3, 4), get("b", 5, 6)])
    # ...but not both: once it was seen, it happened.
    assert not check_key([put("a", 0, 1), lost_or_not, get("b", 3, 4), get("a", 5, 6)])


def test_an_acknowledged_write_that_vanishes__is_not() -> None:
    assert not check_key([put("a", 0, 1), put("b", 2, 3), get(None, 4, 5)])


def test_a_read_with_an_unknown_output__constrains_nothing() -> None:
    assert check_key([put("a", 0, 1), get(UNKNOWN, 2, INF), get("a", 3, 4)])


def test_increments__every_output_is_the_running_total() -> None:
    assert check_key([incr(1, 1, 0, 1), incr(1, 2, 2, 3), incr(5, 7, 4, 5)])
    assert check_key([incr(1, 2, 0, 3), incr(1, 1, 1, 2)])  # concurrent: either order
    assert not check_key([incr(1, 1, 0, 1), incr(1, 1, 2, 3)])  # applied once, seen twice
    assert not check_key([incr(1, 1, 0, 1), incr(1, 3, 2, 3)])  # applied twice


def test_check__reports_the_keys_that_fail() -> None:
    verdict = check(
        [put("a", 0, 1, "x"), get("a", 2, 3, "x"), put("a", 0, 1, "y"), get("q", 2, 3, "y")]
    )
    assert not verdict.linearizable
    assert verdict.bad_keys == ("y",)
    assert (verdict.keys, verdict.operations) == (2, 4)


@pytest.mark.parametrize("seed", range(20))
def test_random_histories_of_a_real_register__are_linearizable(seed: int) -> None:
    """Simulated clients on one atomic register (each op takes effect at one instant inside
    its interval): always linearizable, whatever the overlap."""
    rng = random.Random(seed)
    events: list[tuple[float, str, str | None]] = []
    value: str | None = None
    ops = []
    for i in range(60):
        call = rng.uniform(0, 100)
        at = call + rng.uniform(0, 5)
        ret = at + rng.uniform(0, 5)
        events.append((at, "put" if rng.random() < 0.5 else "get", f"v{i}"))
        ops.append((call, ret))
    order = sorted(range(len(events)), key=lambda i: events[i][0])
    outputs: dict[int, str | None] = {}
    for i in order:
        _, kind, arg = events[i]
        if kind == "put":
            value = arg
        else:
            outputs[i] = value
    history = [
        put(str(events[i][2]), *ops[i]) if events[i][1] == "put" else get(outputs[i], *ops[i])
        for i in range(len(events))
    ]
    assert check_key(history)
    # Corrupt one read to a value no one wrote: no longer linearizable.
    reads = [i for i, op in enumerate(history) if op.kind == "get"]
    if reads:
        i = rng.choice(reads)
        history[i] = get("never written", history[i].call, history[i].ret)
        assert not check_key(history)


def test_many_unknown_outcomes__are_checked_quickly_and_still_caught() -> None:
    """A kill leaves a burst of unanswered operations; hundreds of them must not blow up the
    search (the unobserved ones are pruned), and an anomaly among them is still found."""
    history = []
    t = 0.0
    for i in range(1500):
        history.append(put(f"v{i}", t, t + 1))
        history.append(get(f"v{i}", t + 2, t + 3))
        history.append(put(f"lost{i}", t + 0.5, INF))  # unknown, never seen
        history.append(get(UNKNOWN, t + 0.5, INF))
        t += 4
    assert check_key(history)
    # An unanswered put may land late — even now — so reading it now is fine...
    history.append(get("lost7", t, t + 1))
    assert check_key(history)
    # ...but not the value it overwrote, after it was seen.
    history.append(get("v1499", t + 2, t + 3))
    assert not check_key(history)
