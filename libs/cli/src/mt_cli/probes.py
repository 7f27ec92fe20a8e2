"""Health probes named by the manifest: is this process ready to be depended on?"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from mt_core.rpc.health import check as grpc_check

# A broker still starting makes aiokafka log every refused connection; the probe retries anyway.
logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


async def _redis(port: int, timeout_s: float) -> bool:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout_s)
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), timeout_s)).startswith(b"+PONG")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _kafka(port: int, timeout_s: float) -> bool:
    # A broker that accepts TCP may still be electing its controller; a metadata answer
    # with a live controller is what producers and consumers need.
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        return True
    finally:
        await admin.close()


async def _http(port: int, path: str, timeout_s: float) -> bool:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status == 200


async def probe(kind: str, port: int, timeout_s: float = 2.0) -> bool:
    """True when the process answers its health check; never raises."""
    try:
        if kind == "redis":
            return await _redis(port, timeout_s)
        if kind == "kafka":
            return await _kafka(port, timeout_s)
        if kind == "grpc":
            return await grpc_check(f"127.0.0.1:{port}", "", timeout_s) == "serving"
        if kind.startswith("http:"):
            return await _http(port, kind.removeprefix("http:"), timeout_s)
        if kind == "tcp":
            _, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout_s
            )
            writer.close()
            return True
    except (OSError, TimeoutError, aiohttp.ClientError):
        return False
    except Exception:  # a probe must never take the launcher down; a failure means "not yet"
        return False
    raise ValueError(f"unknown health check {kind!r}")


async def port_open(port: int, timeout_s: float = 0.5) -> bool:
    """Whether something listens on 127.0.0.1:``port``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True
