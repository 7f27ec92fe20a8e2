"""Wiring of the users service: what it serves and what it holds open, in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from mt_core.rpc.server import Servicer, grpc_server
from mt_jobs import JobProducer, Outbox
from mt_kv_client import KVClient
from mt_legacy import LegacyGraph
from mt_legacy.identity import Verifier
from mt_proto import users_pb2, users_pb2_grpc

from mt_users.domain import Users
from mt_users.grpc_api import UsersServicer
from mt_users.passwords import Argon2Cost, Hasher
from mt_users.settings import Settings

SERVICE = users_pb2.DESCRIPTOR.services_by_name["UsersService"].full_name


@asynccontextmanager
async def app(settings: Settings) -> AsyncIterator[None]:
    async with (
        KVClient(settings.kv_addr) as kv,
        JobProducer(settings.kafka_bootstrap, client_id="users") as producer,
        Outbox(kv, producer, owner="users", stale_after_ms=settings.outbox_stale_ms) as outbox,
    ):
        legacy = LegacyGraph(settings.legacy_seed, settings.legacy_size)
        reserve_s = settings.hash_reserve_ms / 1000
        cost = Argon2Cost(
            settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
        )
        with Hasher(cost, settings.hash_workers, reserve_s) as hasher:
            verifier = Verifier.of_home(Path(settings.home), settings.legacy_audience)
            servicer = UsersServicer(Users(settings, kv, legacy, outbox, hasher, verifier))
            add = users_pb2_grpc.add_UsersServiceServicer_to_server
            async with grpc_server(
                settings,
                [Servicer(SERVICE, lambda s: add(servicer, s))],
                watch=[kv.commit_pressure(settings.kv_commit_target_ms)],
            ):
                yield
