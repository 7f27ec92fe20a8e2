"""The control room's data is the operator's alone; Prometheus stays on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mt_core.operator import ensure_token

from tests.api import BASE, Api

pytestmark = pytest.mark.e2e

HOME = Path(os.environ.get("MT_HOME", Path(__file__).resolve().parents[2] / ".local"))


async def test_control_api__is_for_the_operator_only(api: Api) -> None:
    _, user_token = await api.signup("notop")
    operator = ensure_token(HOME)
    for path in ("/control/api/now", "/control/api/series?names=signups", "/control/api/links"):
        nobody = await api.call("GET", path)
        assert (nobody.status, nobody.code) == (401, "operator_required"), path
        user = await api.call("GET", path, token=user_token)
        assert (user.status, user.code) == (403, "not_operator"), path
        wrong = await api.call("GET", path, token=operator[::-1])
        assert (wrong.status, wrong.code) == (401, "operator_required"), path
        assert (await api.call("GET", path, token=operator)).status == 200, path


async def test_control_api__answers_named_queries_only(api: Api) -> None:
    operator = ensure_token(HOME)
    reply = await api.call("GET", "/control/api/series?names=signups,p99&minutes=5", token=operator)
    assert reply.status == 200
    assert set(reply.body["series"]) == {"signups", "p99"}
    free = await api.call("GET", "/control/api/series?names=up", token=operator)
    assert (free.status, free.code) == (400, "unknown_query")
    now = await api.call("GET", "/control/api/now", token=operator)
    shards = {v["metric"]["shard"] for v in now.body["now"]["primary"]}
    assert len(shards) >= 16, now.body["now"]["primary"]  # every shard has its primary


def _listening_on(port: int) -> list[str]:
    """The addresses (hex, as the kernel lists them) of TCP sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


async def test_prometheus__listens_on_loopback_only(api: Api) -> None:
    ready = await api.http.get("http://127.0.0.1:9090/-/ready")
    assert ready.status == 200
    assert _listening_on(9090) == ["0100007F"]  # 127.0.0.1, nothing else
    page = await api.http.get(f"{BASE}/control")
    assert page.status == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
