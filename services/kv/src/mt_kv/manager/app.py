"""Wiring of the shard manager process.

Its overall gRPC health is the process's; the ShardManager service's health says whether the
cluster is whole (every shard has a live primary) — that is what the gateway's /healthz shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

from grpc_health.v1 import health_pb2
from mt_core.rpc.server import Servicer, grpc_server
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc

from mt_kv.manager.autosplit import AutoSplit
from mt_kv.manager.core import ShardManager
from mt_kv.manager.grpc_api import ShardManagerServicer
from mt_kv.manager.hotspots import Hotspots, shard_loads
from mt_kv.manager.metrics import Exporter
from mt_kv.manager.mover import GrpcCalls, Mover
from mt_kv.manager.quotas import parse as parse_quotas
from mt_kv.settings import ManagerSettings

SERVICE = pb.DESCRIPTOR.services_by_name["ShardManager"].full_name
log = logging.getLogger(__name__)
EXPORT_EVERY = 5  # watch turns (0.2 s each) between metric exports


def _moving(manager: ShardManager) -> bool:
    """μshards or shard copies are moving: what load reports say is about to change."""
    return any(m.step != "done" for m in manager.moves.values()) or not manager.placement_settled()


def balance_load(manager: ShardManager, mover: Mover, hotspots: Hotspots) -> None:
    """Move hot μshards off a primary carrying more than its part (``hotspots.py``)."""
    now = manager.now()
    primaries = {s.id: s.primary for s in manager.shards if s.primary and manager.alive(s.primary)}
    busy = _moving(manager)
    for move in hotspots.plan(shard_loads(manager.served, primaries), busy=busy, now=now):
        log.info("hot μshard moved", extra=asdict(move))
        mover.request(move.microshard, move.to_shard)
    manager.notes = hotspots.notes


def split_when_due(manager: ShardManager, mover: Mover, autosplit: AutoSplit) -> None:
    """Split a shard that has been too large or too hot for a while (``autosplit.py``)."""
    busy = bool(manager.splits) or _moving(manager)
    shard = autosplit.plan(manager.shard_sizes(), busy=busy, now=manager.now())
    if shard is None:
        return
    try:
        split = manager.split(shard)
    except ValueError as err:  # e.g. fewer live replicas than copies just now
        log.warning("not splitting", extra={"shard": shard, "error": str(err)})
        return
    log.info("splitting by itself", extra={"shard": shard, "new_shard": split.new_shard})
    mover.wake()


@asynccontextmanager
async def app(settings: ManagerSettings) -> AsyncIterator[None]:
    home = Path(settings.home)
    manager = ShardManager(
        replicas=settings.replica_addrs(),
        shards=settings.shards,
        microshards=settings.microshards,
        state_path=Path(settings.state_path or home / "data" / "kv" / "manager.json"),
        failover_timeout_ms=settings.failover_timeout_ms,
        lease_ms=settings.lease_ms,
        quotas=parse_quotas(settings.kv_quotas),
    )
    calls = GrpcCalls()
    mover = Mover(manager, calls)
    mount = Servicer(
        SERVICE,
        lambda s: kv_pb2_grpc.add_ShardManagerServicer_to_server(
            ShardManagerServicer(manager, mover), s
        ),
    )
    async with grpc_server(settings, [mount]) as running:
        hotspots = Hotspots()
        autosplit = AutoSplit(settings.kv_split_items, settings.kv_split_keys_per_s)
        exporter = Exporter()

        async def watch() -> None:
            # Heartbeats drive failover; this also catches a cluster that went silent entirely.
            for turn in itertools.count():
                manager.tick()
                if turn % EXPORT_EVERY == 0:
                    exporter.export(manager.status())
                if settings.hot_moves:
                    balance_load(manager, mover, hotspots)
                split_when_due(manager, mover, autosplit)
                ok = manager.healthy()
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await running.health.set(SERVICE, status)
                await asyncio.sleep(0.2)

        tasks = [
            asyncio.create_task(watch(), name="kv-manager-watch"),
            asyncio.create_task(mover.run(), name="kv-manager-mover"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await calls.close()
