"""Start, watch and stop the local stack as plain processes, from the manifest.

``up`` starts what is not already running, level by level in dependency order, each level in
parallel, and returns once every process passes its health check; ``down`` stops everything
it started (SIGTERM to the process group, SIGKILL after the process's stop timeout) and checks
the ports are free. What is running is recorded in ``$MT_HOME/run/state.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from mt_cli import ports, promtargets
from mt_cli.manifest import Manifest, Process
from mt_cli.probes import port_open, probe

Say = Callable[[str], None]


class LaunchError(Exception):
    """A process could not be started or did not become healthy."""


@dataclass
class Running:
    name: str
    pid: int
    port: int
    role: str
    log: str
    started_at: float


def run_dir(manifest: Manifest) -> Path:
    return manifest.home / "run"


def log_path(manifest: Manifest, name: str) -> Path:
    return run_dir(manifest) / "logs" / f"{name}.log"


def _state_file(manifest: Manifest) -> Path:
    return run_dir(manifest) / "state.json"


def read_state(manifest: Manifest) -> dict[str, Running]:
    path = _state_file(manifest)
    if not path.exists():
        return {}
    return {name: Running(**entry) for name, entry in json.loads(path.read_text()).items()}


def write_state(manifest: Manifest, state: dict[str, Running]) -> None:
    path = _state_file(manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({n: asdict(r) for n, r in sorted(state.items())}, indent=2))
    tmp.replace(path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not alive.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _spawn(manifest: Manifest, proc: Process) -> Running:
    log = log_path(manifest, proc.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **manifest.env, **proc.env, "MT_HOME": str(manifest.home)}
    env.setdefault("OTEL_SERVICE_NAME", proc.name)
    with log.open("ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {proc.name} ---\n".encode())
        out.flush()
        child = subprocess.Popen(
            proc.command,
            cwd=manifest.repo,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: down stops it and its children
        )
    if proc.nice:
        _prioritise(child.pid, proc.nice)
    promtargets.write(manifest, proc)
    return Running(proc.name, child.pid, proc.port, proc.role, str(log), time.time())


def start_extra(manifest: Manifest, proc: Process) -> Running:
    """Start a process the manifest does not name (a KV replica added at run time), recorded
    with the others so that ``down`` stops it too."""
    state = read_state(manifest)
    if proc.name in state and alive(state[proc.name].pid):
        raise LaunchError(f"{proc.name} is running already (pid {state[proc.name].pid})")
    run = _spawn(manifest, proc)
    state[proc.name] = run
    write_state(manifest, state)
    return run


async def stop_extra(manifest: Manifest, name: str, say: Say) -> None:
    """Stop one process started by :func:`start_extra` (or any by name)."""
    state = read_state(manifest)
    if name in state:
        await _stop_one(10.0, state.pop(name), say)
        write_state(manifest, state)
    promtargets.remove(manifest, name)


def _prioritise(pid: int, nice: int) -> None:
    """Best effort (raising a priority needs root): the process's own nice, and its session's
    scheduling group's, which is what the kernel weighs against the other sessions."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, nice)


def tail(path: str | Path, lines: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def _await_healthy(proc: Process, run: Running, say: Say) -> None:
    started = time.monotonic()
    deadline = started + proc.start_timeout_s
    while time.monotonic() < deadline:
        if not alive(run.pid):
            raise LaunchError(f"{proc.name} exited during start-up; its log ends:\n{tail(run.log)}")
        if await probe(proc.health, proc.port):
            took = time.monotonic() - started
            say(f"  {proc.name:<9} healthy in {took:4.1f}s  pid {run.pid}  :{proc.port}")
            return
        await asyncio.sleep(0.25)
    raise LaunchError(
        f"{proc.name} not healthy after {proc.start_timeout_s:.0f}s; its log ends:\n{tail(run.log)}"
    )


def _fixed_ports(manifest: Manifest, names: set[str]) -> set[int]:
    """The ports ``names`` listen on: their own, and any other an ``*_PORT`` setting names."""
    found: set[int] = set()
    for name in names:
        proc = manifest.processes[name]
        found.add(proc.port)
        found.update(int(v) for k, v in proc.env.items() if k.endswith("_PORT") and v.isdigit())
    return found


async def up(manifest: Manifest, names: list[str] | None, say: Say) -> dict[str, Running]:
    """Start ``names`` (default: all) and their dependencies; return what is running."""
    wanted = manifest.closure(names) if names else set(manifest.processes)
    ports.reserve(_fixed_ports(manifest, wanted))
    state = {n: r for n, r in read_state(manifest).items() if alive(r.pid)}
    write_state(manifest, state)
    for level in manifest.levels(wanted):
        pending: list[tuple[Process, Running]] = []
        for proc in level:
            if proc.name in state:
                if await probe(proc.health, proc.port):
                    pid = state[proc.name].pid
                    say(f"  {proc.name:<9} already running  pid {pid}  :{proc.port}")
                    promtargets.write(manifest, proc)  # (a stack started before they existed)
                    continue
                pending.append((proc, state[proc.name]))  # started, still coming up
                continue
            if await port_open(proc.port):
                raise LaunchError(
                    f"port {proc.port} ({proc.name}) is taken by a process minithreads did not "
                    "start; stop it first (e.g. `ss -ltnp | grep :%d`)" % proc.port
                )
            say(f"  {proc.name:<9} starting: {' '.join(proc.command[-2:])}")
            state[proc.name] = _spawn(manifest, proc)
            write_state(manifest, state)
            pending.append((proc, state[proc.name]))
        await asyncio.gather(*(_await_healthy(p, r, say) for p, r in pending))
        manager = next((p for p in manifest.processes.values() if p.role == "kv-manager"), None)
        if manager is not None and any(p.role == "kv-replica" for p, _ in pending):
            await _await_kv_settled(f"127.0.0.1:{manager.port}", say)
    return state


KV_SETTLE_TIMEOUT_S = 30.0


async def _await_kv_settled(manager_addr: str, say: Say) -> None:
    """Wait (bounded) until the KV's primaries are placed for good. A replica that reported
    late leaves its share of primaries on the others, and each rebalancing move fences its
    shard: writes in flight then answer 503 (outcome unknown) — right after start-up, that
    was the first requests of whoever used the stack."""
    from mt_cli.kvcluster import manager_status  # grpc: imported only when a KV is started

    started = time.monotonic()
    told = False
    while time.monotonic() - started < KV_SETTLE_TIMEOUT_S:
        with contextlib.suppress(Exception):  # not answering yet counts as not settled
            if (await manager_status(manager_addr)).placement_settled:
                if told:
                    say(f"  kv        primaries placed in {time.monotonic() - started:4.1f}s")
                return
        if not told:
            say("  kv        waiting for the shard manager to place primaries (Ctrl-C stops)...")
            told = True
        await asyncio.sleep(0.5)
    say(f"  kv        primaries still moving after {KV_SETTLE_TIMEOUT_S:.0f}s; going on")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _wait_exit(pid: int, timeout_s: float) -> bool:
    """Poll until ``pid`` is gone (a foreign process gives no event to wait on)."""
    for _ in range(max(1, int(timeout_s / 0.1))):
        if not alive(pid):
            return True
        await asyncio.sleep(0.1)
    return not alive(pid)


async def _stop_one(proc_timeout_s: float, run: Running, say: Say) -> None:
    if not alive(run.pid):
        return
    _signal_group(run.pid, signal.SIGTERM)
    if not await _wait_exit(run.pid, proc_timeout_s):
        say(f"  {run.name:<9} did not stop in {proc_timeout_s:.0f}s: SIGKILL")
        _signal_group(run.pid, signal.SIGKILL)
        await _wait_exit(run.pid, 10.0)
    # The group may hold helpers (a wrapper's children); make sure none lingers.
    _signal_group(run.pid, signal.SIGKILL)


async def down(manifest: Manifest, names: list[str] | None, say: Say) -> None:
    """Stop ``names`` (default: everything started), dependents first."""
    state = read_state(manifest)
    targets = set(names) if names else set(state)
    if names:  # stopping a process stops what depends on it too
        targets = {n for n in state if n in targets or manifest.closure([n]) & targets}
    for level in reversed(manifest.levels(set(manifest.processes))):
        runs = [state[p.name] for p in level if p.name in targets and p.name in state]
        await asyncio.gather(
            *(_stop_one(manifest.processes[r.name].stop_timeout_s, r, say) for r in runs)
        )
        for run in runs:
            say(f"  {run.name:<9} stopped")
            state.pop(run.name)
            promtargets.remove(manifest, run.name)
    # Anything in the state the manifest no longer names still gets stopped.
    for name in [n for n in targets if n in state]:
        await _stop_one(10.0, state.pop(name), say)
        promtargets.remove(manifest, name)
    write_state(manifest, state)
    busy = [p for p in manifest.processes.values() if p.name in targets and await port_open(p.port)]
    if busy:
        raise LaunchError(
            "still listening after down: " + ", ".join(f"{p.name}:{p.port}" for p in busy)
        )


async def ps(manifest: Manifest) -> list[dict[str, object]]:
    """Every manifest process: name, pid (None if not running), port, role and health."""
    state = read_state(manifest)

    async def row(proc: Process) -> dict[str, object]:
        run = state.get(proc.name)
        running = run is not None and alive(run.pid)
        healthy = running and await probe(proc.health, proc.port)
        health = "healthy" if healthy else ("unhealthy" if running else "stopped")
        return {
            "name": proc.name,
            "pid": run.pid if running and run else None,
            "port": proc.port,
            "role": proc.role,
            "health": health,
        }

    return list(await asyncio.gather(*(row(p) for p in manifest.processes.values())))
