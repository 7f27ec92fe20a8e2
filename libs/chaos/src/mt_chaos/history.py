"""Recording what clients saw: every operation's call, return and output, for the checker.

An operation that raised has an unknown outcome — a refusal after the client's retries, a
timeout, a primary that died mid-write — so it is recorded with a return time of +infinity:
the checker may count it as applied or not, but an acknowledged one must be there.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mt_chaos.linearizability import UNKNOWN, Op

T = TypeVar("T")


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    wall0: float = field(default_factory=time.time)  # to line the history up with logs
    raised: list[tuple[str, Exception]] = field(default_factory=list)  # (kind, what it raised)

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def record(
        self, key: str, kind: str, arg: Any, call: Callable[[], Awaitable[T]]
    ) -> T | None:
        """Run ``call`` and record it; None (and an unknown outcome) if it raised."""
        started = self.now()
        try:
            output = await call()
        except Exception as err:
            self.ops.append(Op(key, kind, arg, UNKNOWN, started, math.inf))
            self.raised.append((kind, err))
            return None
        self.ops.append(Op(key, kind, arg, output, started, self.now()))
        return output

    def acknowledged(self, kind: str) -> list[Op]:
        return [op for op in self.ops if op.kind == kind and op.known]

    def unknown(self, kind: str) -> list[Op]:
        return [op for op in self.ops if op.kind == kind and not op.known]

    def dump(self, keys: Iterable[str]) -> str:
        """JSON lines of ``keys``' operations (times in wall-clock seconds), for a post-mortem."""
        wanted = set(keys)
        return "".join(
            json.dumps(
                {
                    "key": op.key,
                    "kind": op.kind,
                    "arg": op.arg,
                    "output": op.output if op.known else "?",
                    "call": round(self.wall0 + op.call, 4),
                    "ret": round(self.wall0 + op.ret, 4) if op.known else None,
                }
            )
            + "\n"
            for op in sorted(self.ops, key=lambda o: o.call)
            if op.key in wanted
        )
