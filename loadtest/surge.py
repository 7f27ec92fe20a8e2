"""``make surge``: replay the launch against the stack, wait for the async backlog, check, report.

    SURGE_DURATION_S=180 SURGE_SCALE=5e-6 make surge

1. The stack: SURGE_TARGET (default the local gateway). A local stack that is not running is
   started with the per-IP limits raised — every simulated user comes from 127.0.0.1 — and
   left running afterwards (``make down`` stops it).
2. Locust, headless, with ``loadtest/locustfile.py`` (its shape ends the run); meanwhile the
   async backlog (Kafka lag + jobs queued or running, per kind, from the workers' stats in
   Redis) is sampled every second.
3. After the load: the time until the backlog reaches zero (``backlog_drained_s``).
4. The invariants (``surge_check``), then charts and ``summary.json`` in
   ``loadtest/reports/<UTC timestamp>/`` beside Locust's CSV and HTML.

Progress goes to stderr every few seconds; Ctrl-C stops the load, and the report is still
written from what was measured (without the drain and the check). Exit status 1 if an
invariant failed or the backlog did not drain within SURGE_DRAIN_TIMEOUT_S (600).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import surge_check
import surge_report
from mt_cli.jobscmd import collect
from surge_curve import DAY1_PEAK_PER_S, Surge

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
LOCAL = "http://127.0.0.1:8080"
SURGE_STACK_ENV = {
    # One address for every simulated user: the per-IP limits would be the whole story.
    "MT_RATE_PER_IP_PER_MIN": "100000000",
    "MT_LOGIN_PER_IP_PER_MIN": "100000000",
}
DRAINED_SAMPLES = 3  # consecutive empty samples (the stats are published every second)


def say(line: str) -> None:
    print(f"surge: {line}", file=sys.stderr, flush=True)


def ensure_stack(target: str) -> None:
    if target != LOCAL:
        say(f"target {target} (not started or checked here)")
        return
    rows = json.loads(
        subprocess.run(
            [str(BIN / "minithreads"), "ps", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    if all(r["health"] == "healthy" for r in rows):
        say(
            "the local stack is running: its own rate limits apply (restart it with "
            "`make down` first to let surge start it with the per-IP limits raised)"
        )
        return
    say("starting the local stack with the per-IP limits raised (left running; `make down`)...")
    subprocess.run(
        [str(BIN / "minithreads"), "up", "--no-install"],
        env={**os.environ, **SURGE_STACK_ENV},
        stdout=sys.stderr,  # stdout is the summary's JSON line alone
        check=True,
    )


async def backlog_sample(redis_url: str, t0: float) -> dict[str, Any]:
    kinds = await collect(redis_url)
    per_kind = {kind: int(s["lag"] + s["in_flight"] + s["queued"]) for kind, s in kinds.items()}
    return {
        "t": round(time.monotonic() - t0, 1),
        "kinds": per_kind,
        "backlog": sum(per_kind.values()),
    }


class Sampler:
    def __init__(self, redis_url: str, t0: float) -> None:
        self.redis_url = redis_url
        self.t0 = t0
        self.samples: list[dict[str, Any]] = []

    async def sample(self) -> dict[str, Any]:
        try:
            s = await backlog_sample(self.redis_url, self.t0)
        except Exception as err:  # a failed read is a gap in the chart, not the end of the run
            say(f"backlog sample failed: {err!r}")
            return {"t": round(time.monotonic() - self.t0, 1), "kinds": {}, "backlog": -1}
        self.samples.append(s)
        return s

    async def run_every(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


def locust_command(folder: Path, target: str) -> list[str]:
    return [
        str(BIN / "locust"),
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--host",
        target,
        "--csv",
        str(folder / "locust"),
        "--csv-full-history",
        "--html",
        str(folder / "report.html"),
        "--stop-timeout",  # at the end, users finish the request they are in
        "10",
        "--loglevel",
        "WARNING",
    ]


def progress_line(folder: Path, surge: Surge, started: float, sampler: Sampler) -> str:
    users, rps, fails = "?", "?", "?"
    with contextlib.suppress(OSError, csv.Error):
        with (folder / "locust_stats_history.csv").open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
        if rows:
            users, rps, fails = (
                rows[-1]["User Count"],
                rows[-1]["Requests/s"],
                rows[-1]["Failures/s"],
            )
    backlog = sampler.samples[-1]["backlog"] if sampler.samples else "?"
    elapsed = time.monotonic() - started
    return (
        f"t={elapsed:.0f}/{surge.duration_s:.0f}s users={users} req/s={rps} failures/s={fails} "
        f"backlog={backlog} jobs (Ctrl-C stops)"
    )


async def run_load(
    folder: Path, target: str, surge: Surge, sampler: Sampler, env: dict[str, str]
) -> float:
    """Locust until its shape ends; returns how long the load ran (s)."""
    log = (folder / "locust.log").open("w")
    proc = await asyncio.create_subprocess_exec(
        *locust_command(folder, target), env=env, stdout=log, stderr=subprocess.STDOUT
    )
    started = time.monotonic()
    try:
        while proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
            if proc.returncode is None:
                say(progress_line(folder, surge, started, sampler))
    finally:
        if proc.returncode is None:  # Ctrl-C: Locust writes its reports on SIGINT
            proc.send_signal(signal.SIGINT)
            await proc.wait()
        log.close()
    if proc.returncode not in (0, 1):  # 1: some requests failed, which the report shows
        raise RuntimeError(f"locust exited with {proc.returncode}: see {folder / 'locust.log'}")
    return time.monotonic() - started


async def wait_drained(sampler: Sampler, timeout_s: float) -> float | None:
    """Seconds from now until the backlog stays at zero; None if it did not in time."""
    started = time.monotonic()
    empty_since: float | None = None
    empty = 0
    last_said = 0.0
    while time.monotonic() - started < timeout_s:
        s = await sampler.sample()
        if s["backlog"] == 0:
            empty_since = empty_since if empty else time.monotonic()
            empty += 1
            if empty >= DRAINED_SAMPLES:
                assert empty_since is not None
                return round(empty_since - started, 1)
        else:
            empty = 0
        if time.monotonic() - last_said > 5:
            say(f"waiting for the async backlog to drain: {s['backlog']} jobs (Ctrl-C stops)")
            last_said = time.monotonic()
        await asyncio.sleep(1)
    return None


async def main() -> int:
    surge = Surge(
        duration_s=float(os.environ.get("SURGE_DURATION_S", "180")),
        scale=float(os.environ.get("SURGE_SCALE", "5e-6")),
        hours=float(os.environ.get("SURGE_HOURS", "120")),
    )
    target = os.environ.get("SURGE_TARGET", LOCAL).rstrip("/")
    redis_url = os.environ.get("SURGE_REDIS_URL", "redis://127.0.0.1:6379/0")
    drain_timeout_s = float(os.environ.get("SURGE_DRAIN_TIMEOUT_S", "600"))
    folder = HERE / "reports" / time.strftime("%Y%m%d-%H%M%SZ", time.gmtime())
    folder.mkdir(parents=True)
    say(
        f"{surge.duration_s:.0f} s replaying {surge.hours:.0f} launch hours "
        f"(1 s = {surge.compression / 60:.0f} launch minutes) at scale {surge.scale:g}: "
        f"{surge.total_users} users, peak {surge.peak_arrivals_per_s:.1f} signups/s; "
        f"report in {folder}"
    )
    ensure_stack(target)
    env = {**os.environ, "SURGE_LEDGER": str(folder), "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    sampler = Sampler(redis_url, t0)
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler.run_every(1.0, stop))
    summary: dict[str, Any] = {}
    interrupted = False
    try:
        load_s = await run_load(folder, target, surge, sampler, env)
    except asyncio.CancelledError:
        interrupted, load_s = True, time.monotonic() - t0
    finally:
        stop.set()
        await sampling
    load_end = time.monotonic() - t0
    drained_s: float | None = None
    invariants: dict[str, Any] = {"holding": None, "skipped": "interrupted"}
    if not interrupted:
        say("load finished; waiting for the async backlog to drain...")
        drained_s = await wait_drained(sampler, drain_timeout_s)
        if drained_s is None:
            say(f"the backlog did not drain in {drain_timeout_s:.0f} s")
        say("checking the invariants (settling unknown outcomes first)...")
        invariants = await surge_check.check(target, folder / "ledger.jsonl")
    summary = surge_report.summarize(folder, sampler.samples, load_s)
    summary["backlog_drained_s"] = drained_s
    summary["invariants"] = invariants
    summary["goal_day1_peak_per_s"] = DAY1_PEAK_PER_S
    summary["surge"] = {
        "scale": surge.scale,
        "launch_hours": surge.hours,
        "users_planned": surge.total_users,
        "peak_signups_per_s_planned": round(surge.peak_arrivals_per_s, 2),
        "target": target,
        "cores": os.cpu_count(),
    }
    (folder / "backlog.json").write_text(json.dumps(sampler.samples))
    summary["charts"] = surge_report.charts(folder, sampler.samples, load_end)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    say(f"report: {folder} (report.html, summary.json, {', '.join(summary['charts'])})")
    ok = invariants.get("holding") is True and drained_s is not None
    if not ok:
        say("FAILED: " + ("backlog did not drain" if drained_s is None else "invariants broken"))
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
