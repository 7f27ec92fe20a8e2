"""``minithreads kv bench``: throughput and p99 of our KV service, optionally against etcd.

Starts a fresh KV cluster (shard manager + 3 replicas) and, with ``--vs etcd``, a fresh
3-member etcd cluster, each in a temporary folder under ``$MT_HOME/bench``, and drives both
with the same client shape: ``--concurrency`` caller tasks in one asyncio process sharing one
client, each looping over random keys with ``--value-bytes``-byte values.

Phases, in this order (alternating the systems so that a burst of background load on a noisy
machine hurts both alike): kv put, etcd put, kv get, etcd get; ``--rounds N`` repeats the
sequence and reports the median of each number. Each phase is a short warm-up (not measured)
and then ``--duration-s`` seconds; an op counts if it started inside the measured window.

* put: quorum-durable on both sides (ours: ``Durability.QUORUM``; etcd: a Raft commit, which
  is on a majority's WAL, fsynced, before the reply).
* get: linearizable on both sides, of keys written in that system's put phase (ours:
  ``Consistency.STRONG``, the primary under its lease; etcd: ``serializable=False``, a
  ReadIndex round through the leader).

The etcd client connects to the leader (no forwarding hop), the fairest analogue of our
client, which routes each request straight to the shard's primary.

Output: one JSON line on stdout (see :func:`run_bench`); progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mt_core.service import tune_gc
from mt_kv_client import Consistency, Durability, Key, KVClient

from mt_cli.kvcluster import KVCluster
from mt_cli.manifest import find_repo
from mt_cli.ports import free_port

KEYSPACE = "bench"
WARMUP_S = 1.0
ETCD_START_TIMEOUT_S = 30.0
ETCD_OP_TIMEOUT_S = 5

# ------------------------------------------------------------------------------ measuring


@dataclass
class Phase:
    """One measured phase: latencies (s) of the ops that started in the window."""

    duration_s: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: BaseException | None = None

    @property
    def ops_s(self) -> float:
        return len(self.latencies) / self.duration_s

    @property
    def p99_ms(self) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] * 1000  # nearest rank


async def drive(
    op: Callable[[random.Random, bytes], Awaitable[None]],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    value_bytes: int,
) -> Phase:
    """``concurrency`` callers, each calling ``op`` back to back for warm-up + duration."""
    phase = Phase(duration_s)
    start = time.perf_counter() + warmup_s
    end = start + duration_s

    async def caller(seed: int) -> None:
        rng = random.Random(seed)
        value = rng.randbytes(value_bytes)
        while (t0 := time.perf_counter()) < end:
            try:
                await op(rng, value)
            except Exception as err:
                if t0 >= start:
                    phase.errors += 1
                    phase.first_error = phase.first_error or err
                await asyncio.sleep(0)  # an op that fails without awaiting must not starve
                continue
            if t0 >= start:
                phase.latencies.append(time.perf_counter() - t0)

    async with asyncio.TaskGroup() as tasks:
        for _ in range(concurrency):
            tasks.create_task(caller(random.getrandbits(64)))
    return phase


class Target:
    """One system under test: put and linearizable get of ``bytes`` keys (one shared client)."""

    name: str

    def __init__(self) -> None:
        self.written: list[bytes] = []  # partitions written in the put phases

    async def put(self, partition: bytes, value: bytes) -> None:
        raise NotImplementedError

    async def get(self, partition: bytes) -> None:
        raise NotImplementedError

    async def put_op(self, rng: random.Random, value: bytes) -> None:
        partition = rng.randbytes(8).hex().encode()  # a fresh key on a random shard
        await self.put(partition, value)
        self.written.append(partition)

    async def get_op(self, rng: random.Random, value: bytes) -> None:
        await self.get(rng.choice(self.written))


class KVTarget(Target):
    name = "kv"

    def __init__(self, client: KVClient) -> None:
        super().__init__()
        self.client = client

    async def put(self, partition: bytes, value: bytes) -> None:
        await self.client.put(Key(KEYSPACE, partition, b"k"), value, durability=Durability.QUORUM)

    async def get(self, partition: bytes) -> None:
        item = await self.client.get(Key(KEYSPACE, partition, b"k"), Consistency.STRONG)
        if item is None:
            raise LookupError(f"kv: acknowledged key {partition!r} not found")


class EtcdTarget(Target):
    name = "etcd"

    def __init__(self, client: Any) -> None:  # an aetcd.Client (untyped)
        super().__init__()
        self.client = client

    async def put(self, partition: bytes, value: bytes) -> None:
        await self.client.put(b"bench/" + partition + b"/k", value)

    async def get(self, partition: bytes) -> None:
        # serializable=False (aetcd's default, spelled out): a linearizable read.
        item = await self.client.get(b"bench/" + partition + b"/k", serializable=False)
        if item is None:
            raise LookupError(f"etcd: acknowledged key {partition!r} not found")


# ------------------------------------------------------------------------------ etcd


@dataclass
class EtcdCluster:
    """Three ``infra/bin/etcd-run`` members on free loopback ports, data under ``home``."""

    home: Path
    names: tuple[str, ...] = ("e1", "e2", "e3")
    client_ports: dict[str, int] = field(default_factory=dict)
    peer_ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.names:
            self.client_ports[name] = free_port()
            self.peer_ports[name] = free_port()

    def log(self, name: str) -> str:
        path = self.home / "logs" / f"etcd-{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def start(self, timeout_s: float = ETCD_START_TIMEOUT_S) -> None:
        if shutil.which("etcd") is None:
            raise RuntimeError("etcd is not installed: run infra/install.sh")
        for name in self.names:
            self._spawn(name)
        await self._wait_ready(timeout_s)

    def _spawn(self, name: str) -> None:
        initial = ",".join(f"{n}=http://127.0.0.1:{self.peer_ports[n]}" for n in self.names)
        env = {
            **os.environ,
            "MT_HOME": str(self.home),
            "MT_DATA": str(self.home / "data" / f"etcd-{name}"),
            "ETCD_NAME": name,
            "ETCD_CLIENT_PORT": str(self.client_ports[name]),
            "ETCD_PEER_PORT": str(self.peer_ports[name]),
            "ETCD_INITIAL_CLUSTER": initial,
            "ETCD_INITIAL_CLUSTER_STATE": "new",
            "ETCD_INITIAL_CLUSTER_TOKEN": f"bench-{self.home.parent.name}",
        }
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        with (self.home / "logs" / f"etcd-{name}.log").open("ab") as out:
            self.procs[name] = subprocess.Popen(
                [str(find_repo() / "infra" / "bin" / "etcd-run")],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def _wait_ready(self, timeout_s: float) -> None:
        """Until every member serves a linearizable read of a committed write."""
        import aetcd

        deadline = time.monotonic() + timeout_s
        for name in self.names:
            async with aetcd.Client(port=self.client_ports[name], timeout=1) as client:
                while True:
                    for other, proc in self.procs.items():
                        if proc.poll() is not None:
                            raise RuntimeError(f"etcd {other} exited: {self.log(other)[-2000:]}")
                    try:
                        await client.put(b"bench/ready/" + name.encode(), b"1")
                        if await client.get(b"bench/ready/" + name.encode()) is not None:
                            break
                    except Exception as err:
                        if time.monotonic() > deadline:
                            raise TimeoutError(
                                f"etcd {name} not ready in {timeout_s}s ({err!r}):\n"
                                f"{self.log(name)[-2000:]}"
                            ) from None
                    await asyncio.sleep(0.2)

    async def leader_port(self) -> int:
        """The client port of the current leader (else the first member's)."""
        import aetcd

        first = self.client_ports[self.names[0]]
        async with aetcd.Client(port=first, timeout=3) as client:
            status = await client.status()
        urls: list[str] = list(status.leader.client_urls) if status.leader is not None else []
        for url in urls:
            port = int(url.rsplit(":", 1)[1].rstrip("/"))
            if port in self.client_ports.values():
                return port
        return first

    def stop(self) -> None:
        """SIGKILL: the data is thrown away, and on SIGTERM each member first tries to hand
        its leadership over (seconds, when all three stop at once)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait()


# ------------------------------------------------------------------------------ the run


def _check_alive(kv_procs: dict[str, subprocess.Popen[bytes]], etcd: EtcdCluster | None) -> None:
    procs = {**kv_procs, **({f"etcd {n}": p for n, p in etcd.procs.items()} if etcd else {})}
    dead = {name: proc.returncode for name, proc in procs.items() if proc.poll() is not None}
    if dead:
        raise RuntimeError(f"exited during the benchmark (name: exit code): {dead}")


def _summary(phases: list[Phase]) -> tuple[float, float]:
    """The median ops/s and median p99 (ms) over the rounds."""
    return (
        statistics.median(p.ops_s for p in phases),
        statistics.median(p.p99_ms for p in phases),
    )


async def run_bench(
    *,
    vs_etcd: bool,
    duration_s: float,
    concurrency: int,
    value_bytes: int,
    home: Path,
    progress: Callable[[str], None],
    rounds: int = 1,
    warmup_s: float = WARMUP_S,
) -> dict[str, Any]:
    """Run the benchmark; returns ``{"kv": {...}, "etcd": {...}, "ratio": {...}, "machine":
    {...}, "settings": {...}}`` ("etcd" and "ratio" only if ``vs_etcd``). Each side holds
    ``put_ops_s``, ``get_ops_s`` (integers), ``put_p99_ms``, ``get_p99_ms`` (0.1 ms), and
    ``errors`` when any op failed in a measured window (failed ops are not counted)."""
    loadavg = os.getloadavg()[0]  # before we add any load of our own
    folder = home / "bench" / time.strftime("%Y%m%d-%H%M%S") / str(os.getpid())
    folder.mkdir(parents=True, exist_ok=True)
    kv_cluster = KVCluster(folder / "kv")
    etcd_cluster = EtcdCluster(folder / "etcd") if vs_etcd else None
    stack = contextlib.AsyncExitStack()  # the clients
    try:
        progress(f"bench: data in {folder} (Ctrl-C stops everything and removes it)")
        progress("bench: starting KV cluster (shard manager + 3 replicas)...")
        await kv_cluster.start()
        kv = await stack.enter_async_context(KVClient(kv_cluster.manager_addr))
        targets: list[Target] = [KVTarget(kv)]
        if etcd_cluster is not None:
            import aetcd

            progress("bench: starting etcd cluster (3 members)...")
            await etcd_cluster.start()
            leader = await etcd_cluster.leader_port()
            client = await stack.enter_async_context(
                aetcd.Client(port=leader, timeout=ETCD_OP_TIMEOUT_S)
            )
            targets.append(EtcdTarget(client))
        results: dict[tuple[str, str], list[Phase]] = {}
        for round_ in range(1, rounds + 1):
            for kind in ("put", "get"):
                for target in targets:
                    of = f" (round {round_}/{rounds})" if rounds > 1 else ""
                    progress(
                        f"bench: {target.name} {kind} {duration_s:g}s, {concurrency} callers{of}..."
                    )
                    phase = await drive(
                        target.put_op if kind == "put" else target.get_op,
                        concurrency=concurrency,
                        duration_s=duration_s,
                        warmup_s=warmup_s,
                        value_bytes=value_bytes,
                    )
                    failed = f", {phase.errors} failed ({phase.first_error!r})"
                    progress(
                        f"bench: {target.name} {kind}: {phase.ops_s:,.0f} ops/s, "
                        f"p99 {phase.p99_ms:.1f} ms{failed if phase.errors else ''}"
                    )
                    _check_alive(kv_cluster.procs, etcd_cluster)
                    if not phase.latencies:
                        raise RuntimeError(
                            f"{target.name} {kind}: no op succeeded in the measured window"
                            f" (first error: {phase.first_error!r})"
                        )
                    results.setdefault((target.name, kind), []).append(phase)
    finally:
        progress("bench: stopping clusters and removing data...")
        try:
            with contextlib.suppress(Exception):
                await stack.aclose()
        finally:
            try:
                if etcd_cluster is not None:
                    etcd_cluster.stop()
            finally:
                for proc in kv_cluster.procs.values():  # SIGKILL: its data is thrown away, and
                    if proc.poll() is None:  # after a Ctrl-C a graceful stop can take seconds
                        proc.kill()
                kv_cluster.stop()
                shutil.rmtree(folder, ignore_errors=True)
                with contextlib.suppress(OSError):
                    folder.parent.rmdir()  # the timestamp folder, unless another run shares it
                    folder.parent.parent.rmdir()  # bench/, unless other runs are in it

    out: dict[str, Any] = {}
    for target in targets:
        side: dict[str, Any] = {}
        errors = 0
        for kind in ("put", "get"):
            ops_s, p99_ms = _summary(results[target.name, kind])
            side[f"{kind}_ops_s"] = round(ops_s)
            side[f"{kind}_p99_ms"] = round(p99_ms, 1)
            errors += sum(p.errors for p in results[target.name, kind])
        out[target.name] = {
            k: side[k] for k in ("put_ops_s", "get_ops_s", "put_p99_ms", "get_p99_ms")
        }
        if errors:
            out[target.name]["errors"] = errors
    if vs_etcd:
        out["ratio"] = {
            kind: round(out["kv"][f"{kind}_ops_s"] / max(out["etcd"][f"{kind}_ops_s"], 1), 2)
            for kind in ("put", "get")
        }
    out["machine"] = {"cores": os.cpu_count() or 0, "loadavg_1m": round(loadavg, 2)}
    out["settings"] = {
        "duration_s": duration_s,
        "concurrency": concurrency,
        "value_bytes": value_bytes,
    }
    if rounds > 1:
        out["settings"]["rounds"] = rounds
    return out


# ------------------------------------------------------------------------------ the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vs", choices=["etcd"], default=None, help="also run a 3-member etcd cluster, alike"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="no summary table on stderr (the JSON line is always on stdout)",
    )
    parser.add_argument("--duration-s", type=float, default=10.0, help="per phase (%(default)s)")
    parser.add_argument("--concurrency", type=int, default=64, help="callers (%(default)s)")
    parser.add_argument("--value-bytes", type=int, default=100, help="(%(default)s)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the phases, report medians (%(default)s)"
    )


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _table(result: dict[str, Any]) -> str:
    lines = [f"{'':<6} {'put ops/s':>10} {'put p99':>9} {'get ops/s':>10} {'get p99':>9}"]
    for name in ("kv", "etcd"):
        if name in result:
            s = result[name]
            lines.append(
                f"{name:<6} {s['put_ops_s']:>10,} {s['put_p99_ms']:>6.1f} ms"
                f" {s['get_ops_s']:>10,} {s['get_p99_ms']:>6.1f} ms"
            )
    if "ratio" in result:
        r = result["ratio"]
        lines.append(f"kv/etcd: put x{r['put']}, get x{r['get']}")
    m = result["machine"]
    lines.append(f"machine: {m['cores']} cores, load {m['loadavg_1m']} before the run")
    return "\n".join(lines)


def run(args: argparse.Namespace, home: Path) -> int:
    """Progress (and, without --json, a summary table) on stderr; one JSON line on stdout."""
    tune_gc(50_000)  # the driver is a long-lived asyncio client too; the same for both systems
    try:
        result = asyncio.run(
            run_bench(
                vs_etcd=args.vs == "etcd",
                duration_s=args.duration_s,
                concurrency=args.concurrency,
                value_bytes=args.value_bytes,
                home=home,
                progress=_say,
                rounds=args.rounds,  # kvcmd.py defines no --rounds
            )
        )
    except KeyboardInterrupt:
        _say("bench: interrupted; everything it started is stopped")
        return 130
    except (RuntimeError, TimeoutError) as err:
        _say(f"minithreads kv bench: {err}")
        return 1
    if not args.json:
        _say(_table(result))
    print(json.dumps(result), flush=True)
    return 0
