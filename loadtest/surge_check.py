"""After a surge: settle what had an unknown outcome, then check that counts equal the truth.

The ledger (written by the Locust users) holds every request as an intent, then its
acknowledgement or its refusal (a 429 or a 503 ``overloaded``: nothing done). The others have
an unknown outcome (no response, or another 5xx) and are settled first by repeating them — they
are idempotent (likes and follows are PUTs; a post carries its Idempotency-Key, so
the retry returns the post the first attempt made, if it made one). Then, through the REST API:

- every import the surge started is ``done``;
- every surge user's followers/following/posts counts equal the lengths of the lists (the
  counter service against the graph and the posts themselves), and every acknowledged follow
  is in the follower's following list (nothing lost);
- every surge post exists and its like count equals the number of distinct users who liked it,
  its reply count the number of its replies (no loss, no double count);
- the celebrity who joined mid-surge is followed by every surge importer who followed it on the
  legacy network (the pending follows were applied, once each).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from mt_legacy import LegacyGraph

CONCURRENCY = 16
# Refusals are ridden out for this long per request: the check must finish, and a gate that
# the surge left shrunk lets the checkers through a few at a time.
REFUSED_PATIENCE_S = 300.0
LIST_LIMIT = 100


@dataclass
class Check:
    name: str
    checked: int = 0
    violations: int = 0
    examples: list[str] = field(default_factory=list)

    def record(self, ok: bool, example: str) -> None:
        self.checked += 1
        if not ok:
            self.violations += 1
            if len(self.examples) < 5:
                self.examples.append(example)

    def as_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "violations": self.violations,
            **({"examples": self.examples} if self.examples else {}),
        }


@dataclass
class Truth:
    """The ledger, folded: who exists, what was done (settled), what is owed."""

    tokens: dict[str, str] = field(default_factory=dict)  # handle -> token
    legacy: dict[str, str] = field(default_factory=dict)  # handle -> legacy id
    imports: dict[str, str] = field(default_factory=dict)  # handle -> import id
    posts: dict[str, str | None] = field(default_factory=dict)  # id -> reply_to
    likes: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # post -> users
    follows: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    intents: list[dict[str, Any]] = field(default_factory=list)  # requests, answered or not
    refused: set[str] = field(default_factory=set)  # keys of intents refused before any work
    posted_keys: set[str] = field(default_factory=set)  # Idempotency-Keys of acknowledged posts
    celebrity: str | None = None
    celebrity_rank: int | None = None

    @classmethod
    def read(cls, ledger: Path) -> Truth:
        truth = cls()
        for line in ledger.read_text().splitlines():
            entry = json.loads(line)
            truth.add(entry)
        return truth

    def add(self, e: dict[str, Any]) -> None:
        kind = e["kind"]
        if kind == "user":
            self.tokens[e["user"]] = e["token"]
            self.legacy[e["user"]] = e["legacy_id"]
        elif kind == "import":
            self.imports[e["user"]] = e["id"]
        elif kind == "post":
            self.posts[e["id"]] = e.get("reply_to")
            self.posted_keys.add(e["key"])
        elif kind == "like":
            self.likes[e["post"]].add(e["user"])
        elif kind == "follow":
            self.follows[e["user"]].add(e["target"])
        elif kind == "celebrity":
            self.celebrity_rank = e.get("rank")
        elif kind == "celebrity_joined":
            self.celebrity = e["user"]
        elif kind == "refused":
            self.refused.add(e["key"])
        elif kind.endswith("?"):
            self.intents.append(e)

    def unknown(self) -> list[dict[str, Any]]:
        """Intents never acknowledged nor refused: a timeout, a 5xx, or a user stopped
        mid-request."""
        return [
            e
            for e in self.intents
            if not self._acknowledged(e) and e.get("key") not in self.refused
        ]

    def _acknowledged(self, e: dict[str, Any]) -> bool:
        kind = e["kind"]
        if kind == "post?":
            return e["key"] in self.posted_keys
        if kind == "like?":
            return e["user"] in self.likes.get(e["post"], set())
        if kind == "follow?":
            return e["target"] in self.follows.get(e["user"], set())
        return True


class Checker:
    def __init__(self, http: aiohttp.ClientSession, base: str, truth: Truth) -> None:
        self.http = http
        self.base = base
        self.truth = truth
        self._gate = asyncio.Semaphore(CONCURRENCY)

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        give_up = time.monotonic() + REFUSED_PATIENCE_S
        # A checker keeps its place while it waits: CONCURRENCY requests outstanding at most,
        # not a crowd of every pending one retrying at once.
        async with self._gate:
            while True:  # ride out 503s and 429s after their Retry-After, jittered
                async with self.http.request(
                    method, self.base + path, json=body, headers=sent
                ) as resp:
                    text = await resp.text()
                    if resp.status not in (429, 503):
                        return resp.status, json.loads(text) if text else None
                    wait_s = float(resp.headers.get("Retry-After", "1"))
                if time.monotonic() + wait_s > give_up:
                    return resp.status, None
                await asyncio.sleep(wait_s * random.uniform(0.5, 1.5))

    async def all_pages(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = f"?limit={LIST_LIMIT}" + (f"&cursor={cursor}" if cursor else "")
            status, reply = await self.call("GET", path + query)
            if status != 200:
                raise RuntimeError(f"GET {path}: {status} {reply}")
            items += reply["items"]
            cursor = reply["next_cursor"]
            if cursor is None:
                return items

    # ------------------------------------------------------------------ settling

    async def settle(self) -> int:
        """Repeat every request whose outcome was unknown until it is known."""
        unknown = self.truth.unknown()
        await _each(unknown, self._settle_one)
        return len(unknown)

    async def _settle_one(self, e: dict[str, Any]) -> None:
        kind, user, token = e["kind"], e["user"], e["token"]
        if kind == "post?":
            status, reply = await self.call(
                "POST", "/v1/posts", token, e["body"], {"Idempotency-Key": e["key"]}
            )
            if status != 201:
                raise RuntimeError(f"settling {e}: {status} {reply}")
            self.truth.posts[reply["id"]] = e["body"].get("reply_to")
        elif kind in ("like?", "follow?"):
            status, reply = await self.call("PUT", e["path"], token)
            if status != 204:
                raise RuntimeError(f"settling {e}: {status} {reply}")
            if kind == "like?":
                self.truth.likes[e["post"]].add(user)
            else:
                self.truth.follows[user].add(e["target"])

    # ------------------------------------------------------------------ checks

    async def run(self) -> dict[str, Check]:
        checks = {
            name: Check(name)
            for name in ("imports_done", "user_counts", "follows_kept", "post_counts", "celebrity")
        }
        await _each(self.truth.imports.items(), lambda kv: self._import(kv, checks))
        await _each(list(self.truth.tokens), lambda h: self._user(h, checks))
        await _each(list(self.truth.posts), lambda p: self._post(p, checks))
        await self._celebrity(checks["celebrity"])
        return checks

    async def _import(self, item: tuple[str, str], checks: dict[str, Check]) -> None:
        handle, import_id = item
        token = self.truth.tokens[handle]
        status, reply = await self.call("GET", f"/v1/me/imports/{import_id}", token)
        state = reply.get("state") if isinstance(reply, dict) else status
        checks["imports_done"].record(state == "done", f"{handle}'s import {import_id}: {state}")

    async def _user(self, handle: str, checks: dict[str, Check]) -> None:
        status, user = await self.call("GET", f"/v1/users/{handle}")
        if status != 200:
            checks["user_counts"].record(False, f"{handle}: GET {status}")
            return
        followers = await self.all_pages(f"/v1/users/{handle}/followers")
        following = await self.all_pages(f"/v1/users/{handle}/following")
        posts = await self.all_pages(f"/v1/users/{handle}/posts")
        counts = (user["followers_count"], user["following_count"], user["posts_count"])
        lists = (len(followers), len(following), len(posts))
        checks["user_counts"].record(counts == lists, f"{handle}: counts {counts}, lists {lists}")
        followed = {u["handle"] for u in following}
        missing = self.truth.follows.get(handle, set()) - followed
        checks["follows_kept"].record(not missing, f"{handle} lost follows of {sorted(missing)}")

    async def _post(self, post_id: str, checks: dict[str, Check]) -> None:
        status, post = await self.call("GET", f"/v1/posts/{post_id}")
        if status != 200:
            checks["post_counts"].record(False, f"post {post_id}: GET {status}")
            return
        likes = len(self.truth.likes.get(post_id, set()))
        replies = sum(1 for r in self.truth.posts.values() if r == post_id)
        got = (post["like_count"], post["reply_count"])
        checks["post_counts"].record(
            got == (likes, replies), f"post {post_id}: counts {got}, truth {(likes, replies)}"
        )

    async def _celebrity(self, check: Check) -> None:
        if self.truth.celebrity is None or self.truth.celebrity_rank is None:
            return
        graph = LegacyGraph()
        rank = self.truth.celebrity_rank
        fans = {
            h
            for h, legacy_id in self.truth.legacy.items()
            if h in self.truth.imports and rank in graph.following(legacy_id)
        }
        followers = {
            u["handle"] for u in await self.all_pages(f"/v1/users/{self.truth.celebrity}/followers")
        }
        for fan in sorted(fans):
            check.record(fan in followers, f"{fan} follows legacy #{rank} but not its account")


async def _each(items: Iterable[Any], work: Callable[[Any], Awaitable[None]]) -> None:
    await asyncio.gather(*(work(item) for item in items))


async def check(base: str, ledger: Path) -> dict[str, Any]:
    """Settle, then check; returns the summary's ``invariants`` object."""
    truth = Truth.read(ledger)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        checker = Checker(http, base, truth)
        settled = await checker.settle()
        checks = await checker.run()
    return {
        "holding": all(c.violations == 0 for c in checks.values()),
        "settled_unknown_outcomes": settled,
        "users": len(truth.tokens),
        "posts": len(truth.posts),
        **{name: c.as_json() for name, c in checks.items()},
    }
