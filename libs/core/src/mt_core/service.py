"""The one way a minithreads process runs: settings -> logging -> telemetry -> app -> signal.

A service provides a settings class and an ``app(settings)`` async context manager that holds
its servers and clients; this module runs it until SIGTERM or SIGINT and then unwinds it so
in-flight work drains and spans are flushed before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from prometheus_client import Histogram

from mt_core import metrics
from mt_core.logging import setup_logging
from mt_core.settings import ServiceSettings
from mt_core.telemetry import telemetry

S = TypeVar("S", bound=ServiceSettings)
AppFactory = Callable[[S], AbstractAsyncContextManager[Any]]

log = logging.getLogger(__name__)


async def run(settings: S, app: AppFactory[S]) -> None:
    """Run ``app(settings)`` until a termination signal arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics.serve(settings.host, settings.metrics_port)
    async with app(settings), watching_loop(settings.loop_stall_log_ms / 1000):
        tune_gc(settings.gc_gen0_threshold)
        log.info("ready", extra={"grpc_port": settings.grpc_port})
        await stop.wait()
        log.info("stopping")
    log.info("stopped")


LOOP_LAG = Histogram(
    "event_loop_lag_seconds",
    "How late a 50 ms timer fired: how long anything ready waited for the event loop",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LOOP_TICK_S = 0.05


@contextlib.asynccontextmanager
async def watching_loop(stall_log_s: float) -> AsyncIterator[None]:
    """The event loop's lag, measured by a timer, for as long as the process serves: a stall
    of the whole process (a blocking call, a long collection, being descheduled) is a tail
    latency of every request in it, and a stall past ``stall_log_s`` is logged with its time,
    to be matched against the load's."""
    task = asyncio.create_task(_watch_loop(stall_log_s), name="loop-lag")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def thread_times_s() -> tuple[float, float] | None:
    """This thread's time on a CPU and time runnable but waiting for one (Linux's schedstat);
    None where the kernel does not tell."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as stats:
            on_cpu, waiting = stats.read().split()[:2]
        return int(on_cpu) / 1e9, int(waiting) / 1e9
    except (OSError, ValueError):
        return None


_gc_s = [0.0]  # time spent in collections since start (the hook of tune_gc adds to it)


async def _watch_loop(stall_log_s: float) -> None:
    loop = asyncio.get_running_loop()
    observe = LOOP_LAG.observe
    times, gc_s = thread_times_s(), _gc_s[0]
    while True:
        due = loop.time() + LOOP_TICK_S
        await asyncio.sleep(LOOP_TICK_S)
        lag = max(0.0, loop.time() - due)
        observe(lag)
        before, times = times, thread_times_s()
        gc_before, gc_s = gc_s, _gc_s[0]
        if lag >= stall_log_s:
            log.warning("event loop stalled", extra=_stall(lag, before, times, gc_s - gc_before))


def _stall(
    lag_s: float, before: tuple[float, float] | None, after: tuple[float, float] | None, gc_s: float
) -> dict[str, float]:
    """A stall's parts: work on the loop (of which collections), time runnable but without a
    CPU (others had it), and the rest, asleep (a blocking call, a wait for the GIL or the disk)."""
    extra = {"stall_ms": round(lag_s * 1000, 1), "gc_ms": round(gc_s * 1000, 1)}
    if before is not None and after is not None:
        extra["on_cpu_ms"] = round((after[0] - before[0]) * 1000, 1)
        extra["waiting_for_cpu_ms"] = round((after[1] - before[1]) * 1000, 1)
    return extra


def tune_gc(gen0_threshold: int) -> None:
    """Everything built during start-up lives as long as the process: freeze it out of the
    collector's scans, and collect less often. With the defaults, full collections over a
    large heap stalled requests for ~100 ms (the KV's put p99 went from ~100 ms to ~40 ms);
    Instagram tunes its Python servers the same way."""
    gc.freeze()
    gc.set_threshold(gen0_threshold, 50, 100)
    gc.callbacks.append(_time_collections())


GC_PAUSE = Histogram(
    "python_gc_pause_seconds",
    "How long the cyclic garbage collector stopped the process, by generation collected",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


def _time_collections() -> Callable[[str, dict[str, int]], None]:
    """A ``gc.callbacks`` hook timing each collection (a pause of every request in progress)."""
    started = [0.0]
    pauses = [GC_PAUSE.labels(str(generation)) for generation in range(3)]

    def hook(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pause = time.perf_counter() - started[0]
            pauses[info["generation"]].observe(pause)
            _gc_s[0] += pause

    return hook


def main(settings_cls: type[S], app: AppFactory[S]) -> None:
    """Entry point of every service's ``__main__``."""
    settings = settings_cls()
    setup_logging(settings.service_name, settings.log_level, settings.log_json)
    with telemetry(
        settings.service_name,
        settings.tracing_enabled,
        settings.trace_roots,
        settings.trace_root_names,
        settings.trace_sample_ratio,
    ):
        if settings.event_loop == "uvloop":
            import uvloop  # a dependency of the services that choose it

            uvloop.run(run(settings, app))
        else:
            asyncio.run(run(settings, app))
