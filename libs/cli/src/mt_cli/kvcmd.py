"""``minithreads kv``: talk to the KV service of the running stack from a terminal.

  minithreads kv put KEYSPACE KEY VALUE [--ttl-ms N] [--fast-ack]
  minithreads kv get KEYSPACE KEY [--consistency strong|stale|ryw]
  minithreads kv status [--json]
  minithreads kv move (MICROSHARD | --key KEYSPACE KEY) --to SHARD [--json]
  minithreads kv bench [--vs etcd] [--json]
  minithreads kv add-replica | drain REPLICA | move-replica SHARD --from R --to R
  minithreads kv quota KEYSPACE [--ops N] [--bytes B]  # keys/s, bytes stored; 0: none
  minithreads kv split SHARD [--wait-s N]       # a new shard takes half its μshards, live

KEY is ``PARTITION/REST``: the part before the first "/" picks the μshard (keys of one
partition live together); without a "/", the whole key is the partition.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
from mt_core.errors import MinithreadsError
from mt_kv_client import Consistency, Durability, Key, KVClient
from mt_proto import kv_pb2 as pb

from mt_cli.kvcluster import manager_call, manager_status, move_microshard
from mt_cli.manifest import Manifest

CONSISTENCY = {"strong": Consistency.STRONG, "stale": Consistency.STALE, "ryw": Consistency.RYW}


def parse_key(keyspace: str, text: str) -> Key:
    partition, _, rest = text.partition("/")
    return Key(keyspace, partition.encode(), rest.encode())


def add_arguments(kv: argparse.ArgumentParser) -> None:
    kv.add_argument(
        "--addr", default="127.0.0.1:50060", help="the shard manager (default: %(default)s)"
    )
    sub = kv.add_subparsers(dest="kv_command", required=True)
    put = sub.add_parser("put", help="store a value (quorum-durable unless --fast-ack)")
    put.add_argument("keyspace")
    put.add_argument("key", help="PARTITION/REST")
    put.add_argument("value")
    put.add_argument("--ttl-ms", type=int, default=0)
    put.add_argument(
        "--fast-ack", action="store_true", help="acknowledge on enqueue at the primary"
    )
    get = sub.add_parser("get", help="read a value")
    get.add_argument("keyspace")
    get.add_argument("key", help="PARTITION/REST")
    get.add_argument("--consistency", choices=sorted(CONSISTENCY), default="strong")
    status = sub.add_parser("status", help="shards, epochs, primaries and replicas")
    status.add_argument("--json", action="store_true")
    move = sub.add_parser(
        "move",
        help="move a μshard to another shard while the cluster serves (live resharding)",
    )
    move.add_argument("microshard", nargs="?", type=int, help="the μshard's number")
    move.add_argument(
        "--key", nargs=2, metavar=("KEYSPACE", "KEY"), help="the μshard holding this key"
    )
    move.add_argument("--to", type=int, required=True, metavar="SHARD", dest="to_shard")
    move.add_argument("--wait-s", type=float, default=60.0, help="default: %(default)s")
    move.add_argument("--json", action="store_true")
    quota = sub.add_parser(
        "quota", help="set a keyspace's quotas (keys per second, bytes stored; 0: none)"
    )
    quota.add_argument("keyspace")
    quota.add_argument("--ops", type=float, metavar="N", dest="ops_s", help="default: as is")
    quota.add_argument("--bytes", type=float, metavar="B", dest="bytes", help="default: as is")
    split = sub.add_parser("split", help="split a shard: a new one takes half its μshards")
    split.add_argument("shard", type=int)
    split.add_argument("--wait-s", type=float, default=300.0, help="until done (%(default)s)")
    from mt_cli import kvbench, kvreplicas

    kvreplicas.add_arguments(sub)
    kvbench.add_arguments(
        sub.add_parser("bench", help="throughput and p99 on a fresh cluster, optionally vs etcd")
    )


async def _put(args: argparse.Namespace) -> int:
    async with KVClient(args.addr) as kv:
        durability = Durability.FAST_ACK if args.fast_ack else Durability.QUORUM
        key = parse_key(args.keyspace, args.key)
        version = await kv.put(key, args.value.encode(), ttl_ms=args.ttl_ms, durability=durability)
        token = kv.session.tokens[kv.shard_of(key)]
        print(
            json.dumps(
                {
                    "version": version,
                    "token": {"shard": token.shard, "epoch": token.epoch, "seq": token.seq},
                }
            )
        )
    return 0


async def _get(args: argparse.Namespace) -> int:
    async with KVClient(args.addr) as kv:
        item = await kv.get(parse_key(args.keyspace, args.key), CONSISTENCY[args.consistency])
    if item is None:
        print("not found", file=sys.stderr)
        return 1
    print(item.value.decode(errors="replace"))
    return 0


async def _move(args: argparse.Namespace) -> int:
    if (args.microshard is None) == (args.key is None):
        print("minithreads kv move: give a μshard or --key KEYSPACE KEY", file=sys.stderr)
        return 2
    microshard = args.microshard
    if args.key is not None:
        async with KVClient(args.addr) as kv:
            key = parse_key(*args.key)
            key.validate()
            microshard = kv.microshard_of(key)
    print(
        f"moving μshard {microshard} to shard {args.to_shard} (waiting up to {args.wait_s:g} s;"
        " Ctrl-C stops waiting, not the move)...",
        file=sys.stderr,
    )
    move = await move_microshard(args.addr, microshard, args.to_shard, args.wait_s)
    result = _move_json(move)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"μshard {move.microshard}: shard {move.from_shard} -> {move.to_shard}: {move.step}"
            f", {move.keys} keys copied ({move.delta_keys} after the fence)"
            f", keys refused for {move.fenced_ms} ms"
            + (f" (last error: {move.error})" if move.error else "")
        )
    return 0 if move.step == "done" else 1


def _move_json(m: Any) -> dict[str, object]:
    return {
        "microshard": m.microshard,
        "from": m.from_shard,
        "to": m.to_shard,
        "step": m.step,
        "keys": m.keys,
        "delta_keys": m.delta_keys,
        "fenced_ms": m.fenced_ms,
        "error": m.error,
    }


async def status_json(addr: str) -> dict[str, object]:
    reply = await manager_status(addr)
    return {
        "shards": [
            {
                "id": s.id,
                "epoch": s.epoch,
                "primary": s.primary,
                "replicas": list(s.replicas),
                "learners": list(s.learners),
            }
            for s in reply.shards
        ],
        "replicas": [
            {
                "id": r.id,
                "pid": r.pid,
                "addr": r.addr,
                "repl_addr": r.repl_addr,
                "alive": r.alive,
                "applied_seq": r.applied_seq,
                "state": r.state,
                "copies": r.shards,
                "primaries": r.primaries,
                "ops_per_s": round(r.ops_per_s, 1),
            }
            for r in reply.replicas
        ],
        "placement_settled": reply.placement_settled,
        "reconfigs": [
            {"shard": m.shard, "from": m.source, "to": m.target, "step": m.step, "error": m.error}
            for m in reply.reconfigs
        ],
        "failovers": [
            {
                "shard": f.shard,
                "epoch": f.epoch,
                "from": f.from_replica,
                "to": f.to_replica,
                "detect_ms": f.detect_ms,
            }
            for f in reply.failovers
        ],
        "moves": [_move_json(m) for m in reply.moves],
        "quotas": [_quota_json(q) for q in reply.quotas],
        "notes": list(reply.notes),
        "splits": [
            {"shard": s.shard, "new_shard": s.new_shard, "remaining": list(s.remaining)}
            for s in reply.splits
        ],
    }


def _quota_json(q: pb.QuotaUse) -> dict[str, object]:
    return {
        "keyspace": q.keyspace,
        "ops_s": q.ops_s,
        "offered_per_s": round(q.offered_per_s, 1),
        "refused_per_s": round(q.refused_per_s, 1),
        "bytes": q.bytes,
        "used_bytes": q.used_bytes,
        "full": q.full,
    }


async def _split(args: argparse.Namespace) -> int:
    split: pb.Split = await manager_call(args.addr, "SplitShard", pb.SplitRequest(shard=args.shard))
    total = len(split.remaining)
    print(
        f"kv: splitting shard {split.shard}: {total} μshards move to new shard {split.new_shard}"
        " (Ctrl-C stops waiting, not the split)",
        file=sys.stderr,
    )
    deadline = time.monotonic() + args.wait_s
    while time.monotonic() < deadline:
        status = await manager_status(args.addr)
        left = next((s.remaining for s in status.splits if s.new_shard == split.new_shard), None)
        if left is None:
            print(json.dumps({"shard": split.shard, "new_shard": split.new_shard, "moved": total}))
            return 0
        print(f"kv: {total - len(left)}/{total} moved", file=sys.stderr)
        await asyncio.sleep(2.0)
    print(f"kv: split not done after {args.wait_s:g} s (it goes on)", file=sys.stderr)
    return 1


async def _quota(args: argparse.Namespace) -> int:
    if args.ops_s is None and args.bytes is None:
        raise SystemExit("kv quota: give --ops, --bytes or both")
    now = next(
        (q for q in (await manager_status(args.addr)).quotas if q.keyspace == args.keyspace),
        pb.QuotaUse(),
    )  # the quota not given stays as it is
    ops_s = now.ops_s if args.ops_s is None else args.ops_s
    stored = now.bytes if args.bytes is None else args.bytes
    request = pb.QuotaRequest(keyspace=args.keyspace, ops_s=ops_s, bytes=stored)
    use: pb.QuotaUse = await manager_call(args.addr, "SetQuota", request)
    print(json.dumps(_quota_json(use)))
    return 0


async def _status(args: argparse.Namespace) -> int:
    status = await status_json(args.addr)
    if args.json:
        print(json.dumps(status))
        return 0
    shards: list[dict[str, Any]] = status["shards"]  # type: ignore[assignment]
    replicas: list[dict[str, Any]] = status["replicas"]  # type: ignore[assignment]
    print(f"{'SHARD':>5} {'EPOCH':>5}  PRIMARY  REPLICAS (LEARNERS)")
    for shard in shards:
        primary = shard["primary"] or "-"
        learners = f" ({','.join(shard['learners'])})" if shard["learners"] else ""
        held = ",".join(shard["replicas"]) + learners
        print(f"{shard['id']:>5} {shard['epoch']:>5}  {primary:<8} {held}")
    print(
        f"\n{'REPLICA':<8} {'PID':>8} {'ALIVE':<6} {'STATE':<9} {'COPIES':>6} {'LEADS':>5}"
        f" {'OPS/S':>7} {'APPLIED':>9}  ADDR (REPLICATION)"
    )
    for rep in replicas:
        alive, applied = str(rep["alive"]), rep["applied_seq"]
        where = f"{rep['addr']} ({rep['repl_addr'] or '-'})"
        counts = f"{rep['state']:<9} {rep['copies']:>6} {rep['primaries']:>5}"
        load = f"{rep['ops_per_s']:>7.0f} {applied:>9}"
        print(f"{rep['id']:<8} {rep['pid']:>8} {alive:<6} {counts} {load}  {where}")
    reconfigs: list[dict[str, Any]] = status["reconfigs"]  # type: ignore[assignment]
    if reconfigs:
        print(f"\n{'SHARD':>5} {'FROM':<8} {'TO':<8} STEP")
        for r in reconfigs:
            line = f"{r['shard']:>5} {r['from']:<8} {r['to']:<8} {r['step']}"
            print(f"{line}  {r['error']}".rstrip())
    quotas: list[dict[str, Any]] = status["quotas"]  # type: ignore[assignment]
    if quotas:
        head = f"{'KEYSPACE':<16} {'QUOTA/S':>9} {'OFFERED/S':>9} {'REFUSED/S':>9}"
        print(f"\n{head} {'BYTES':>12} {'QUOTA BYTES':>12}")
        for q in quotas:
            used = f"{q['offered_per_s']:>9.0f} {q['refused_per_s']:>9.0f}"
            stored = f"{q['used_bytes']:>12,} {q['bytes']:>12,.0f}" + (" full" if q["full"] else "")
            print(f"{q['keyspace']:<16} {q['ops_s']:>9.0f} {used} {stored}")
    for split in status["splits"]:  # type: ignore[attr-defined]
        left = len(split["remaining"])
        print(f"\nsplit: shard {split['shard']} -> {split['new_shard']}, {left} μshards to move")
    for note in status["notes"]:  # type: ignore[attr-defined]
        print(f"\nnote: {note}")
    if not status["placement_settled"]:
        print("\nplacement: moves under way or wanted")
    moves: list[dict[str, Any]] = status["moves"]  # type: ignore[assignment]
    if moves:
        print(f"\n{'μSHARD':>6} {'FROM':>4} {'TO':>4}  {'STEP':<6} {'KEYS':>6} {'REFUSED MS':>10}")
        for m in moves:
            refused = m["fenced_ms"] if m["step"] in ("purge", "done") else "-"
            line = f"{m['microshard']:>6} {m['from']:>4} {m['to']:>4}  {m['step']:<6}"
            print(f"{line} {m['keys']:>6} {refused:>10}  {m['error']}".rstrip())
    return 0


def run(args: argparse.Namespace, home: Path, manifest: Manifest | None = None) -> int:
    if args.kv_command == "bench":
        from mt_cli import kvbench

        return kvbench.run(args, home)
    from mt_cli import kvreplicas

    handlers: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
        "put": _put,
        "get": _get,
        "status": _status,
        "move": _move,
        "quota": _quota,
        "split": _split,
        "move-replica": kvreplicas.move_replica,
    }
    if manifest is not None:
        handlers["add-replica"] = lambda a: kvreplicas.add_replica(a, manifest)
        handlers["drain"] = lambda a: kvreplicas.drain(a, manifest)
    try:
        return asyncio.run(handlers[args.kv_command](args))
    except MinithreadsError as err:
        print(f"minithreads kv: {err.code}: {err.message}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as err:
        print(
            f"minithreads kv: {args.addr} unreachable ({err.code().name}); is the stack up?",
            file=sys.stderr,
        )
        return 1
