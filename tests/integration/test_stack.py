"""The local stack as `make up` runs it: every part healthy, visible and traced."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mt_cli.manifest import Manifest
from mt_cli.ports import free_port

from tests.conftest import minithreads

pytestmark = pytest.mark.usefixtures("stack")

GATEWAY = "http://127.0.0.1:8080"
ZIPKIN = "http://127.0.0.1:9411"
SERVICES = {"gateway", "users", "graph", "posts", "feed", "kv"}


async def _get(
    url: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, params=params, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def test_healthz__names_every_service_healthy() -> None:
    status, body = await _get(f"{GATEWAY}/healthz")
    assert status == 200
    assert body["status"] == "ok"
    assert body["services"] == dict.fromkeys(SERVICES, "serving")


async def test_readyz__checks_services_redis_and_kafka() -> None:
    status, body = await _get(f"{GATEWAY}/readyz")
    assert status == 200, body
    assert body["ready"] is True
    checks = body["checks"]
    assert isinstance(checks, dict)
    assert checks["redis"] == checks["kafka"] == "serving"


async def test_unknown_path__gets_the_contract_error_shape() -> None:
    status, body = await _get(f"{GATEWAY}/v1/no-such-thing")
    assert status == 404
    assert body == {"error": {"code": "not_found", "message": "Not Found"}}


async def test_kv_manager_metrics__show_each_shards_primary_and_each_replica() -> None:
    deadline = time.monotonic() + 10  # (exported once a second)
    while True:
        async with (
            aiohttp.ClientSession() as session,
            session.get("http://127.0.0.1:51060/metrics") as resp,
        ):
            text = await resp.text()
        if 'kv_replica_alive{replica="kv-1"} 1.0' in text or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert 'kv_shard_epoch{shard="0"}' in text
    assert "kv_shard_primary{" in text
    assert 'kv_replica_alive{replica="kv-1"} 1.0' in text
    assert 'kv_moves_in_progress{kind="microshard"}' in text


def test_ps_json__lists_every_process_with_pid_port_role_and_health(stack: Manifest) -> None:
    result = minithreads("ps", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == set(stack.processes)
    assert SERVICES | {"kafka", "redis", "zipkin"} <= set(rows)
    for name, row in rows.items():
        assert row["health"] == "healthy", row
        assert isinstance(row["pid"], int)
        assert row["port"] == stack.processes[name].port
        assert row["role"] in {"infra", "service", "gateway", "kv-manager", "kv-replica", "worker"}
    assert (rows["kafka"]["port"], rows["redis"]["port"], rows["zipkin"]["port"]) == (
        9092,
        6379,
        9411,
    )


async def test_gateway_request__appears_in_zipkin() -> None:
    marker = uuid.uuid4().hex
    # A trace the gateway records whatever its sample ratio: a caller's sampled traceparent.
    sampled = {"traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"}
    status, _ = await _get(f"{GATEWAY}/healthz", params={"probe": marker}, headers=sampled)
    assert status == 200
    found: list[object] = []
    for _ in range(40):  # the exporters batch; give them a few seconds
        _, services = await _get(f"{ZIPKIN}/api/v2/services")
        query = {"serviceName": "gateway", "limit": "200", "lookback": "600000"}
        _, traces = await _get(f"{ZIPKIN}/api/v2/traces", query)
        found = [s for t in traces for s in t if marker in json.dumps(s.get("tags", {}))]
        if found:
            break
        await asyncio.sleep(0.5)
    assert found, "the gateway's span for our request never reached Zipkin"
    assert "gateway" in services


MODULES = {
    "users": "mt_users",
    "graph": "mt_graph",
    "posts": "mt_posts",
    "feed": "mt_feed",
    "kv-manager": "mt_kv.manager",
    "kv-replica": "mt_kv.replica",
}


@pytest.mark.parametrize("service", sorted(MODULES))
def test_service__serves_health_and_stops_cleanly_on_sigterm(service: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "MT_HOME": str(tmp_path),
        "MT_KV_ADDR": f"127.0.0.1:{free_port()}",  # a manager nobody runs: the replica still stops
        "MT_GRPC_PORT": str(port),
        "OTEL_TRACES_EXPORTER": "none",
        "MT_LOG_JSON": "true",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", MODULES[service]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while minithreads("probe", "grpc", str(port)).returncode != 0:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "never became healthy"
            time.sleep(0.2)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert time.monotonic() - started < 10
    messages = [json.loads(line)["message"] for line in output.splitlines() if line.startswith("{")]
    assert messages[-2:] == ["gRPC stopped", "stopped"], output
