"""``minithreads kv``: talk to the KV service of the running stack from a terminal.

  minithreads kv put KEYSPACE KEY VALUE [--ttl-ms N] [--fast-ack]
  minithreads kv get KEYSPACE KEY [--consistency strong|stale|ryw]
  minithreads kv status [--json]
  minithreads kv bench [--vs etcd] [--json]

KEY is ``PARTITION/REST``: the part before the first "/" picks the μshard (keys of one
partition live together); without a "/", the whole key is the partition.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import grpc
from mt_core.errors import MinithreadsError
from mt_kv_client import Consistency, Durability, Key, KVClient

from mt_cli.kvcluster import manager_status

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
    from mt_cli import kvbench

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


async def status_json(addr: str) -> dict[str, object]:
    reply = await manager_status(addr)
    return {
        "shards": [
            {"id": s.id, "epoch": s.epoch, "primary": s.primary, "replicas": list(s.replicas)}
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
            }
            for r in reply.replicas
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
    }


async def _status(args: argparse.Namespace) -> int:
    status = await status_json(args.addr)
    if args.json:
        print(json.dumps(status))
        return 0
    shards: list[dict[str, Any]] = status["shards"]  # type: ignore[assignment]
    replicas: list[dict[str, Any]] = status["replicas"]  # type: ignore[assignment]
    print(f"{'SHARD':>5} {'EPOCH':>5}  PRIMARY  REPLICAS")
    for shard in shards:
        primary = shard["primary"] or "-"
        print(f"{shard['id']:>5} {shard['epoch']:>5}  {primary:<8} {','.join(shard['replicas'])}")
    print(f"\n{'REPLICA':<8} {'PID':>8} {'ALIVE':<6} {'APPLIED':>9}  ADDR (REPLICATION)")
    for rep in replicas:
        alive, applied = str(rep["alive"]), rep["applied_seq"]
        where = f"{rep['addr']} ({rep['repl_addr'] or '-'})"
        print(f"{rep['id']:<8} {rep['pid']:>8} {alive:<6} {applied:>9}  {where}")
    return 0


def run(args: argparse.Namespace, home: Path) -> int:
    if args.kv_command == "bench":
        from mt_cli import kvbench

        return kvbench.run(args, home)
    handler = {"put": _put, "get": _get, "status": _status}[args.kv_command]
    try:
        return asyncio.run(handler(args))
    except MinithreadsError as err:
        print(f"minithreads kv: {err.code}: {err.message}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as err:
        print(
            f"minithreads kv: {args.addr} unreachable ({err.code().name}); is the stack up?",
            file=sys.stderr,
        )
        return 1
