"""Is a concurrent history of operations linearizable? (Wing & Gong's search, as Porcupine does it.)

A history is what clients saw: each operation's call time, return time and output. It is
linearizable if the operations can be put in one order that respects real time (an operation
that returned before another was called comes first) in which every output is what a
sequential object (the *model*) would have answered. Operations on different keys are
independent (linearizability is compositional), so each key is checked on its own.

An operation whose outcome is unknown (a timeout; a primary killed before answering) may or
may not have taken effect: it gets a return time of +infinity, so the search may place it
anywhere after its call, including after everything else — which is the same as never — and
its output, unknown, constrains nothing.

The search walks the calls and returns in time order. At a call it tries to linearize that
operation now (if the model accepts its output), remembering the choice; at a return whose
operation was never linearized, it backtracks. States already explored (the set of linearized
operations plus the model state) are cached, which keeps real histories tractable.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

S = TypeVar("S", bound=Hashable)

UNKNOWN: Any = object()  # the output of an operation whose outcome is unknown


@dataclass(frozen=True)
class Op:
    """One client operation: ``kind`` with ``arg`` on ``key``, answered with ``output``."""

    key: str
    kind: str
    arg: Any
    output: Any
    call: float
    ret: float = math.inf  # +inf: outcome unknown

    @property
    def known(self) -> bool:
        return self.ret != math.inf


@dataclass(frozen=True)
class Model(Generic[S]):
    """A sequential object: ``step(state, op) -> (output matches, next state)``."""

    init: S
    step: Callable[[S, Op], tuple[bool, S]]


def _register_step(state: Any, op: Op) -> tuple[bool, Any]:
    if op.kind == "put":
        return True, op.arg
    if op.kind == "get":
        return op.output is UNKNOWN or op.output == state, state
    if op.kind == "incr":
        new = (state or 0) + op.arg
        return op.output is UNKNOWN or op.output == new, new
    raise ValueError(f"unknown operation {op.kind!r}")


# A key-value register: put(value) -> ok, get() -> value (None if absent), incr(delta) -> new.
REGISTER: Model[Any] = Model(None, _register_step)


class _Node:
    __slots__ = ("match", "next", "op", "prev", "seq")

    def __init__(self, op: Op | None, seq: int) -> None:
        self.op = op
        self.seq = seq  # index of the operation
        self.match: _Node | None = None  # a call's return node (None for a return)
        self.prev: _Node | None = None
        self.next: _Node | None = None


def _event_list(ops: list[Op]) -> _Node:
    events: list[tuple[float, int, int, _Node]] = []  # (time, returns before calls, seq, node)
    for i, op in enumerate(ops):
        call, ret = _Node(op, i), _Node(None, i)
        call.match = ret
        events.append((op.call, 1, i, call))
        events.append((op.ret, 0, i, ret))
    # At equal times a return goes first: it then precedes the call in real time, the
    # stricter reading.
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    head = _Node(None, -1)
    prev = head
    for *_, node in events:
        prev.next, node.prev = node, prev
        prev = node
    return head


def _lift(call: _Node) -> None:
    for node in (call, call.match):
        assert node is not None
        assert node.prev is not None
        node.prev.next = node.next
        if node.next is not None:
            node.next.prev = node.prev


def _unlift(call: _Node) -> None:
    for node in (call.match, call):
        assert node is not None
        assert node.prev is not None
        node.prev.next = node
        if node.next is not None:
            node.next.prev = node


def prune_unknown(ops: list[Op]) -> list[Op]:
    """The same verdict with fewer open-ended operations, for a register whose puts write
    unique values (as the chaos clients' do).

    Operations of unknown outcome are what makes the search explode: each may be placed
    anywhere after its call. For a register most of them need not be:

    - a get whose answer never came constrains nothing and changes nothing: dropped;
    - a put whose value no read returned can always be taken as never applied (or as applied
      last, after everything): dropped;
    - a put whose value some read returned did happen, before the earliest such read
      returned: it gets that read's return time instead of +infinity.
    """
    seen_at: dict[Any, float] = {}
    for op in ops:
        if op.kind == "get" and op.known:
            seen_at[op.output] = min(seen_at.get(op.output, math.inf), op.ret)
    pruned = []
    for op in ops:
        if op.known or op.kind not in ("get", "put"):
            pruned.append(op)
        elif op.kind == "put" and op.arg in seen_at:
            # (Never before its call: a value read before it was written stays an anomaly.)
            ret = max(seen_at[op.arg], op.call)
            pruned.append(Op(op.key, op.kind, op.arg, op.output, op.call, ret))
    return pruned


def check_key(ops: list[Op], model: Model[Any] = REGISTER) -> bool:
    """Whether the operations of one key form a linearizable history of ``model``."""
    if model is REGISTER:
        ops = prune_unknown(ops)
    head = _event_list(ops)
    state = model.init
    linearized = 0  # bit i: operation i is in the order so far
    seen: set[tuple[int, Any]] = set()
    stack: list[tuple[_Node, Any]] = []
    node = head.next
    while head.next is not None:
        assert node is not None
        if node.match is not None:  # a call: try to linearize it here
            assert node.op is not None
            ok, new_state = model.step(state, node.op)
            bits = linearized | (1 << node.seq)
            if ok and (bits, new_state) not in seen:
                seen.add((bits, new_state))
                stack.append((node, state))
                state, linearized = new_state, bits
                _lift(node)
                node = head.next
            else:
                node = node.next
        else:  # a return of an operation not yet placed: undo the latest choice
            if not stack:
                return False
            call, state = stack.pop()
            linearized &= ~(1 << call.seq)
            _unlift(call)
            node = call.next
    return True


@dataclass(frozen=True)
class Verdict:
    linearizable: bool
    keys: int
    operations: int
    bad_keys: tuple[str, ...]


def check(ops: Iterable[Op], model: Model[Any] = REGISTER) -> Verdict:
    """Check every key's history; the verdict names the keys that are not linearizable."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    bad = tuple(sorted(k for k, key_ops in by_key.items() if not check_key(key_ops, model)))
    total = sum(len(v) for v in by_key.values())
    return Verdict(not bad, len(by_key), total, bad)
