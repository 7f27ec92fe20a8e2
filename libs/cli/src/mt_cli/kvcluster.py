"""A KV cluster of its own (shard manager + replicas) as local processes, in a folder of its
own on ports of its own: for tests that kill and pause replicas, and for benchmarks, without
touching the stack `minithreads up` runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from mt_core.rpc.client import call
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc

from mt_cli.ports import free_port
from mt_cli.probes import probe


async def manager_status(addr: str, timeout_s: float = 3.0) -> pb.StatusResponse:
    """The shard manager's view: shards, replicas, recent failovers."""
    async with grpc.aio.insecure_channel(addr) as chan:
        stub = kv_pb2_grpc.ShardManagerStub(chan)
        return await stub.Status(pb.StatusRequest(), timeout=timeout_s)


async def move_microshard(
    addr: str, microshard: int, to_shard: int, wait_s: float = 60.0
) -> pb.MicroshardMove:
    """Ask the shard manager to move a μshard (live resharding); its state once done, or
    after ``wait_s`` (it goes on regardless)."""
    async with grpc.aio.insecure_channel(addr) as chan:
        stub = kv_pb2_grpc.ShardManagerStub(chan)
        request = pb.MoveRequest(
            microshard=microshard, to_shard=to_shard, wait_ms=int(wait_s * 1000)
        )
        # Refusals (a bad μshard or shard) as our error classes, not as an unreachable server.
        return await call(stub.MoveMicroshard(request, timeout=wait_s + 5))


async def manager_call(addr: str, method: str, request: object, timeout_s: float = 10.0) -> Any:
    """One ShardManager RPC (``AddReplica``, ``DrainReplica``...); refusals raise as our
    error classes, not as an unreachable server."""
    async with grpc.aio.insecure_channel(addr) as chan:
        stub = kv_pb2_grpc.ShardManagerStub(chan)
        return await call(getattr(stub, method)(request, timeout=timeout_s))


def drained(status: pb.StatusResponse, name: str) -> bool:
    """Whether replica ``name`` holds no copy any more after a drain."""
    return any(r.id == name and r.state == "drained" for r in status.replicas)


@dataclass
class KVCluster:
    home: Path
    replicas: int = 3
    shards: int = 16
    extra_env: dict[str, str] = field(default_factory=dict)
    manager_port: int = field(default_factory=free_port)
    ports: dict[str, int] = field(default_factory=dict)  # replica -> gRPC port
    # replica -> its replication link's port; unset: the OS picks one (peers learn it through
    # the manager), so no port chosen here can be taken by someone else's connection meanwhile
    repl_ports: dict[str, int] = field(default_factory=dict)
    store_urls: dict[str, str] = field(default_factory=dict)  # replica -> MT_STORE_URL
    peer_addrs: dict[str, str] = field(default_factory=dict)  # replica -> MT_PEER_ADDRS
    peer_repl_addrs: dict[str, str] = field(default_factory=dict)  # -> MT_PEER_REPL_ADDRS
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i in range(1, self.replicas + 1):
            self.ports.setdefault(f"kv-{i}", free_port())

    @property
    def manager_addr(self) -> str:
        return f"127.0.0.1:{self.manager_port}"

    def addr(self, replica: str) -> str:
        return f"127.0.0.1:{self.ports[replica]}"

    def _env(self, port: int, **more: str) -> dict[str, str]:
        return {
            **os.environ,
            "MT_HOME": str(self.home),
            "MT_GRPC_PORT": str(port),
            "MT_KV_ADDR": self.manager_addr,
            "MT_KV_REPLICAS": ",".join(f"{r}={self.addr(r)}" for r in self.ports),
            "MT_SHARDS": str(self.shards),
            "OTEL_TRACES_EXPORTER": "none",
            **self.extra_env,
            **more,
        }

    def _spawn(self, name: str, module: str, env: dict[str, str]) -> None:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{name}.log").open("ab") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    async def start(self, timeout_s: float = 60) -> None:
        self.start_manager()
        for name in self.ports:
            self.start_replica(name)
        await self.wait_healthy(timeout_s)

    def start_manager(self) -> None:
        self._spawn("kv", "mt_kv.manager", self._env(self.manager_port))

    def start_replica(self, name: str) -> None:
        more = {"MT_REPLICA_ID": name, "MT_REPL_PORT": str(self.repl_ports.get(name, 0))}
        if name in self.store_urls:
            more["MT_STORE_URL"] = self.store_urls[name]
        if name in self.peer_addrs:
            more["MT_PEER_ADDRS"] = self.peer_addrs[name]
        if name in self.peer_repl_addrs:
            more["MT_PEER_REPL_ADDRS"] = self.peer_repl_addrs[name]
        self._spawn(name, "mt_kv.replica", self._env(self.ports[name], **more))

    async def add_replica(self) -> str:
        """One more replica process: named, registered with the manager, started. It holds
        nothing until placement moves shard copies to it."""
        name = f"kv-{max(int(r.rsplit('-', 1)[1]) for r in self.ports) + 1}"
        self.ports[name] = free_port()
        request = pb.AddReplicaRequest(id=name, addr=self.addr(name))
        await manager_call(self.manager_addr, "AddReplica", request)
        self.start_replica(name)
        return name

    async def drain(self, name: str, timeout_s: float = 120) -> None:
        """Empty replica ``name`` (its copies move to the others), then stop it."""
        await manager_call(self.manager_addr, "DrainReplica", pb.DrainRequest(id=name))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if drained(await self.status(), name):
                break
            await asyncio.sleep(0.2)
        else:
            raise TimeoutError(f"{name} not drained in {timeout_s}s")
        proc = self.procs.pop(name)
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)  # (a caller's event loop goes on meanwhile)

    async def wait_rejoined(self, name: str, timeout_s: float = 60) -> None:
        """Until the manager hears from the (re)started process ``name`` and every shard has
        a live primary. Health alone can be stale right after a kill: the manager counts a
        replica alive until its heartbeats have been missing for the failover timeout."""
        deadline = time.monotonic() + timeout_s
        pid = self.procs[name].pid
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited: {self.log(name)[-2000:]}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                replicas = {r.id: r for r in (await self.status()).replicas}
                if name in replicas and replicas[name].pid == pid and replicas[name].alive:
                    break
            await asyncio.sleep(0.2)
        else:
            raise TimeoutError(f"{name} did not rejoin in {timeout_s}s:\n{self.log(name)[-2000:]}")
        await self.wait_healthy(max(1.0, deadline - time.monotonic()))

    async def wait_healthy(self, timeout_s: float = 60) -> None:
        """Until the manager reports every shard with a live primary."""
        deadline = time.monotonic() + timeout_s
        from mt_core.rpc.health import check

        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.log(name)[-2000:]}")
            if await check(self.manager_addr, "minithreads.kv.v1.ShardManager") == "serving":
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"KV cluster not healthy in {timeout_s}s:\n{self.log('kv')[-2000:]}")

    async def status(self) -> pb.StatusResponse:
        return await manager_status(self.manager_addr)

    async def replica_up(self, name: str) -> bool:
        return await probe("grpc", self.ports[name])

    def log(self, name: str) -> str:
        return (self.home / "logs" / f"{name}.log").read_text(errors="replace")

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.procs[name].send_signal(sig)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
