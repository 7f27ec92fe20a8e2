"""Run the simulation: ``mt-kv-sim --seeds N [--first S] [--break RULE]`` (``make sim``).

One seed is one run: a cluster starts, clients read and write while faults strike, every fault
heals, the cluster converges, every key is read once more; then the checks — the history is
linearizable, no two primaries in one epoch, every replica applied the same entry at each seq,
every replica ends with the same state. A failing seed prints the command that replays it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from mt_chaos.linearizability import check
from mt_kv.rules.breaks import RULES, set_broken

from mt_kv_sim.cluster import Cluster
from mt_kv_sim.faults import Faults
from mt_kv_sim.loop import SimLoop
from mt_kv_sim.workload import Client, History

CLIENTS = 4
KEYS = [f"k{i}" for i in range(8)]
FAULTS_FROM_S, FAULTS_UNTIL_S = 4.0, 16.0
MIN_OPS = 200
SETTLE_LIMIT_S = 60.0


@dataclass
class Outcome:
    seed: int
    ops: int = 0
    unknown: int = 0
    repeated: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    virtual_s: float = 0.0


async def _scenario(loop: SimLoop, outcome: Outcome) -> None:
    cluster = Cluster(loop)
    faults = Faults(cluster, KEYS)
    faults.skew_clocks()
    cluster.start()
    await asyncio.sleep(FAULTS_FROM_S)
    history = History()
    # Two mostly write, two mostly read: a reader refreshes its routing table only when a read
    # fails, so it is the one to ask a deposed primary. One writer repeats a write of unknown
    # outcome (exactly-once sessions); the other never does, so it goes on to new values at
    # once — what shows a stale read soonest.
    shares = [0.9, 0.9, 0.1, 0.1]
    clients = [
        Client(cluster, f"c{i}", history, KEYS, shares[i], sessions=i != 1) for i in range(CLIENTS)
    ]

    def done() -> bool:
        return loop.time() >= FAULTS_UNTIL_S and len(history.ops) >= MIN_OPS

    tasks = [loop.create_task(c.run(done), context=c.process.context) for c in clients]
    await faults.run(FAULTS_UNTIL_S)
    await asyncio.gather(*tasks)
    faults.heal()
    if not await _converged(cluster, loop.time() + SETTLE_LIMIT_S):
        outcome.violations.append("the cluster did not converge after every fault healed")
    final = Client(cluster, "final", history, KEYS)

    counts: dict[str, int | None] = {}

    async def read_all() -> None:
        for key in KEYS:  # every acknowledged write must still be there
            await final.get(key)
            counts[key] = await final.count(key)

    await loop.create_task(read_all(), context=final.process.context)
    # The states are compared at one position: the primary may have logged more meanwhile
    # (expired session records swept once the run outlasts their TTL).
    await _converged(cluster, loop.time() + SETTLE_LIMIT_S)
    outcome.violations += _miscounted(history, counts)
    outcome.ops, outcome.unknown = len(history.ops), history.unknown
    outcome.repeated = history.repeated

    outcome.faults = faults.counts + Counter(stale=loop.net.stale_deliveries)
    verdict = check(history.ops)
    if not verdict.linearizable:
        outcome.violations.append(f"not linearizable: keys {', '.join(verdict.bad_keys)}")
    outcome.violations += cluster.watch.violations
    for shard, copies in cluster.states().items():
        if len({repr(sorted(s.items())) for s in copies.values()}) > 1:
            outcome.violations.append(f"shard {shard}'s copies ended with different states")
    outcome.virtual_s = loop.time()


async def _converged(cluster: Cluster, by: float) -> bool:
    """Until the cluster has converged (see Cluster.converged), or ``by``."""
    while not cluster.converged():
        if cluster.loop.time() > by:
            return False
        await asyncio.sleep(0.1)
    return True


def _miscounted(history: History, counts: dict[str, int | None]) -> list[str]:
    """Exactly-once: the writes a key's count says it took, against the acknowledged ones
    (plus those of unknown outcome): above is a write applied twice, below one lost."""
    wrong = []
    for key, counted in counts.items():
        acked, unsure = history.acked[key], history.unsure[key]
        if counted is None:
            wrong.append(f"the count of {key} could not be read")
        elif not acked <= counted <= acked + unsure:
            wrong.append(f"{key} took {counted} writes: {acked} acknowledged, {unsure} unknown")
    return wrong


def run_seed(seed: int) -> Outcome:
    loop = SimLoop(random.Random(seed))
    outcome = Outcome(seed)
    errors: list[str] = []

    def escaped(_: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        message = str(context.get("message"))
        if "destroyed but it is pending" in message or "generator is already running" in (
            str(context.get("exception"))
        ):
            return  # a killed process's task (or async generator), collected: never to run again
        errors.append(str(context.get("exception") or message))

    loop.set_exception_handler(escaped)
    with warnings.catch_warnings():
        # A killed process's coroutines that never started are collected unawaited.
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        try:
            loop.run_until_complete(_scenario(loop, outcome))
        finally:
            loop.close()
            gc.collect()
    outcome.violations += [f"an error escaped: {e}" for e in errors]
    return outcome


def replay_command(seed: int, broken: str | None) -> str:
    extra = f" BREAK={broken}" if broken else ""
    return f"make sim SEEDS=1 FIRST={seed}{extra}"


def _seeds(first: int, count: int, jobs: int, broken: str) -> Iterator[Outcome]:
    """Each seed's outcome, in seed order; across ``jobs`` processes if more than one."""
    seeds = range(first, first + count)
    if jobs <= 1:
        yield from map(run_seed, seeds)
        return
    with ProcessPoolExecutor(jobs, initializer=set_broken, initargs=(broken,)) as pool:
        yield from pool.map(run_seed, seeds, chunksize=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="processes to run seeds in")
    parser.add_argument("--break", dest="broken", default=os.environ.get("MT_SIM_BREAK") or None)
    parser.add_argument("--until-found", action="store_true", help="stop at the first failing seed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # a run's faults log by the thousand
    set_broken(args.broken or "")
    if args.broken:
        print(f"sim: BREAK={args.broken}: {RULES[args.broken]}", flush=True)
    total = Outcome(0)
    failed: list[Outcome] = []
    started = time.monotonic()
    ran = 0
    for outcome in _seeds(args.first, args.seeds, args.jobs, args.broken or ""):
        ran += 1
        total.ops += outcome.ops
        total.unknown += outcome.unknown
        total.repeated += outcome.repeated
        total.faults += outcome.faults
        if outcome.violations:
            failed.append(outcome)
            shown = "; ".join(outcome.violations[:3])
            more = len(outcome.violations) - 3
            shown += f" (and {more} more)" if more > 0 else ""
            print(f"sim: seed {outcome.seed} FAILED: {shown}", flush=True)
            print(f"sim:   replay: {replay_command(outcome.seed, args.broken)}", flush=True)
            if args.until_found:
                print(f"sim: found after {ran} seeds", flush=True)
                break
        if ran % 50 == 0:
            took = time.monotonic() - started
            print(
                f"sim: {ran}/{args.seeds} seeds, {len(failed)} failing, {took:.0f} s "
                f"(Ctrl-C stops)",
                file=sys.stderr,
                flush=True,
            )
    faults = sum(total.faults.values())
    kinds = " ".join(f"{k}={v}" for k, v in sorted(total.faults.items()))
    print(
        f"sim: seeds={ran} ops={total.ops} unknown={total.unknown} "
        f"repeated={total.repeated} faults={faults} "
        f"violations={len(failed)} ({kinds}) in {time.monotonic() - started:.1f} s"
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
