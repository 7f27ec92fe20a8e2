"""How fast the async platform copies legacy graphs, and how its AIMD limiter reacts to a slow KV.

Against the running stack (`make up`): N fresh legacy accounts with large legacy followings
sign up and start their imports at once; the probe prints the edges copied per second and,
every half second, the import kind's AIMD limit (from the workers' stats in Redis). With
``--slow-kv FROM:TO`` it slows the KV between those seconds by SIGSTOPping its three replicas
85 ms of every 100 ms (and always resumes them), to watch the limiter back off and recover.

    .venv/bin/python loadtest/async_probe.py --imports 24 --min-degree 1400 --slow-kv 4:16

Ctrl-C stops it (the replicas are resumed; the imports go on in the stack).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import openloop as ol
import redis
from mt_jobs.control import STATS_KEY
from mt_legacy import LegacyGraph

BASE = "http://127.0.0.1:8080"
CLI = str(Path(sys.executable).parent / "minithreads")
GRAPH = LegacyGraph()


def kv_pids() -> list[int]:
    rows = json.loads(subprocess.run([CLI, "ps", "--json"], capture_output=True, text=True).stdout)
    return [int(r["pid"]) for r in rows if r["name"] in {"kv-1", "kv-2", "kv-3"} and r["pid"]]


def slow_kv(
    pids: list[int], start: float, from_s: float, to_s: float, stop: threading.Event
) -> None:
    """Run in a thread: the KV gets 15 ms of every 100 ms between from_s and to_s."""
    while not stop.is_set() and time.monotonic() - start < from_s:
        time.sleep(0.01)
    try:
        while not stop.is_set() and time.monotonic() - start < to_s:
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            time.sleep(0.085)
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            time.sleep(0.015)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def import_limit(r: redis.Redis) -> tuple[int, int]:
    fields: dict[Any, Any] = r.hgetall(STATS_KEY)
    stats = [json.loads(v) for f, v in fields.items() if bytes(f).startswith(b"import:")]
    return sum(s["limit"] for s in stats), sum(s["in_flight"] for s in stats)


async def signup_importers(http: aiohttp.ClientSession, count: int, min_degree: int) -> list[str]:
    tokens: list[str] = []
    while len(tokens) < count:
        n = random.randint(1, GRAPH.size)
        if GRAPH.out_degree(n) < min_degree:
            continue
        status, data = await ol.legacy_signup(http, BASE, n)
        if status == 201:
            tokens.append(data["token"])
    return tokens


async def progress(
    http: aiohttp.ClientSession, imports: list[tuple[str, str]]
) -> tuple[int, int, int]:
    done = total = finished = 0
    for import_id, token in imports:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{BASE}/v1/me/imports/{import_id}", headers=headers) as resp:
            state: dict[str, Any] = await resp.json()
        done, total = done + state["done"], total + state["total"]
        finished += state["state"] == "done"
    return done, total, finished


async def main(args: argparse.Namespace) -> None:
    r = redis.Redis()
    async with aiohttp.ClientSession() as http:
        print(f"signing up {args.imports} legacy accounts following >= {args.min_degree}...")
        tokens = await signup_importers(http, args.imports, args.min_degree)
        imports = []
        for token in tokens:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(f"{BASE}/v1/me/imports", json={}, headers=headers) as resp:
                imports.append(((await resp.json())["id"], token))
        start, stop = time.monotonic(), threading.Event()
        window = tuple(float(x) for x in args.slow_kv.split(":")) if args.slow_kv else (1e9, 1e9)
        if args.slow_kv:
            threading.Thread(
                target=slow_kv, args=(kv_pids(), start, window[0], window[1], stop), daemon=True
            ).start()
        try:
            last_report = 0.0
            while True:
                now = time.monotonic() - start
                limit, in_flight = await asyncio.to_thread(import_limit, r)
                slowed = "KV SLOWED" if window[0] <= now < window[1] else "         "
                print(
                    f"t={now:5.1f}s {slowed} import AIMD limit={limit:3d} in flight={in_flight:3d}"
                )
                if now - last_report >= 2 or now < 0.6:
                    last_report = now
                    done, total, finished = await progress(http, imports)
                    print(f"        edges {done}/{total}, imports done {finished}/{len(imports)}")
                    if finished == len(imports):
                        elapsed = time.monotonic() - start
                        rate = total / elapsed
                        print(f"ALL DONE: {total} edges in {elapsed:.1f} s = {rate:.0f} edges/s")
                        return
                await asyncio.sleep(0.5)
        finally:
            stop.set()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imports", type=int, default=8)
    parser.add_argument("--min-degree", type=int, default=1000)
    parser.add_argument("--slow-kv", default="", help="FROM:TO seconds, e.g. 4:16")
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        print("stopped (the imports go on in the stack)")
