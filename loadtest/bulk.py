"""``make bulk``: how fast the bulk paths apply follows — a celebrity's join and imports of
followees already on the app — on this tree and (``--base REV``) a base revision, each on a
fresh stack of its own, with the invariants checked afterwards.

    .venv/bin/python loadtest/bulk.py [--base REV] [--fans 10000]

1. A population: the legacy followees of enough long-tail legacy accounts (the *importers*) to
   make ``--fans`` accounts, signed up linked to their legacy accounts (password hashing made
   cheap for the seeding, as in ``make cost``).
2. The join: each of them has a pending follow of a legacy celebrity not on the app (the row an
   import leaves, written into the KV directly: both revisions lay it out alike); the
   celebrity signs up, and its followers_count is read every half second until every pending
   follow is applied.
3. The imports: the importers sign up and import at once; nearly all their followees are on the
   app. Follows applied: the sum of their following_count, read every half second.
4. Invariants: the celebrity's count equals its list equals the fans; a sample of fans follow
   it, once; no pending row left; each importer follows exactly its followees on the app.

Prints applied follows per second (overall, and between 10% and 90% done) per path and side;
writes ``loadtest/reports/<UTC ts>/bulk.json``. Progress on stderr; Ctrl-C stops the stacks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import cost
from mt_kv_client import Key, KVClient
from mt_legacy import LegacyGraph
from mt_legacy.identity import credential, ensure_secret

REPO = Path(__file__).resolve().parent.parent
BASE_URL = cost.BASE_URL
GRAPH = LegacyGraph()
PASSWORD = "bulk-password"  # noqa: S105 - the simulated users' password
POLL_S = 0.5


def say(line: str) -> None:
    print(f"bulk: {line}", file=sys.stderr, flush=True)


@dataclass
class Population:
    importers: list[int]
    fans: list[int]  # legacy accounts signed up (the importers' followees)
    celebrity: int

    @staticmethod
    def pick(wanted: int, seed: int) -> Population:
        rng = random.Random(seed)
        importers: list[int] = []
        fans: dict[int, None] = {}
        while len(fans) < wanted:
            n = rng.randint(500_000, GRAPH.size)
            importers.append(n)
            fans.update(dict.fromkeys(f for f in GRAPH.following(str(n)) if f >= 1_000))
        for n in importers:
            fans.pop(n, None)
        return Population(importers, list(fans), celebrity=100 + rng.randint(0, 99))


@dataclass
class Side:
    """One stack under test, and how it signs a legacy account up."""

    side: cost.Side
    provider: bool = False
    secret: bytes = b""
    measured: dict[str, Any] = field(default_factory=dict)

    async def signup(self, driver: cost.Driver, legacy_id: int) -> tuple[int, Any]:
        if not self.provider:  # the base of "cheaper actions": a legacy id sufficed
            body: dict[str, Any] = {"legacy_id": str(legacy_id), "password": PASSWORD}
            return await driver.call("POST", "/v1/accounts", body=body)
        proof = {"legacy_id": str(legacy_id), "credential": credential(self.secret, str(legacy_id))}
        status, made = await driver.call("POST", "/v1/legacy/assertions", body=proof)
        if status != 201:
            return status, made
        body = {"legacy_assertion": made["assertion"], "password": PASSWORD}
        return await driver.call("POST", "/v1/accounts", body=body)


async def _user(http: aiohttp.ClientSession, handle: str) -> dict[str, Any]:
    async with http.get(f"{BASE_URL}/v1/users/{handle}") as reply:
        body: dict[str, Any] = await reply.json()
        return body


async def _all(http: aiohttp.ClientSession, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = ""
    while True:
        query = "?limit=100" + (f"&cursor={cursor}" if cursor else "")
        async with http.get(f"{BASE_URL}{path}{query}") as reply:
            page = await reply.json()
        items += page["items"]
        cursor = page["next_cursor"] or ""
        if not cursor:
            return items


def _rates(samples: list[tuple[float, int]], total: int) -> dict[str, float]:
    """Follows per second overall, and between 10% and 90% of ``total`` (the steady part)."""
    done_at = next((t for t, n in samples if n >= total), samples[-1][0])
    t10 = next((t for t, n in samples if n >= 0.1 * total), 0.0)
    n10 = next((n for t, n in samples if n >= 0.1 * total), 0)
    t90, n90 = next(((t, n) for t, n in samples if n >= 0.9 * total), samples[-1])
    return {
        "follows": total,
        "seconds": round(done_at, 1),
        "per_s": round(total / max(done_at, 1e-9), 1),
        "steady_per_s": round((n90 - n10) / max(t90 - t10, 1e-9), 1),
    }


async def _wait(what: str, count: Any, total: int, timeout_s: float) -> list[tuple[float, int]]:
    started = time.monotonic()
    samples: list[tuple[float, int]] = [(0.0, 0)]
    last_say = 0.0
    while samples[-1][1] < total:
        now = time.monotonic() - started
        if now > timeout_s:
            raise SystemExit(f"bulk: {what}: {samples[-1][1]} of {total} after {timeout_s:.0f} s")
        await asyncio.sleep(POLL_S)
        samples.append((time.monotonic() - started, await count()))
        if now - last_say >= 10:
            say(f"  {what}: {samples[-1][1]} of {total} follows after {now:.0f} s")
            last_say = now
    return samples


async def run_side(s: Side, pop: Population, timeout_s: float) -> None:
    side = s.side
    say(f"{side.name} ({side.revision}): a fresh stack...")
    cost._wipe(side)
    side.minithreads("up", "--no-install", extra=cost.CHEAP_HASH_ENV)
    try:
        s.provider = await cost._has_provider()
        s.secret = ensure_secret(side.home)
        async with await cost._session() as http:
            driver = cost.Driver(http, 16)
            say(f"{side.name}: signing up {len(pop.fans)} accounts (the importers' followees)...")
            made = await driver.each([s.signup(driver, n) for n in pop.fans])
            fans = [d["user"]["id"] for status, d in made if status == 201]
            if len(fans) < 0.99 * len(pop.fans):
                raise SystemExit(f"bulk: only {len(fans)} of {len(pop.fans)} signups worked")
            await _join(s, driver, http, pop, fans, timeout_s)
            await _imports(s, driver, http, pop, timeout_s)
    finally:
        side.minithreads("down")


async def _join(
    s: Side,
    driver: cost.Driver,
    http: aiohttp.ClientSession,
    pop: Population,
    fans: list[str],
    timeout_s: float,
) -> None:
    say(f"{s.side.name}: {len(fans)} pending follows of legacy #{pop.celebrity}; it joins...")
    stamp = str(time.time_ns() // 1000).encode()
    partition = f"pending:{pop.celebrity}".encode()
    async with KVClient(cost.KV_ADDR) as kv:
        for start in range(0, len(fans), 500):
            await kv.multi_put(
                [(Key("graph", partition, f.encode()), stamp) for f in fans[start : start + 500]]
            )
        status, made = await s.signup(driver, pop.celebrity)
        assert status == 201, made
        handle = made["user"]["handle"]

        async def count() -> int:
            return int((await _user(http, handle))["followers_count"])

        samples = await _wait("the join", count, len(fans), timeout_s)
        s.measured["join"] = _rates(samples, len(fans))
        say(f"{s.side.name}: the join: {s.measured['join']}")
        left = await _pending_after(kv, partition, 60)
    followers = {u["id"] for u in await _all(http, f"/v1/users/{handle}/followers")}
    checks = {
        "count_equals_list": int((await _user(http, handle))["followers_count"]) == len(followers),
        "every_fan_follows": followers == set(fans),
        "no_pending_left": not left,
    }
    sample = random.Random(1).sample(fans, min(100, len(fans)))
    handles = {u["id"]: u["handle"] for u in await _all(http, f"/v1/users/{handle}/followers")}
    followed_once = []
    for fan in sample:
        following = await _all(http, f"/v1/users/{handles[fan]}/following")
        followed_once.append([u["id"] for u in following].count(made["user"]["id"]) == 1)
    checks["fans_follow_it_once"] = all(followed_once)
    s.measured["join_invariants"] = checks


async def _pending_after(kv: KVClient, partition: bytes, patience_s: float) -> list[Any]:
    """The pending rows still there once the chain's last step had time to delete its rows
    (it deletes them last)."""
    for _ in range(int(patience_s / POLL_S)):
        left, _ = await kv.scan("graph", partition, limit=10)
        if not left:
            return []
        await asyncio.sleep(POLL_S)
    return left


async def _imports(
    s: Side, driver: cost.Driver, http: aiohttp.ClientSession, pop: Population, timeout_s: float
) -> None:
    say(f"{s.side.name}: {len(pop.importers)} importers sign up and import...")
    made = await driver.each([s.signup(driver, n) for n in pop.importers])
    users = [
        (d["user"]["handle"], d["token"], n)
        for (status, d), n in zip(made, pop.importers, strict=True)
        if status == 201
    ]
    on_app = {*pop.fans, pop.celebrity, *pop.importers}  # (the celebrity joined before)
    expected = {h: len([f for f in GRAPH.following(str(n)) if f in on_app]) for h, _, n in users}
    total = sum(expected.values())
    await driver.each([driver.call("POST", "/v1/me/imports", t, {}) for _, t, _ in users])

    async def count() -> int:
        counts = await asyncio.gather(*(_user(http, h) for h, _, _ in users))
        return sum(int(u["following_count"]) for u in counts)

    samples = await _wait("the imports", count, total, timeout_s)
    s.measured["imports"] = _rates(samples, total)
    say(f"{s.side.name}: the imports: {s.measured['imports']}")
    wrong = []
    for h, _, _ in users:
        listed = await _all(http, f"/v1/users/{h}/following")
        count_now = int((await _user(http, h))["following_count"])
        if not count_now == len(listed) == expected[h]:
            wrong.append((h, count_now, len(listed), expected[h]))
    s.measured["import_invariants"] = {"importers_follow_their_followees_on_app": not wrong}
    if wrong:
        say(f"{s.side.name}: importers off: {wrong[:5]}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=os.environ.get("BULK_BASE", ""))
    parser.add_argument("--fans", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout-s", type=float, default=1_800)
    args = parser.parse_args()
    cost.ensure_ports_free()
    pop = Population.pick(args.fans, args.seed)
    sides = [Side(cost.this_side("bulk"))]
    if args.base:
        sides.insert(0, Side(cost.base_side(args.base, "bulk")))
    folder = REPO / "loadtest" / "reports" / time.strftime("%Y%m%d-%H%M%SZ", time.gmtime())
    say(
        f"{len(pop.fans)} fans, {len(pop.importers)} importers, legacy celebrity "
        f"#{pop.celebrity}; report in {folder} (Ctrl-C stops)"
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        for s in sides:
            await run_side(s, pop, args.timeout_s)
    finally:
        report = {s.side.name: {"revision": s.side.revision, **s.measured} for s in sides}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "bulk.json").write_text(json.dumps(report, indent=1))
        for s in sides:
            print(f"{s.side.name} ({s.side.revision}): {json.dumps(s.measured)}")
    ok = all(
        all(
            v
            for checks in (m.get("join_invariants", {}), m.get("import_invariants", {}))
            for v in checks.values()
        )
        for m in (s.measured for s in sides)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
