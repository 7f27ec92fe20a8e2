"""``minithreads kv add-replica | drain | move-replica``: grow and shrink the running KV.

  minithreads kv add-replica [--wait-s N]     # one more replica process; placement fills it
  minithreads kv drain REPLICA [--wait-s N]   # its copies move away, then it stops
  minithreads kv move-replica SHARD --from REPLICA --to REPLICA

A replica added here is started like the stack's own (``kv-1``'s command and environment,
ports of its own) and recorded with them, so ``minithreads down`` stops it too.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
import sys
import time

from mt_proto import kv_pb2 as pb

from mt_cli import launcher
from mt_cli.kvcluster import drained, manager_call, manager_status
from mt_cli.manifest import Manifest
from mt_cli.ports import free_port

TEMPLATE = "kv-1"  # the stack's replica a new one is started like


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add = sub.add_parser("add-replica", help="start one more replica; placement moves copies to it")
    add.add_argument("--wait-s", type=float, default=120.0, help="until settled (%(default)s)")
    drain = sub.add_parser("drain", help="move a replica's copies away, then stop it")
    drain.add_argument("replica")
    drain.add_argument("--wait-s", type=float, default=300.0, help="until drained (%(default)s)")
    move = sub.add_parser("move-replica", help="move one shard's copy to another replica")
    move.add_argument("shard", type=int)
    move.add_argument("--from", dest="source", required=True, metavar="REPLICA")
    move.add_argument("--to", dest="target", required=True, metavar="REPLICA")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _next_name(manifest: Manifest) -> str:
    names = [*manifest.processes, *launcher.read_state(manifest)]
    numbers = [int(m.group(1)) for n in names if (m := re.fullmatch(r"kv-(\d+)", n))]
    return f"kv-{max(numbers, default=0) + 1}"


async def add_replica(args: argparse.Namespace, manifest: Manifest) -> int:
    name, port = _next_name(manifest), free_port()
    template = manifest.processes[TEMPLATE]
    env = {
        **template.env,
        "MT_GRPC_PORT": str(port),
        "MT_REPL_PORT": str(free_port()),
        "MT_METRICS_PORT": str(free_port()),
        "MT_REPLICA_ID": name,
    }
    proc = dataclasses.replace(template, name=name, port=port, env=env)
    await manager_call(
        args.addr, "AddReplica", pb.AddReplicaRequest(id=name, addr=f"127.0.0.1:{port}")
    )
    run = launcher.start_extra(manifest, proc)
    _say(f"kv: {name} started (pid {run.pid}, port {port}, log {run.log}); placing copies on it")
    _say("kv: (Ctrl-C stops waiting, not the placement; `minithreads kv status` shows it)")
    return await _until(args, lambda s: _settled_with(s, name), f"{name} holds its share")


async def drain(args: argparse.Namespace, manifest: Manifest) -> int:
    await manager_call(args.addr, "DrainReplica", pb.DrainRequest(id=args.replica))
    _say(f"kv: draining {args.replica} (Ctrl-C stops waiting, not the drain)")
    code = await _until(args, lambda s: drained(s, args.replica), f"{args.replica} is drained")
    if code == 0:
        await launcher.stop_extra(manifest, args.replica, _say)
        _say(f"kv: {args.replica} stopped")
    return code


async def move_replica(args: argparse.Namespace) -> int:
    request = pb.ReplicaMoveRequest(shard=args.shard, source=args.source, target=args.target)
    move = await manager_call(args.addr, "MoveReplica", request)
    assert isinstance(move, pb.ReplicaMove)
    print(f"shard {move.shard}: {move.source} -> {move.target}: {move.step}")
    return 0


def _settled_with(status: pb.StatusResponse, name: str) -> bool:
    return status.placement_settled and any(name in s.replicas for s in status.shards)


async def _until(args: argparse.Namespace, done: object, what: str) -> int:
    assert callable(done)
    deadline = time.monotonic() + args.wait_s
    shown = ""
    while time.monotonic() < deadline:
        status = await manager_status(args.addr)
        if done(status):
            _say(f"kv: {what}")
            return 0
        steps = ", ".join(
            f"{m.shard}:{m.source}->{m.target} {m.step}"
            for m in status.reconfigs
            if m.step not in ("done", "abandoned")
        )
        if steps != shown:
            _say(f"kv: moving {steps or '(primaries)'}")
            shown = steps
        await asyncio.sleep(0.5)
    _say(f"kv: not yet after {args.wait_s:g} s ({what}); it goes on")
    return 1
