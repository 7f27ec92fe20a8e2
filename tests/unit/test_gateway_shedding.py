"""Load shedding: past the in-flight bound a request gets 503 + Retry-After at once."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from mt_gateway.limits import shedding_middleware
from mt_gateway.middleware import errors_middleware


async def test_shedding__refuses_beyond_the_bound_and_recovers() -> None:
    release = asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[errors_middleware, shedding_middleware(2)])
    app.router.add_get("/v1/slow", slow)
    app.router.add_get("/healthz", slow)
    async with TestClient(TestServer(app)) as client:
        held = [asyncio.create_task(client.get("/v1/slow")) for _ in range(2)]
        await asyncio.sleep(0.1)
        shed = await client.get("/v1/slow")
        assert shed.status == 503
        assert shed.headers["Retry-After"] == "1"
        assert (await shed.json())["error"]["code"] == "overloaded"
        # Health checks are never shed: an orchestrator must still see the process alive.
        health = asyncio.create_task(client.get("/healthz"))
        await asyncio.sleep(0.1)
        release.set()
        assert (await health).status == 200
        assert [(await r).status for r in held] == [200, 200]
        assert (await client.get("/v1/slow")).status == 200
