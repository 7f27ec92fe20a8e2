"""``make capacity``: the stack's open-loop capacity, and what admission makes of overload.

    make capacity                      # everything (about 20 minutes here)
    CAPACITY_C=6 make capacity         # skip the search, take C as given
    CAPACITY_MODES=adaptive make capacity

1. The local stack (started if it is not running), its gateway restarted with the per-IP
   limits raised (one address for every simulated user) and the admission under test.
2. A population seeded through the API: users linked to legacy accounts that follow two
   celebrities not on the app yet (their imports leave the pending follows the celebrities'
   joins will apply), following each other Zipf-like, with a couple of posts each.
3. **C**: the highest offered rate of the day-1 mix (``openloop.DAY1_MIX``: signups with
   their imports, posts, likes, feed reads, follows, post reads) whose p99 stays within the
   SLO (250 ms) for every request kind with nothing refused or failed, bisected to ±5%, with
   the opportunistic jobs paused and the old fixed admission (nothing refused below it: C is
   what the box serves, not what a limiter lets through). A probe that fails on its tail
   alone is confirmed on three times the samples: one process's stall fails a 20 s probe.
4. For each admission (``adaptive``: the new one; then ``fixed``: the old bound), the same
   sequence, open loop, with the async platform running: idle (the opportunistic jobs'
   unloaded rate), 0.5C, then 2C at once (a celebrity joins 5 s in), idle 30 s (the
   opportunistic rate coming back), 1C, 4C, then the deferred backlog drained. The adaptive
   sequence goes first, on the data set C was measured on: each sequence grows it by what it
   admits, and the fixed one admits two or three times as much (after it, the same box served
   0.5C only with its gate shut to a few requests in flight).
5. ``loadtest/reports/<UTC ts>/capacity.json`` (``{"capacity_per_s", "adaptive": [STEP...],
   "fixed": [STEP...], ...}``, STEP as in ``openloop.summarize`` plus the jobs' rates) and
   ``capacity.png``.

Latency is timed from each request's scheduled send. The generator's CPU and event-loop lag
are reported per step; a step whose generator lagged (p99 over ``LAG_VALID_MS``) is marked
invalid. Progress goes to stderr; Ctrl-C stops the run (the jobs paused for the search are
resumed, the gateway is left with adaptive admission); ``kill -USR1 <pid>`` prints where
every task of a quiet run is waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openloop as ol
import stackcpu
from mt_core.foreground import read_all
from mt_jobs.control import pause, read_stats, resume
from redis.asyncio import Redis

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
BASE = "http://127.0.0.1:8080"
REDIS_URL = "redis://127.0.0.1:6379/0"
OPPORTUNISTIC = ("import", "join")
PER_IP_RAISED = {"MT_RATE_PER_IP_PER_MIN": "100000000", "MT_LOGIN_PER_IP_PER_MIN": "100000000"}
LAG_VALID_MS = 20.0  # a generator later than this (p99) invalidates its step
PROBE_MIN_SAMPLES = 20  # of each kind in a search probe (fewer: the p99 is just the maximum)
SEARCH_SHED_MAX = 0.01  # a search probe may refuse this much and still count as served
STALL_MAX_X = 4.0  # a probe p99 past this many times the SLO is a queue, not a stall
BACKLOG_IMPORTS = 40  # imports waiting before each sequence: its opportunistic work


def say(line: str) -> None:
    print(f"capacity: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    step_s: float = float(os.environ.get("CAPACITY_STEP_S", "60"))
    probe_s: float = float(os.environ.get("CAPACITY_PROBE_S", "20"))
    slo_ms: float = float(os.environ.get("CAPACITY_SLO_MS", "250"))
    given_c: float | None = (
        float(os.environ["CAPACITY_C"]) if os.environ.get("CAPACITY_C") else None
    )
    modes: tuple[str, ...] = tuple(os.environ.get("CAPACITY_MODES", "adaptive,fixed").split(","))
    fans: int = int(os.environ.get("CAPACITY_FANS", "60"))  # per celebrity
    drain_timeout_s: float = float(os.environ.get("CAPACITY_DRAIN_TIMEOUT_S", "900"))
    seed: int = int(os.environ.get("CAPACITY_SEED", str(random.randrange(1 << 30))))


# ---------------------------------------------------------------------- the stack


def minithreads(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(
        [str(BIN / "minithreads"), *args],
        env={**os.environ, **(env or {})},
        stdout=sys.stderr,
        check=True,
    )


def restart_gateway(admission: str) -> None:
    """The gateway alone, again, with ``admission`` and the per-IP limits raised."""
    say(f"restarting the gateway with {admission} admission...")
    minithreads("down", "gateway")
    minithreads("up", "--no-install", "gateway", env={**PER_IP_RAISED, "MT_ADMISSION": admission})


def ensure_stack() -> None:
    rows = json.loads(
        subprocess.run(
            [str(BIN / "minithreads"), "ps", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    if not all(r["health"] == "healthy" for r in rows):
        say("starting the local stack (left running; `make down` stops it)...")
        minithreads("up", "--no-install", env=PER_IP_RAISED)


def prioritise_generator() -> bool:
    """The generator shares the box with what it measures; its lateness would be counted as
    the server's. Give it the CPU first (as root: a higher priority for its scheduler group)."""
    try:
        Path("/proc/self/autogroup").write_text("-10")
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError as err:
        say(f"cannot raise the generator's priority ({err}): its lag may invalidate steps")
        return False
    return True


# ---------------------------------------------------------------------- watching


def waiting(kind: dict[str, Any]) -> float:
    """A job kind's backlog in one sample: unread in Kafka, queued in a worker, or running."""
    return float(kind["lag"] + kind["queued"] + kind["in_flight"])


@dataclass
class Monitor:
    """Once a second: the jobs' counters, the gateway's state and the box's CPU."""

    redis: Redis
    t0: float = field(default_factory=time.monotonic)
    series: list[dict[str, Any]] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def mark(self, label: str) -> None:
        self.marks.append((round(time.monotonic() - self.t0, 1), label))

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        before = stackcpu.snapshot({})
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):  # a failed sample is a gap, not the end
                sample, before = await self._sample(before)
                self.series.append(sample)

    async def _sample(self, before: stackcpu.Snapshot) -> tuple[dict[str, Any], stackcpu.Snapshot]:
        stats = await read_stats(self.redis)
        kinds = {
            kind: {
                name: sum(p.get(name) or 0 for p in processes)
                for name in ("units", "processed", "lag", "queued", "in_flight", "dead")
            }
            | {"deferred": any(p.get("deferred") for p in processes)}
            for kind, processes in stats.items()
        }
        gateways = await read_all(self.redis)
        now = stackcpu.snapshot({})
        sample = {
            "t": round(self.now(), 2),
            "kinds": kinds,
            "pressure": max((g.pressure for g in gateways), default=0.0),
            "limit": max((g.limit for g in gateways), default=0),
            "box_busy_ms_per_s": now.box_busy_ms_per_s(before),
        }
        return sample, now

    def compact(self) -> list[dict[str, Any]]:
        """The series for the report: per second, the gateway and each kind's state."""
        return [
            {
                "t": s["t"],
                "pressure": s["pressure"],
                "limit": s["limit"],
                "box_busy_ms_per_s": s["box_busy_ms_per_s"],
                "kinds": {
                    k: [v["units"], waiting(v), int(v["deferred"])] for k, v in s["kinds"].items()
                },
            }
            for s in self.series
        ]

    def opportunistic_units(self) -> list[tuple[float, float]]:
        """(t, applied follows per second) of the opportunistic kinds, second by second."""
        out = []
        for a, b in zip(self.series, self.series[1:], strict=False):
            units = sum(
                b["kinds"].get(k, {}).get("units", 0) - a["kinds"].get(k, {}).get("units", 0)
                for k in OPPORTUNISTIC
            )
            out.append((b["t"], max(0.0, units / max(1e-3, b["t"] - a["t"]))))
        return out

    def opportunistic_backlog(self) -> list[tuple[float, int]]:
        """(t, jobs of the opportunistic kinds waiting or running), second by second."""
        return [
            (
                b["t"],
                sum(int(waiting(k)) for name, k in b["kinds"].items() if name in OPPORTUNISTIC),
            )
            for b in self.series
        ]

    def backlog(self) -> int:
        last = self.series[-1]["kinds"] if self.series else {}
        return sum(int(waiting(k)) for k in last.values())

    def dead(self, kinds: tuple[str, ...]) -> int:
        last = self.series[-1]["kinds"] if self.series else {}
        return sum(int(last.get(k, {}).get("dead", 0)) for k in kinds)

    def jobs_per_s(self, start: float, end: float) -> dict[str, float]:
        inside = [s for s in self.series if start <= s["t"] <= end]
        if len(inside) < 2:
            return {}
        a, b = inside[0], inside[-1]
        dt = max(1e-3, b["t"] - a["t"])
        return {
            kind: round(
                (b["kinds"][kind]["units"] - a["kinds"].get(kind, {}).get("units", 0)) / dt, 1
            )
            for kind in sorted(b["kinds"])
        }

    def box_busy(self, start: float, end: float) -> float:
        inside = [s["box_busy_ms_per_s"] for s in self.series if start <= s["t"] <= end]
        return round(sum(inside) / len(inside)) if inside else 0.0


# ---------------------------------------------------------------------- steps


def classes_of_kinds(document: dict[str, Any]) -> dict[str, str]:
    """Each request kind's criticality class, as the gateway's API document states it."""
    out = {}
    for kind, (method, path) in ol.ROUTES.items():
        operation = document["paths"][path][method.lower()]
        out[kind] = str(operation["x-criticality"])
    return out


@dataclass
class Runner:
    gen: ol.Generator
    monitor: Monitor
    classes: dict[str, str]
    plan: Plan
    last_run: ol.StepRun | None = None

    async def step(
        self,
        x: float,
        c: float,
        duration_s: float,
        during: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> dict[str, Any]:
        rate = x * c
        say(f"step {x:g}C = {rate:.1f}/s for {duration_s:.0f} s (Ctrl-C stops)")
        start = self.monitor.now()
        self.monitor.mark(f"{x:g}C")
        side = asyncio.create_task(during()) if during is not None else None
        run = await self.gen.step(rate, duration_s, progress=self._progress)
        if side is not None:
            await side
        end = self.monitor.now()
        summary = ol.summarize(run, self.classes, offered_x=x)
        summary["jobs_per_s"] = self.monitor.jobs_per_s(start, end)
        summary["box_busy_ms_per_s"] = self.monitor.box_busy(start, end)
        summary["valid"] = summary["generator"]["loop_lag_p99_ms"] <= LAG_VALID_MS
        summary["t_start_s"], summary["t_end_s"] = round(start, 1), round(end, 1)
        summary["per_second"] = per_second(run)
        say(one_line(summary))
        self.last_run = run
        return summary

    def _progress(self, t: float, done: int, outstanding: int) -> None:
        last = self.monitor.series[-1] if self.monitor.series else {}
        say(
            f"  t={t:.0f}s answered={done} outstanding={outstanding} "
            f"limit={last.get('limit', '?')} pressure={last.get('pressure', '?')} "
            f"backlog={self.monitor.backlog()} jobs"
        )

    async def idle(self, seconds: float, label: str) -> tuple[float, float]:
        say(f"{label}: {seconds:.0f} s without load")
        self.monitor.mark(label)
        start = self.monitor.now()
        await asyncio.sleep(seconds)
        return start, self.monitor.now()

    async def settle(self, limit_s: float = 30.0) -> None:
        """Until the reserved jobs are caught up and the gateway calm (at most ``limit_s``)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            last = self.monitor.series[-1] if self.monitor.series else None
            if last is not None and last["pressure"] < 0.8:
                reserved = sum(
                    waiting(k) for name, k in last["kinds"].items() if name not in OPPORTUNISTIC
                )
                if reserved == 0:
                    return
            await asyncio.sleep(1.0)


def per_second(run: ol.StepRun) -> list[dict[str, float]]:
    """Offered and served per second of the step (by scheduled send)."""
    buckets: dict[int, list[ol.Sample]] = {}
    for s in run.samples:
        buckets.setdefault(int(s.due_s - run.started_at), []).append(s)
    return [
        {
            "t": t,
            "offered": len(b),
            "ok": sum(1 for s in b if s.result == "ok"),
            "shed": sum(1 for s in b if s.result == "shed"),
        }
        for t, b in sorted(buckets.items())
    ]


def one_line(step: dict[str, Any]) -> str:
    worst = max(step["p99_ms"].items(), key=lambda kv: kv[1], default=("-", 0))
    return (
        f"  {step['offered_x']}C offered {step['offered_per_s']}/s goodput "
        f"{step['goodput_per_s']}/s worst p99 {worst[0]} {worst[1]:.0f} ms shed "
        f"{step['shed_rate']:.0%} {step['shed_by_class']} shed p99 {step['shed_p99_ms']} ms "
        f"errors {step['error_rate']:.1%} generator lag p99 "
        f"{step['generator']['loop_lag_p99_ms']} ms"
    )


def stalled(step: dict[str, Any], slo_ms: float) -> bool:
    """Failed on a tail alone: nothing refused or failed, and no kind's p99 so far past the
    objective (STALL_MAX_X of it) that it can only be a queue."""
    return (
        step["shed_rate"] <= SEARCH_SHED_MAX
        and step["error_rate"] == 0
        and all(p <= STALL_MAX_X * slo_ms for p in step["p99_ms"].values())
    )


def served(step: dict[str, Any], slo_ms: float) -> bool:
    return (
        all(p <= slo_ms for p in step["p99_ms"].values())
        and step["shed_rate"] <= SEARCH_SHED_MAX
        and step["error_rate"] == 0
    )


async def find_capacity(runner: Runner) -> tuple[float, list[dict[str, Any]]]:
    """The highest rate served within the SLO: doubling until a probe fails, then bisecting
    until the bracket is within ±5% of its middle."""
    probes: list[dict[str, Any]] = []
    plan = runner.plan

    async def probe(rate: float) -> bool:
        await runner.settle()
        # Long enough for the rarest kind's p99 to rest on PROBE_MIN_SAMPLES, up to 4 probes.
        rarest = rate * min(ol.DAY1_MIX.values())
        duration_s = min(4 * plan.probe_s, max(plan.probe_s, PROBE_MIN_SAMPLES / rarest))
        step = await runner.step(1.0, rate, duration_s)
        step["rate_per_s"] = rate
        probes.append(step)
        if served(step, plan.slo_ms):
            return True
        if not stalled(step, plan.slo_ms):
            return False
        # One stall of one process (a collector's pause, a checkpoint) can fail a short probe
        # by itself: such a failure is confirmed on three times the samples (the probe pooled
        # with one twice as long). A queue fails both.
        first = runner.last_run
        assert first is not None
        await runner.settle()
        again = await runner.step(1.0, rate, 2 * duration_s)
        assert runner.last_run is not None
        together = ol.summarize(ol.pooled(first, runner.last_run), runner.classes, offered_x=1.0)
        together |= {"rate_per_s": rate, "pooled_with_previous": True}
        probes.extend([again | {"rate_per_s": rate}, together])
        say(one_line(together) + " (the two probes pooled)")
        return served(together, plan.slo_ms)

    lo, hi = 0.0, 0.0
    rate = 2.0
    while True:
        if await probe(rate):
            lo = rate
            rate *= 2
        else:
            hi = rate
            break
    if lo == 0:
        lo = hi / 2
        while lo > 0.25 and not await probe(lo):
            hi, lo = lo, lo / 2
    while (hi - lo) / (hi + lo) > 0.05:
        mid = (lo + hi) / 2
        if await probe(mid):
            lo = mid
        else:
            hi = mid
    return round(lo, 2), probes


# ---------------------------------------------------------------------- a sequence


async def celebrity_joins(base: str, rank: int, delay_s: float, joined: dict[str, Any]) -> None:
    """The celebrity signs up ``delay_s`` into the step, as the app would: retrying refusals
    after their Retry-After."""
    await asyncio.sleep(delay_s)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        status, data = await ol.legacy_signup(http, base, rank)
    if status == 201:
        joined.update(handle=data["user"]["handle"], at_s=time.monotonic(), rank=rank)
        say(f"  the celebrity (legacy rank {rank}) joined as @{data['user']['handle']}")
    else:
        say(f"  the celebrity (legacy rank {rank}) could not join ({status})")


def transition(
    monitor: Monitor,
    unloaded: tuple[float, float],
    calm: tuple[float, float],
    surge_start: float,
    load_end: float,
) -> dict[str, Any]:
    """How the opportunistic rate answered the step from 0.5C to 2C and the load's end."""
    series = monitor.opportunistic_units()

    def mean(a: float, b: float) -> float:
        inside = [u for t, u in series if a < t <= b]
        return sum(inside) / len(inside) if inside else 0.0

    unloaded_rate = mean(*unloaded)
    before = mean(calm[1] - 10, calm[1])
    fell_at = next(
        (t - surge_start for t, u in series if t > surge_start and u <= 0.2 * before), None
    )
    smooth = [
        (t, sum(u for tt, u in series if t - 3 < tt <= t) / 3) for t, _ in series if t > load_end
    ]
    back_at = next(
        (t - load_end for t, u in smooth if u >= 0.9 * unloaded_rate and unloaded_rate > 0), None
    )
    # A backlog that ran out first left nothing to go faster on: the rate was all the work.
    empty_at = next(
        (t - load_end for t, n in monitor.opportunistic_backlog() if t > load_end and n == 0),
        None,
    )
    back_by = "rate" if back_at is not None else None
    if empty_at is not None and (back_at is None or empty_at < back_at):
        back_at, back_by = empty_at, "backlog_drained"
    return {
        "unloaded_per_s": round(unloaded_rate, 1),
        "at_half_c_per_s": round(before, 1),
        "during_2c_per_s": round(mean(surge_start + 5, load_end), 1),
        "fell_80pct_after_s": None if fell_at is None else round(fell_at, 1),
        "back_to_unloaded_after_s": None if back_at is None else round(back_at, 1),
        "back_by": back_by,
        "series": [(round(t, 1), round(u, 1)) for t, u in series if unloaded[0] <= t],
    }


SEQUENCE_X = (0.5, 2.0, 1.0, 4.0)  # the offered multiples of C, in the order they are run


async def stock_newcomers(runner: Runner, c: float, rng: random.Random) -> None:
    """Enough unclaimed legacy accounts for a sequence's signups (every one offered, with a
    margin for Poisson's excess): a run whose newcomers ran out would offer no critical work."""
    pop = runner.gen.actions.pop
    offered = c * ol.DAY1_MIX["signup"] * sum(SEQUENCE_X) * runner.plan.step_s
    wanted = BACKLOG_IMPORTS + 1.3 * offered
    missing = int(wanted) - len(pop.free_legacy)
    if missing > 0:
        say(f"picking {missing} more unclaimed legacy accounts for the newcomers...")
        async with aiohttp.ClientSession() as http:
            picked = await ol.free_legacy_accounts(http, BASE, missing, rng)
        held = set(pop.free_legacy)
        pop.free_legacy += [p for p in picked if p not in held]


async def sequence(
    runner: Runner, mode: str, c: float, celebrity: int, rng: random.Random
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    plan = runner.plan
    await stock_newcomers(runner, c, rng)
    restart_gateway(mode)
    # Opportunistic work waiting, so that its unloaded rate can be seen: imports of newcomers
    # signed up meanwhile (held until the idle window).
    await pause(runner.monitor.redis, list(OPPORTUNISTIC))
    started = await ol.signups_with_imports(BASE, runner.gen.actions.pop, BACKLOG_IMPORTS)
    say(f"{mode}: {started} imports waiting")
    await resume(runner.monitor.redis, list(OPPORTUNISTIC))
    await runner.settle(60)
    steps = []
    start, end = await runner.idle(20, f"{mode}: idle")
    unloaded = (start + 10, end)  # its last 10 s: past the slow start
    calm_start = runner.monitor.now()
    steps.append(await runner.step(0.5, c, plan.step_s))
    calm = (calm_start, runner.monitor.now())
    surge_start = runner.monitor.now()
    joined: dict[str, Any] = {}
    steps.append(
        await runner.step(
            2.0, c, plan.step_s, lambda: celebrity_joins(BASE, celebrity, 5.0, joined)
        )
    )
    load_end = runner.monitor.now()
    await runner.idle(30, f"{mode}: after 2C")
    shift = transition(runner.monitor, unloaded, calm, surge_start, load_end)
    shift["celebrity"] = joined.get("handle")
    await runner.settle()
    steps.append(await runner.step(1.0, c, plan.step_s))
    await runner.settle()
    steps.append(await runner.step(4.0, c, plan.step_s))
    return sorted(steps, key=lambda s: s["offered_x"]), shift


async def drain(monitor: Monitor, timeout_s: float) -> float | None:
    started = time.monotonic()
    quiet = 0
    while time.monotonic() - started < timeout_s:
        await asyncio.sleep(1.0)
        backlog = monitor.backlog()
        quiet = quiet + 1 if backlog == 0 else 0
        if quiet >= 3:
            return round(time.monotonic() - started, 1)
        if int(time.monotonic() - started) % 10 == 0:
            say(f"draining the async backlog: {backlog} jobs (Ctrl-C stops)")
    return None


# ---------------------------------------------------------------------- the report


def chart(folder: Path, report: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 9))
    twin = top.twinx()
    for mode, marker in (("fixed", "s--"), ("adaptive", "o-")):
        steps = report.get(mode) or []
        xs = [s["offered_x"] for s in steps]
        top.plot(xs, [s["goodput_per_s"] for s in steps], marker, label=f"{mode}: goodput/s")
        worst = [max(s["p99_ms"].values(), default=0) for s in steps]
        twin.plot(xs, worst, marker, alpha=0.4, label=f"{mode}: worst p99 ms")
    twin.set_yscale("log")
    twin.set_ylabel("worst p99 of the admitted (ms, faint)")
    twin.axhline(report["plan"]["slo_ms"], color="red", lw=0.6, ls=":")
    c = report["capacity_per_s"]
    top.axhline(c, color="grey", lw=0.8)
    top.axhline(0.9 * c, color="grey", lw=0.8, ls=":")
    top.set(xlabel="offered (x C)", ylabel="goodput (requests/s)", title=f"C = {c}/s")
    top.legend(loc="upper left", fontsize=8)
    shift = (report.get("transitions") or {}).get("adaptive") or {}
    if shift.get("series"):
        t0 = shift["series"][0][0]
        bottom.plot([t - t0 for t, _ in shift["series"]], [u for _, u in shift["series"]])
    bottom.set(
        xlabel="s (adaptive: idle, 0.5C, 2C, idle)",
        ylabel="applied follows/s (imports + joins)",
        title="Opportunistic work yielding to the foreground",
    )
    fig.tight_layout()
    fig.savefig(folder / "capacity.png", dpi=90)
    plt.close(fig)
    return "capacity.png"


async def cleanup(redis: Redis, monitor: Monitor, timeout_s: float = 10.0) -> None:
    """The paused kinds resumed, the monitor stopped: bounded, as a run that measured
    everything must still end and write its report."""
    steps: list[tuple[str, Callable[[], Coroutine[Any, Any, Any]]]] = [
        ("resuming the paused kinds", lambda: resume(redis, list(OPPORTUNISTIC))),
        ("stopping the monitor", monitor.stop),
        ("closing Redis", redis.aclose),
    ]
    for name, step in steps:
        try:
            async with asyncio.timeout(timeout_s):
                await step()
        except TimeoutError:
            say(f"cleanup: {name} did not finish in {timeout_s:.0f} s; going on")


def dump_tasks() -> None:
    """``kill -USR1 <pid>``: every asyncio task's stack to stderr (where is a quiet run?)."""
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


async def main() -> int:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
    plan = Plan()
    rng = random.Random(plan.seed)
    folder = HERE / "reports" / time.strftime("%Y%m%d-%H%M%SZ", time.gmtime())
    folder.mkdir(parents=True)
    say(f"report in {folder}; seed {plan.seed}; {os.cpu_count()} cores, load {os.getloadavg()}")
    prioritised = prioritise_generator()
    ensure_stack()
    restart_gateway("fixed")
    redis = Redis.from_url(REDIS_URL)
    monitor = Monitor(redis)
    monitor.start()
    report: dict[str, Any] = {"plan": plan.__dict__, "generator_prioritised": prioritised}

    def save() -> None:  # after every phase: an interrupted run keeps what it measured
        report["marks"] = monitor.marks
        report["monitor"] = {
            "columns": "per second; kinds: [units done, backlog, deferred]",
            "series": monitor.compact(),
        }
        (folder / "capacity.json").write_text(json.dumps(report, indent=1) + "\n")

    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(BASE + "/openapi.json") as response:
                classes = classes_of_kinds(await response.json())
            celebrities = await ol.free_celebrities(http, BASE, 2)
        if len(celebrities) < 2:
            raise RuntimeError("no legacy celebrity left off the app")
        fans = [f for rank in celebrities for f in ol.legacy_fans(rank, plan.fans, rng)]
        pop = await ol.seed(BASE, fans, 8, 4_000, rng, say)
        say("waiting for the seeded imports (they leave the celebrities' pending follows)...")
        await drain(monitor, plan.drain_timeout_s)
        async with ol.Generator(BASE, pop, plan.seed) as gen:
            runner = Runner(gen, monitor, classes, plan)
            await pause(redis, list(OPPORTUNISTIC))
            if plan.given_c is None:
                say("searching for C (opportunistic jobs paused, fixed admission)...")
                c, probes = await find_capacity(runner)
                report["search"] = probes
            else:
                c = plan.given_c
            report["capacity_per_s"] = c
            report["machine"] = {"cores": os.cpu_count(), "loadavg": os.getloadavg()}
            save()
            say(f"C = {c}/s")
            await resume(redis, list(OPPORTUNISTIC))
            report["transitions"] = {}
            for mode, celebrity in zip(plan.modes, celebrities, strict=False):
                dead_before = monitor.dead(OPPORTUNISTIC)
                steps, shift = await sequence(runner, mode, c, celebrity, rng)
                report[mode] = steps
                shift["drained_after_s"] = await drain(monitor, plan.drain_timeout_s)
                shift["dead_lettered"] = monitor.dead(OPPORTUNISTIC) - dead_before
                report["transitions"][mode] = shift
                save()
    finally:
        save()
        await cleanup(redis, monitor)
    report["chart"] = chart(folder, report)
    save()
    print(
        json.dumps({k: report[k] for k in ("capacity_per_s", "fixed", "adaptive") if k in report})
    )
    say(f"report: {folder / 'capacity.json'}, {report['chart']}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        say("interrupted (the partial report is in the folder printed at the start)")
        sys.exit(130)
