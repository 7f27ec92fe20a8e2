"""The chaos suite's tally, and its one-line verdict at the end of the run.

``make chaos`` runs the full suite (MT_CHAOS_FULL=1: more faults per test, at least 20 primary
kills); ``make test`` runs the same tests with fewer faults. Every test that injects faults adds
what it did and what it found to the tally, printed last as

    chaos: runs=N kills=K partitions=P acked=A lost=L duplicated=D indeterminate=I retried=R
           linearizable=yes|no

(indeterminate: writes whose caller got an answer without a definite outcome, a deadline
included; retried: writes the KV client sent again, as they were, after an unknown outcome.)
"""

from __future__ import annotations

import os
import statistics
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mt_cli.kvcluster import KVCluster
from mt_core.errors import DeadlineExceeded
from mt_kv_contract.errors import Indeterminate

FULL = os.environ.get("MT_CHAOS_FULL") == "1"


@dataclass
class Tally:
    runs: int = 0
    kills: int = 0
    pauses: int = 0
    partitions: int = 0
    acked: int = 0
    lost: int = 0
    duplicated: int = 0
    indeterminate: int = 0
    retried: int = 0
    linearizable: bool | None = None
    failover_ms: list[int] = field(default_factory=list)
    # How long derived counts took to equal their lists once the lists were complete (they
    # may lag, as the async platform applies them; they must converge).
    convergence_s: list[float] = field(default_factory=list)

    def add_verdict(self, linearizable: bool) -> None:
        self.linearizable = (
            linearizable if self.linearizable is None else (self.linearizable and linearizable)
        )

    def line(self) -> str:
        lin = {True: "yes", False: "no", None: "n/a"}[self.linearizable]
        return (
            f"chaos: runs={self.runs} kills={self.kills} partitions={self.partitions} "
            f"acked={self.acked} lost={self.lost} duplicated={self.duplicated} "
            f"indeterminate={self.indeterminate} retried={self.retried} linearizable={lin}"
        )

    def convergence_line(self) -> str:
        if not self.convergence_s:
            return ""
        waits = ", ".join(f"{s:.1f}" for s in self.convergence_s)
        return f"chaos: counts converged after (s): {waits}"

    def failover_line(self) -> str:
        if not self.failover_ms:
            return ""
        ordered = sorted(self.failover_ms)

        def p(q: float) -> int:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return (
            f"chaos: failover ms (last heartbeat -> new primary) n={len(ordered)} "
            f"min={ordered[0]} p50={p(0.5)} p90={p(0.9)} max={ordered[-1]} "
            f"mean={statistics.mean(ordered):.0f}"
        )


TALLY = Tally()


def indeterminate(error: BaseException) -> bool:
    """An answer to a write that leaves its outcome unknown (a deadline included)."""
    return isinstance(error, Indeterminate | DeadlineExceeded)


@pytest.fixture
def tally() -> Tally:
    TALLY.runs += 1
    return TALLY


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TALLY.runs:
        terminalreporter.write_line(TALLY.failover_line() or "chaos: no failovers measured")
        if TALLY.convergence_s:
            terminalreporter.write_line(TALLY.convergence_line())
        terminalreporter.write_line(f"chaos: pauses={TALLY.pauses}")
        terminalreporter.write_line(TALLY.line())
    summary = os.environ.get("MT_CHAOS_SUMMARY")
    if summary:  # `make chaos` prints it after pytest's own last line
        with open(summary, "w") as f:
            lines = [TALLY.failover_line(), TALLY.convergence_line(), TALLY.line()]
            f.write("\n".join(filter(None, lines)) + "\n")


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[KVCluster]:
    """A fresh KV cluster (manager and 3 replicas) for a test that kills parts of it."""
    kv = KVCluster(tmp_path)
    try:
        await kv.start()
        yield kv
    finally:
        kv.stop()
