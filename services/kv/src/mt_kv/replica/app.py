"""Wiring of a replica process: store, replica, its gRPC surfaces, its replication link and the
heartbeat to the manager."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from mt_core.rpc.server import Servicer, grpc_server
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc

from mt_kv.replica import link as replication_link
from mt_kv.replica.core import Replica
from mt_kv.replica.grpc_api import KVServicer, ReplicationServicer
from mt_kv.replica.tracing import observe_quotas
from mt_kv.settings import ReplicaSettings
from mt_kv.storage.store import Store

log = logging.getLogger(__name__)


async def heartbeats(replica: Replica, settings: ReplicaSettings, repl_addr: str) -> None:
    """Report progress to the shard manager and follow the assignment it answers with."""
    async with grpc.aio.insecure_channel(settings.kv_addr) as chan:
        stub = kv_pb2_grpc.ShardManagerStub(chan)
        warned = False
        while True:
            load = replica.quotas.load(replica.stored_bytes())
            request = pb.HeartbeatRequest(
                replica_id=replica.id,
                addr=settings.addr(),
                repl_addr=repl_addr,
                pid=os.getpid(),
                shards=replica.progress(),
                load=load,
                shard_load=replica.served.report(),
                incarnation=replica.incarnation,
            )
            try:
                reply = await stub.Heartbeat(request, timeout=1.0)
                replica.assign(reply.shards, reply.lease_ms, dict(reply.repl_addrs))
                replica.quotas.set_shares(reply.quota_ops)
                replica.quotas.full = frozenset(reply.bytes_full)
                replica.served.microshards = reply.microshards
                observe_quotas(load, reply.quota_ops)
                warned = False
            except grpc.aio.AioRpcError as err:
                if not warned:
                    log.warning("shard manager unreachable", extra={"error": err.code().name})
                    warned = True
            with contextlib.suppress(TimeoutError):  # (or sooner: a handover to report)
                await asyncio.wait_for(replica.report_soon.wait(), settings.heartbeat_ms / 1000)
            replica.report_soon.clear()


@asynccontextmanager
async def app(settings: ReplicaSettings) -> AsyncIterator[None]:
    store = Store(settings.store(), settings.log_store_url)
    await store.open()
    replica = Replica(settings, store)
    await replica.load()

    servicers = [
        Servicer(
            pb.DESCRIPTOR.services_by_name["KV"].full_name,
            lambda s: kv_pb2_grpc.add_KVServicer_to_server(KVServicer(replica), s),
        ),
        Servicer(
            pb.DESCRIPTOR.services_by_name["Replication"].full_name,
            lambda s: kv_pb2_grpc.add_ReplicationServicer_to_server(
                ReplicationServicer(replica), s
            ),
        ),
    ]
    link_server = await replication_link.serve(
        settings.host, settings.repl_port, replica.append_batch
    )
    repl_addr = settings.repl_addr(link_server.sockets[0].getsockname()[1])
    log.info("replication link listening", extra={"address": repl_addr})
    try:
        async with grpc_server(settings, servicers):
            replica.start()
            beat = asyncio.create_task(
                heartbeats(replica, settings, repl_addr), name="kv-heartbeat"
            )
            try:
                yield
            finally:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
                await replica.stop()
    finally:
        link_server.close()
        await store.close()
