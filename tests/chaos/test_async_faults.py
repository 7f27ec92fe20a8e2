"""The async platform under real faults: kill -9 the workers mid-import, and kill -9 the Kafka
broker mid-import. After things settle, no follow or pending follow is missing or doubled,
and every count equals the truth."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from typing import Any

import pytest
from mt_legacy import LegacyGraph

from tests.api import Api, eventually
from tests.chaos.conftest import Tally
from tests.conftest import minithreads

pytestmark = pytest.mark.chaos
GRAPH = LegacyGraph()


def _pid(name: str) -> int:
    rows = json.loads(minithreads("ps", "--json", timeout_s=60).stdout)
    pid = next(r["pid"] for r in rows if r["name"] == name)
    assert pid, f"{name} is not running"
    return int(pid)


def _restart(name: str) -> None:
    result = minithreads("up", name, "--no-install", timeout_s=180)
    assert result.returncode == 0, result.stdout + result.stderr


async def _big_importer(api: Api) -> tuple[str, dict[str, Any], str]:
    """A fresh legacy account following 400+ accounts, 15 of which are on the app."""
    while True:
        n = random.randint(100_000, GRAPH.size)
        if GRAPH.out_degree(n) < 400:
            continue
        followees = [str(f) for f in GRAPH.following(str(n))]
        for legacy_id in random.sample(followees, 15):
            await api.signup_legacy(legacy_id)
        made = await api.signup_legacy(str(n))
        if made is not None:
            return str(n), *made


async def _import_through(api: Api, fault: Any) -> None:
    legacy_id, user, token = await _big_importer(api)
    started = await api.call("POST", "/v1/me/imports", {}, token=token)
    assert started.status == 202
    import_id = started.body["id"]

    async def partway() -> bool:
        state = (await api.call("GET", f"/v1/me/imports/{import_id}", token=token)).body
        return bool(0 < state["done"] < state["total"])

    await eventually(partway, what="the import under way")
    await fault()

    state = await api.wait_import(token, import_id)
    listing = await api.all_pages(f"/v1/legacy/accounts/{legacy_id}/following", limit=100)
    on_app = {f["legacy_id"] for f in listing if f["on_app"]}
    assert state["done"] == state["total"] == len(listing)
    assert state["pending"] == len(listing) - len(on_app)  # no pending follow missing or doubled
    following = await api.all_pages(f"/v1/users/{user['handle']}/following", limit=100)
    me = (await api.call("GET", "/v1/me", token=token)).body
    assert len(following) == len({u["id"] for u in following}) == len(on_app)
    assert me["following_count"] == len(on_app)  # the count equals the truth


@pytest.mark.timeout(600)
async def test_workers_kill9_mid_import__nothing_missing_or_doubled(api: Api, tally: Tally) -> None:
    tally.kills += 1

    async def kill_workers() -> None:
        os.killpg(_pid("workers"), signal.SIGKILL)
        await asyncio.sleep(1)
        await asyncio.to_thread(_restart, "workers")

    await _import_through(api, kill_workers)


@pytest.mark.timeout(600)
async def test_broker_kill9_mid_import__nothing_missing_or_doubled(api: Api, tally: Tally) -> None:
    tally.kills += 1

    async def kill_broker() -> None:
        os.killpg(_pid("kafka"), signal.SIGKILL)
        await asyncio.sleep(2)
        await asyncio.to_thread(_restart, "kafka")

    await _import_through(api, kill_broker)
