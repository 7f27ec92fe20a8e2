"""The async platform through the REST API: fan-out, imports with pending follows, a pending
followee joining later, and a celebrity's join applying its pending follows exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time

import pytest

from tests.api import Api, Joined, eventually
from tests.conftest import minithreads
from tests.legacy import GRAPH, small_followers_of


async def test_fanout__a_post_reaches_an_active_followers_feed(api: Api) -> None:
    author, ta = await api.signup()
    _, reader = await api.signup()
    await api.call("PUT", f"/v1/me/following/{author['handle']}", token=reader)
    assert (await api.call("GET", "/v1/feed", token=reader)).status == 200  # now active
    post = await api.post(ta, "fanned out")

    async def arrived() -> bool:
        feed = await api.call("GET", "/v1/feed", token=reader)
        return post["id"] in [p["id"] for p in feed.body["items"]]

    await eventually(arrived, what="the post in the follower's feed")
    # A delete takes it out again.
    assert (await api.call("DELETE", f"/v1/posts/{post['id']}", token=ta)).status == 204
    feed = await api.call("GET", "/v1/feed", token=reader)
    assert post["id"] not in [p["id"] for p in feed.body["items"]]


async def test_import__pending_followee_joining_later_is_followed(api: Api) -> None:
    for _ in range(20):
        importer = str(random.randint(200_000, 999_999))
        followees = [str(n) for n in GRAPH.following(importer)]
        made = await api.signup_legacy(importer)
        if made is not None:
            break
    assert made is not None
    user, token = made
    started = await api.call("POST", "/v1/me/imports", {}, token=token)
    state = await api.wait_import(token, started.body["id"])
    before = (await api.call("GET", "/v1/me", token=token)).body["following_count"]
    assert state["pending"] == state["total"] - before
    # A followee that was pending joins: the importer now follows it, counted once.
    listing = await api.all_pages(f"/v1/legacy/accounts/{importer}/following", limit=100)
    pending = [f["legacy_id"] for f in listing if not f["on_app"]]
    joined = None
    for legacy_id in pending:
        joined = await api.signup_legacy(legacy_id)
        if joined is not None:
            break
    assert joined is not None
    newcomer, _ = joined

    async def followed() -> bool:
        me = (await api.call("GET", "/v1/me", token=token)).body
        return bool(me["following_count"] == before + 1)

    await eventually(followed, what="the pending follow applied on join")
    following = await api.all_pages(f"/v1/users/{user['handle']}/following", limit=100)
    assert newcomer["id"] in [u["id"] for u in following]
    assert len(following) == before + 1

    async def counted() -> bool:  # the newcomer's side, mirrored by the same join step
        reply = await api.call("GET", f"/v1/users/{newcomer['handle']}")
        return bool(reply.body["followers_count"] >= 1)

    await eventually(counted, what="the newcomer's follower counted")
    assert followees  # the importer had a legacy following to copy


async def _on_app(api: Api, follower: str, legacy_id: str) -> bool:
    listing = await api.all_pages(f"/v1/legacy/accounts/{follower}/following", limit=100)
    return any(f["on_app"] for f in listing if f["legacy_id"] == legacy_id)


@pytest.mark.timeout(900)  # a thousand signups and imports on two cores, then the join
async def test_celebrity_join__applies_thousands_of_pending_follows_exactly(api: Api) -> None:
    wanted = int(os.environ.get("MT_E2E_CELEBRITY_FANS", "1000"))
    for celebrity in range(1, 7):  # the most followed legacy accounts, not yet on the app
        importers = small_followers_of(celebrity, wanted * 3)
        if not await _on_app(api, importers[0], str(celebrity)):
            break
    else:
        raise AssertionError("legacy celebrities 1-6 all joined in earlier runs: reset .local/data")
    gate = asyncio.Semaphore(16)

    async def importer(legacy_id: str) -> Joined | None:
        async with gate:
            return await api.join_and_start_import(legacy_id)

    started = time.monotonic()
    joined: list[Joined] = []
    while len(joined) < wanted and importers:  # some may be linked already by earlier runs
        batch, importers = importers[: wanted - len(joined)], importers[wanted - len(joined) :]
        async with asyncio.TaskGroup() as group:  # a failure stops the others, too
            tasks = [group.create_task(importer(i)) for i in batch]
        joined += [f for f in (t.result() for t in tasks) if f]
    assert len(joined) >= wanted, len(joined)
    signed_up = time.monotonic()
    await api.wait_imports(joined)
    fans = [(j.user, j.token) for j in joined]
    print(
        f"{len(fans)} signups in {signed_up - started:.1f} s, "
        f"their imports done {time.monotonic() - signed_up:.1f} s later"
    )
    made = await api.signup_legacy(str(celebrity))
    assert made is not None
    star, _ = made

    seen: list[int] = []

    async def converged() -> bool:
        count = (await api.call("GET", f"/v1/users/{star['handle']}")).body["followers_count"]
        seen.append(count)
        return bool(count >= len(fans))

    joined_at = time.monotonic()
    try:  # once a second, as the app shows progress: a faster poll is foreground of its own
        await eventually(converged, timeout_s=300, interval_s=1.0, what="the join applied")
    except AssertionError as err:
        progress = seen[:: max(1, len(seen) // 10)] + seen[-1:]
        raise AssertionError(
            f"{err}; followers over time {progress}; {await _join_stats()}"
        ) from None
    print(f"join applied {len(fans)} pending follows in {time.monotonic() - joined_at:.1f} s")
    await eventually(_settled, timeout_s=300, what="the async platform to go idle")
    followers = await api.all_pages(f"/v1/users/{star['handle']}/followers", limit=100)
    count = (await api.call("GET", f"/v1/users/{star['handle']}")).body["followers_count"]
    assert count == len(followers)  # the count equals the truth
    assert {u["id"] for u, _ in fans} <= {u["id"] for u in followers}
    assert len({u["id"] for u in followers}) == len(followers)
    for fan, token in random.sample(fans, 20):  # and each fan's side counts it once
        me = (await api.call("GET", "/v1/me", token=token)).body
        following = await api.all_pages(f"/v1/users/{fan['handle']}/following", limit=100)
        assert me["following_count"] == len(following)
        assert star["id"] in [u["id"] for u in following]


async def _join_stats() -> str:
    result = await asyncio.to_thread(minithreads, "jobs", "status", "--json", timeout_s=30)
    return f"join: {json.loads(result.stdout)['kinds'].get('join')}"


async def _settled() -> bool:
    """Idle: no kind has lag, queued or in-flight work, twice in a row a second apart (the
    join chain may still be running on pending follows left by earlier runs)."""
    for attempt in range(2):
        result = await asyncio.to_thread(minithreads, "jobs", "status", "--json", timeout_s=30)
        kinds = json.loads(result.stdout)["kinds"]
        if any(k["lag"] or k["in_flight"] or k.get("queued", 0) for k in kinds.values()):
            return False
        if attempt == 0:
            await asyncio.sleep(1)
    return True


def test_jobs_status__lists_every_kind() -> None:
    result = minithreads("jobs", "status", "--json", timeout_s=30)
    assert result.returncode == 0, result.stderr
    kinds = json.loads(result.stdout)["kinds"]
    assert {"fanout", "follow", "notify", "import", "join"} <= set(kinds)
    assert all(k["limit"] >= 1 for k in kinds.values())
