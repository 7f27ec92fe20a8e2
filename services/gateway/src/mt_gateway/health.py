"""/healthz and /readyz: how the gateway and everything behind it are doing.

/healthz is liveness: 200 while the gateway runs, with each service's gRPC health by name.
/readyz is readiness: 200 only when every service and the gateway's own dependencies (Redis,
Kafka) answer; otherwise 503 with the failing checks, so a load balancer stops sending traffic.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient
from mt_core.rpc.health import check
from redis.asyncio import Redis

from mt_gateway.settings import Settings

# What "healthy" means per service: the process, except for the KV, where it is the cluster
# (the shard manager reports its service NOT_SERVING while any shard lacks a live primary).
HEALTH_SERVICE = {"kv": "minithreads.kv.v1.ShardManager"}


async def services_health(settings: Settings) -> dict[str, str]:
    addrs = settings.service_addrs()
    timeout_s = settings.health_timeout_ms / 1000
    states = await asyncio.gather(
        *(check(addr, HEALTH_SERVICE.get(name, ""), timeout_s) for name, addr in addrs.items())
    )
    return dict(zip(addrs, states, strict=True))


async def redis_health(redis: Redis) -> str:
    try:
        await redis.ping()
    except Exception:  # any failure means "not ready", whatever the client raised
        return "unreachable"
    return "serving"


async def kafka_health(settings: Settings) -> str:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=settings.health_timeout_ms
    )
    try:
        await asyncio.wait_for(admin.start(), settings.health_timeout_ms / 1000)
        await asyncio.wait_for(admin.list_topics(), settings.health_timeout_ms / 1000)
    except Exception:  # any failure means "not ready", whatever aiokafka raised
        return "unreachable"
    finally:
        await admin.close()
    return "serving"


def routes(settings: Settings, redis: Redis) -> web.RouteTableDef:
    table = web.RouteTableDef()

    @table.get("/healthz")
    async def healthz(_: web.Request) -> web.Response:
        # The gateway answering is its own health; the others are asked.
        services = {"gateway": "serving", **await services_health(settings)}
        status = "ok" if all(s == "serving" for s in services.values()) else "degraded"
        return web.json_response({"status": status, "services": services})

    @table.get("/readyz")
    async def readyz(_: web.Request) -> web.Response:
        services, redis_state, kafka_state = await asyncio.gather(
            services_health(settings), redis_health(redis), kafka_health(settings)
        )
        checks = {**services, "redis": redis_state, "kafka": kafka_state}
        ready = all(state == "serving" for state in checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    return table
