"""Integration tests talk to the real stack; spans of this test process go to memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from mt_cli.kvcluster import KVCluster, manager_status
from mt_core.rpc.status import error_from_rpc
from mt_core.telemetry import instrument_libraries
from mt_kv_client import KVClient
from mt_kv_contract.errors import Moved, Refused
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="session")
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span this test process records, with the library instrumentations switched on."""
    provider = TracerProvider(resource=Resource.create({"service.name": "tests"}))
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    instrument_libraries()
    yield _EXPORTER
    provider.shutdown()


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KVCluster]:
    """A KV cluster of its own (manager and 3 replicas) for a test module."""
    kv = KVCluster(Path(tmp_path_factory.mktemp("kv")))
    try:
        await kv.start()
        yield kv
    finally:
        kv.stop()


@pytest.fixture
async def kv(cluster: KVCluster) -> AsyncIterator[KVClient]:
    async with KVClient(cluster.manager_addr) as client:
        yield client


async def write_as_is(cluster: KVCluster, shard: int, request: pb.WriteRequest) -> pb.WriteResponse:
    """``request`` as it is (its session and number too) to ``shard``'s primary of now —
    sent again if refused (a primary handed over meanwhile: a refusal did nothing)."""
    for _ in range(50):
        info = (await manager_status(cluster.manager_addr)).shards[shard]
        request.route.CopyFrom(pb.Route(shard=shard, epoch=info.epoch))
        try:
            async with grpc.aio.insecure_channel(cluster.addr(info.primary)) as chan:
                reply: pb.WriteResponse = await kv_pb2_grpc.KVStub(chan).Write(request)
                return reply
        except grpc.aio.AioRpcError as err:
            error = error_from_rpc(err)
            if not isinstance(error, Refused) or isinstance(error, Moved):
                raise
        await asyncio.sleep(0.1)
    raise AssertionError(f"shard {shard} refused the write 50 times")
