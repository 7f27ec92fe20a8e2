"""Wiring of the graph service: what it serves and what it holds open, in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from mt_core.rpc.server import Servicer, grpc_server
from mt_jobs import JobProducer, Outbox
from mt_kv_client import KVClient
from mt_legacy import LegacyGraph
from mt_legacy.identity import Provider, ensure_secret
from mt_proto import graph_pb2, graph_pb2_grpc

from mt_graph.domain import Graph
from mt_graph.grpc_api import GraphServicer
from mt_graph.imports import Legacy
from mt_graph.settings import Settings

SERVICE = graph_pb2.DESCRIPTOR.services_by_name["GraphService"].full_name


@asynccontextmanager
async def app(settings: Settings) -> AsyncIterator[None]:
    async with (
        KVClient(settings.kv_addr) as kv,
        JobProducer(settings.kafka_bootstrap, client_id="graph") as producer,
        Outbox(kv, producer, owner="graph", stale_after_ms=settings.outbox_stale_ms) as outbox,
    ):
        graph = Graph(kv, outbox)
        provider = Provider(ensure_secret(Path(settings.home)))
        legacy = Legacy(
            settings,
            kv,
            graph,
            LegacyGraph(settings.legacy_seed, settings.legacy_size),
            outbox,
            provider,
        )
        servicer = GraphServicer(graph, legacy)
        add = graph_pb2_grpc.add_GraphServiceServicer_to_server
        async with grpc_server(
            settings,
            [Servicer(SERVICE, lambda s: add(servicer, s))],
            watch=[kv.commit_pressure(settings.kv_commit_target_ms)],
        ):
            yield
