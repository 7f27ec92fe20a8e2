"""Open-loop load against the REST API: Poisson arrivals, each timed from its *scheduled* send.

A closed loop (Locust's users) waits for an answer before its next request, so when the server
slows down the load slows with it and the queue hides. Here arrivals keep their schedule
whatever the answers do, and a request's latency counts from the moment it was due, so a
generator that sends late is not excused (no coordinated omission). The generator measures
itself too — its CPU time and event-loop lag — so that a step where it fell behind can be told
apart from one where the server did.

The actions are the day-1 mix of a newcomer-heavy launch: signups linked to a legacy account
(each followed by its one-tap import), posts, likes, feed reads, follows and post reads, acted
by a population of users seeded through the API before the load (:func:`seed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from mt_legacy import LegacyGraph
from mt_legacy.identity import credential, ensure_secret

PASSWORD = "capacity-password"  # noqa: S105 - the simulated users' password
GRAPH = LegacyGraph()
REPO = Path(__file__).resolve().parent.parent


@functools.cache
def _operator_secret() -> bytes:
    return ensure_secret(Path(os.environ.get("MT_HOME", REPO / ".local")))


def legacy_credential(legacy_id: str) -> str:
    """A simulated legacy account's credential, as its owner would type it (derived from the
    operator's secret in the stack's ``$MT_HOME``)."""
    return credential(_operator_secret(), legacy_id)


def assertion_body(legacy_id: str) -> dict[str, str]:
    return {"legacy_id": legacy_id, "credential": legacy_credential(legacy_id)}


FIRST_NEWCOMER_RANK = 1_000  # legacy accounts below this rank are the celebrities
REQUEST_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
# Of every arrival of the day-1 mix; a signup's import is its own request on top.
DAY1_MIX: dict[str, float] = {
    "signup": 0.10,
    "post": 0.10,
    "like": 0.20,
    "feed": 0.40,
    "follow": 0.10,
    "get_post": 0.10,
}
# Each kind's route, as the gateway's OpenAPI document names it (for its criticality class).
ROUTES: dict[str, tuple[str, str]] = {
    "assertion": ("POST", "/v1/legacy/assertions"),
    "signup": ("POST", "/v1/accounts"),
    "import": ("POST", "/v1/me/imports"),
    "post": ("POST", "/v1/posts"),
    "like": ("PUT", "/v1/posts/{id}/like"),
    "feed": ("GET", "/v1/feed"),
    "follow": ("PUT", "/v1/me/following/{handle}"),
    "get_post": ("GET", "/v1/posts/{id}"),
}
Result = Literal["ok", "shed", "limited", "error"]


@dataclass
class User:
    handle: str
    token: str


@dataclass
class Population:
    """Who acts: users with tokens, posts to like and read, legacy accounts still free."""

    users: list[User] = field(default_factory=list)
    posts: list[str] = field(default_factory=list)
    free_legacy: list[int] = field(default_factory=list)
    popular: list[str] = field(default_factory=list)  # handles everyone follows, Zipf-weighted

    def actor(self, rng: random.Random) -> User:
        return rng.choice(self.users)

    def recent_post(self, rng: random.Random) -> str:
        return rng.choice(self.posts[-500:])

    def followee(self, rng: random.Random, actor: User) -> str | None:
        pool = self.popular or [u.handle for u in self.users]
        # Zipf-like over the popular list: rank r is picked with weight 1/r.
        for _ in range(4):
            handle = pool[zipf_index(len(pool), rng)]
            if handle != actor.handle:
                return handle
        return None

    def remember_post(self, post_id: str) -> None:
        self.posts.append(post_id)
        if len(self.posts) > 5_000:
            del self.posts[:1_000]


@dataclass(frozen=True)
class Request:
    kind: str
    method: str
    path: str
    token: str | None = None
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    on_ok: Callable[[Any], None] | None = None  # what the population learns from the answer


@dataclass(frozen=True)
class Sample:
    kind: str
    due_s: float  # scheduled send, on the generator's monotonic clock
    latency_ms: float  # from due_s to the complete answer
    result: Result
    status: int
    code: str = ""  # an error answer's code, from its body


def zipf_index(n: int, rng: random.Random) -> int:
    """An index of 0..n-1 where index i is picked with weight ~1/(i+1) (log-uniform)."""
    return min(n - 1, int(math.exp(rng.random() * math.log(n + 1))) - 1)


def classify(status: int, retry_after: str | None) -> Result:
    """A success, a refusal the client may retry after Retry-After, or an error."""
    if 200 <= status < 300:
        return "ok"
    if status == 503 and retry_after:
        return "shed"
    if status == 429 and retry_after:
        return "limited"
    return "error"


class Actions:
    """Builds the request of each kind from the population (and teaches it what came back)."""

    def __init__(self, population: Population, rng: random.Random) -> None:
        self.pop = population
        self.rng = rng
        self.follow_up: list[Request] = []  # imports of new signups, sent at once

    def make(self, kind: str) -> Request | None:
        build = getattr(self, f"_{kind}")
        request: Request | None = build()
        return request

    def _signup(self) -> Request | None:
        """A newcomer: the legacy provider's assertion first, then the signup it allows, then
        the one-tap import (each sent with the arrival after the answer it needs)."""
        if not self.pop.free_legacy:
            return None
        legacy_id = str(self.pop.free_legacy.pop())

        def joined(reply: Any) -> None:
            user = User(reply["user"]["handle"], reply["token"])
            self.pop.users.append(user)
            self.follow_up.append(Request("import", "POST", "/v1/me/imports", user.token, {}))

        def proven(reply: Any) -> None:
            # As Threads' newcomers came, with their Instagram login: no password, no hash.
            body = {"legacy_assertion": reply["assertion"]}
            self.follow_up.append(
                Request("signup", "POST", "/v1/accounts", None, body, on_ok=joined)
            )

        body = assertion_body(legacy_id)
        return Request("assertion", "POST", "/v1/legacy/assertions", None, body, on_ok=proven)

    def _post(self) -> Request:
        actor = self.pop.actor(self.rng)
        body = {"text": f"capacity thoughts #{self.rng.randint(1, 10**6)}"}
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        return Request(
            "post",
            "POST",
            "/v1/posts",
            actor.token,
            body,
            headers,
            on_ok=lambda r: self.pop.remember_post(r["id"]),
        )

    def _like(self) -> Request | None:
        if not self.pop.posts:
            return None
        post_id = self.pop.recent_post(self.rng)
        return Request("like", "PUT", f"/v1/posts/{post_id}/like", self.pop.actor(self.rng).token)

    def _feed(self) -> Request:
        return Request("feed", "GET", "/v1/feed?limit=20", self.pop.actor(self.rng).token)

    def _follow(self) -> Request | None:
        actor = self.pop.actor(self.rng)
        target = self.pop.followee(self.rng, actor)
        if target is None:
            return None
        return Request("follow", "PUT", f"/v1/me/following/{target}", actor.token)

    def _get_post(self) -> Request | None:
        if not self.pop.posts:
            return None
        post_id = self.pop.recent_post(self.rng)
        return Request("get_post", "GET", f"/v1/posts/{post_id}", self.pop.actor(self.rng).token)


async def send(http: aiohttp.ClientSession, base: str, request: Request) -> tuple[int, Any, str]:
    """(status, decoded JSON or None, Retry-After); status 0 when no answer came."""
    headers = dict(request.headers)
    if request.token:
        headers["Authorization"] = f"Bearer {request.token}"
    try:
        async with http.request(
            request.method, base + request.path, json=request.body, headers=headers
        ) as response:
            raw = await response.read()
            retry_after = response.headers.get("Retry-After", "")
            status = response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0, None, ""
    data: Any = None
    if raw:  # an error's body too: its code says which error it was
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
    return status, data, retry_after


def error_code(data: Any) -> str:
    """The ``error.code`` of an error answer's body, or "" if it has none."""
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else ""


class LoopLag:
    """How late a 5 ms timer fires on this event loop: the generator's own queueing."""

    INTERVAL_S = 0.005

    def __init__(self) -> None:
        self.samples_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.INTERVAL_S
            await asyncio.sleep(self.INTERVAL_S)
            self.samples_ms.append(max(0.0, (loop.time() - expected) * 1000))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def poisson_arrivals(rate_per_s: float, duration_s: float, rng: random.Random) -> list[float]:
    """Arrival offsets (s) of a Poisson process of ``rate_per_s`` over ``duration_s``."""
    arrivals: list[float] = []
    t = rng.expovariate(rate_per_s)
    while t < duration_s:
        arrivals.append(t)
        t += rng.expovariate(rate_per_s)
    return arrivals


def pick_kind(mix: dict[str, float], rng: random.Random) -> str:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


@dataclass
class StepRun:
    """What one open-loop step measured (raw; :func:`summarize` makes the report's STEP)."""

    rate_per_s: float
    duration_s: float
    samples: list[Sample]
    generator_cpu_s: float
    loop_lag_ms: list[float]
    skipped: int  # arrivals with nothing to act on (no post yet, no free legacy account)
    started_at: float  # monotonic
    ended_at: float


def pooled(first: StepRun, second: StepRun) -> StepRun:
    """Two runs of the same rate as one: their samples together, over their summed time."""
    return StepRun(
        first.rate_per_s,
        first.duration_s + second.duration_s,
        [*first.samples, *second.samples],
        first.generator_cpu_s + second.generator_cpu_s,
        [*first.loop_lag_ms, *second.loop_lag_ms],
        first.skipped + second.skipped,
        first.started_at,
        second.ended_at,
    )


class Generator:
    """One aiohttp session sending each arrival at its time, however many are outstanding."""

    def __init__(self, base: str, population: Population, seed: int) -> None:
        self.base = base.rstrip("/")
        self.rng = random.Random(seed)
        self.actions = Actions(population, self.rng)
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Generator:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, force_close=False)
        self._http = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            # Bounded: a connection the stack never closes must not hold up the report.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._http.close()

    async def step(
        self,
        rate_per_s: float,
        duration_s: float,
        mix: dict[str, float] | None = None,
        progress: Callable[[float, int, int], None] | None = None,
    ) -> StepRun:
        """Offer ``rate_per_s`` for ``duration_s``; returns once every request has its answer."""
        assert self._http is not None, "use the generator as an async context manager"
        mix = mix or DAY1_MIX
        loop = asyncio.get_running_loop()
        arrivals = poisson_arrivals(rate_per_s, duration_s, self.rng)
        samples: list[Sample] = []
        tasks: set[asyncio.Task[None]] = set()
        lag = LoopLag()
        lag.start()
        cpu0 = time.process_time()
        t0 = loop.time() + 0.05
        skipped = 0
        next_progress = t0 + 5
        for offset in arrivals:
            due = t0 + offset
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            made = self.actions.make(pick_kind(mix, self.rng))
            skipped += made is None
            # The imports of signups answered since the last arrival go out with it.
            requests, self.actions.follow_up = self.actions.follow_up, []
            for request in [*requests, *([made] if made is not None else [])]:
                task = asyncio.create_task(self._one(request, due, samples))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if progress is not None and loop.time() >= next_progress:
                progress(loop.time() - t0, len(samples), len(tasks))
                next_progress += 5
        end_of_arrivals = t0 + duration_s
        if (rest := end_of_arrivals - loop.time()) > 0:
            await asyncio.sleep(rest)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        cpu = time.process_time() - cpu0
        await lag.stop()
        return StepRun(
            rate_per_s, duration_s, samples, cpu, lag.samples_ms, skipped, t0, loop.time()
        )

    async def _one(self, request: Request, due: float, samples: list[Sample]) -> None:
        assert self._http is not None
        status, data, retry_after = await send(self._http, self.base, request)
        latency_ms = (asyncio.get_running_loop().time() - due) * 1000
        result = classify(status, retry_after)
        code = error_code(data) if result == "error" else ""
        samples.append(Sample(request.kind, due, latency_ms, result, status, code))
        if result == "ok" and request.on_ok is not None and data is not None:
            request.on_ok(data)


def summarize(
    run: StepRun, classes: dict[str, str], offered_x: float | None = None
) -> dict[str, Any]:
    """The report's STEP for one run: goodput, p99 of the admitted per kind, refusals by class."""
    by_kind: dict[str, list[Sample]] = defaultdict(list)
    for s in run.samples:
        by_kind[s.kind].append(s)
    n = len(run.samples) or 1
    results = Counter(s.result for s in run.samples)
    shed = [s.latency_ms for s in run.samples if s.result == "shed"]
    offered_by_class: Counter[str] = Counter()
    shed_by_class: Counter[str] = Counter()
    for s in run.samples:
        cls = classes.get(s.kind, "unknown")
        offered_by_class[cls] += 1
        if s.result == "shed":
            shed_by_class[cls] += 1
    errors = [s for s in run.samples if s.result == "error"]
    statuses = Counter(str(s.status) for s in errors)
    return {
        "offered_x": offered_x,
        "offered_per_s": round(len(run.samples) / run.duration_s, 2),
        "duration_s": run.duration_s,
        "goodput_per_s": round(results["ok"] / run.duration_s, 2),
        "samples": {k: len(v) for k, v in sorted(by_kind.items())},
        "p99_ms": {
            k: round(percentile([s.latency_ms for s in v if s.result == "ok"], 0.99), 1)
            for k, v in sorted(by_kind.items())
        },
        "p50_ms": {
            k: round(percentile([s.latency_ms for s in v if s.result == "ok"], 0.50), 1)
            for k, v in sorted(by_kind.items())
        },
        "shed_rate": round(results["shed"] / n, 4),
        "shed_by_class": {
            c: round(shed_by_class[c] / offered_by_class[c], 4) for c in sorted(offered_by_class)
        },
        "shed_p99_ms": round(percentile(shed, 0.99), 1),
        "rate_limited_rate": round(results["limited"] / n, 4),
        "error_rate": round(results["error"] / n, 4),
        "errors_by_status": dict(statuses),
        "errors_by_kind": dict(Counter(f"{s.kind} {s.status} {s.code}".strip() for s in errors)),
        "generator": {
            "cpu_s": round(run.generator_cpu_s, 2),
            "loop_lag_p99_ms": round(percentile(run.loop_lag_ms, 0.99), 2),
        },
    }


async def _bounded(limit: int, jobs: list[Any]) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(job: Any) -> Any:
        async with gate:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs))


async def _call_until(
    http: aiohttp.ClientSession, base: str, request: Request, attempts: int = 20
) -> tuple[int, Any]:
    """Seeding is closed-loop and patient: a refusal is waited out and sent again."""
    status, data = 0, None
    for attempt in range(attempts):
        status, data, retry_after = await send(http, base, request)
        if classify(status, retry_after) in ("ok", "error") and status != 0:
            return status, data
        await asyncio.sleep(min(5.0, float(retry_after or 0.2) * (1 + attempt / 4)))
    return status, data


async def legacy_signup(
    http: aiohttp.ClientSession, base: str, legacy_id: int | str, **extra: Any
) -> tuple[int, Any]:
    """Sign up linked to a legacy account, as the app does: its provider's assertion, then
    the account (closed loop, patient)."""
    request = Request("seed", "POST", "/v1/legacy/assertions", None, assertion_body(str(legacy_id)))
    status, data = await _call_until(http, base, request)
    if status != 201:
        return status, data
    body = {"legacy_assertion": data["assertion"], "password": PASSWORD, **extra}
    return await _call_until(http, base, Request("seed", "POST", "/v1/accounts", None, body))


async def free_legacy_accounts(
    http: aiohttp.ClientSession, base: str, n: int, rng: random.Random
) -> list[int]:
    """``n`` legacy accounts whose default handle nobody has taken (checked through the API)."""
    found: list[int] = []
    while len(found) < n:
        # Never one picked before: the same account offered twice is a 409 legacy_taken.
        picks = {rng.randint(FIRST_NEWCOMER_RANK, GRAPH.size) for _ in range(n - len(found))}
        picks.difference_update(found)
        checks = await _bounded(
            16,
            [
                _call_until(http, base, Request("check", "GET", f"/v1/users/{GRAPH.handle(p)}"))
                for p in picks
            ],
        )
        found += [p for p, (status, _) in zip(picks, checks, strict=True) if status == 404]
    return found


async def signups_with_imports(base: str, pop: Population, n: int) -> int:
    """``n`` newcomers from the population's free legacy accounts sign up and start their
    imports (closed loop, outside any measured step); returns how many imports started."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def one(legacy_id: int) -> bool:
            status, data = await legacy_signup(http, base, legacy_id)
            if status != 201:
                return False
            user = User(data["user"]["handle"], data["token"])
            pop.users.append(user)
            status, _ = await _call_until(
                http, base, Request("seed", "POST", "/v1/me/imports", user.token, {})
            )
            return status == 202

        picks = [pop.free_legacy.pop() for _ in range(min(n, len(pop.free_legacy)))]
        return sum(await _bounded(4, [one(p) for p in picks]))


def legacy_fans(celebrity: int, n: int, rng: random.Random, max_degree: int = 150) -> list[int]:
    """``n`` legacy accounts of the long tail that follow ``celebrity`` on the legacy network."""
    fans: set[int] = set()
    while len(fans) < n:
        candidate = rng.randint(FIRST_NEWCOMER_RANK, GRAPH.size)
        if GRAPH.out_degree(candidate) <= max_degree and celebrity in GRAPH.following(
            str(candidate)
        ):
            fans.add(candidate)
    return sorted(fans)


async def free_celebrities(
    http: aiohttp.ClientSession, base: str, n: int, first_rank: int = 200
) -> list[int]:
    """The ``n`` most followed legacy accounts not on the app yet, from ``first_rank`` (the
    e2e tests take ranks 1-6, the chaos tests and the surge those from 7 and 20 on)."""
    found: list[int] = []
    rank = first_rank
    while len(found) < n and rank < FIRST_NEWCOMER_RANK:
        status, _ = await _call_until(
            http, base, Request("check", "GET", f"/v1/users/{GRAPH.handle(rank)}")
        )
        if status == 404:
            found.append(rank)
        rank += 1
    return found


async def seed(
    base: str,
    fans: list[int],
    follows_each: int,
    legacy_spare: int,
    rng: random.Random,
    say: Callable[[str], None],
) -> Population:
    """A fresh population through the API: one account per legacy account in ``fans`` (each
    then starts its one-tap import: the pending follows it leaves are what a celebrity's join
    applies), each following ``follows_each`` others picked Zipf-like (so a few have most of
    the followers) and posting twice, their feeds read once (so they count as active); and
    ``legacy_spare`` unclaimed legacy accounts for the signups of the load."""
    pop = Population()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        say(f"seeding {len(fans)} users linked to legacy accounts, with their imports...")
        made = await _bounded(8, [legacy_signup(http, base, n) for n in fans])
        pop.users = [User(d["user"]["handle"], d["token"]) for s, d in made if s == 201]
        if len(pop.users) < len(fans):  # a handle taken by an earlier run, say: go on without
            statuses = Counter(s for s, _ in made if s != 201)
            say(f"seeding: {len(fans) - len(pop.users)} signups failed ({dict(statuses)})")
        if len(pop.users) < 0.9 * len(fans):
            raise RuntimeError(f"seeding: only {len(pop.users)} of {len(fans)} signups succeeded")
        await _bounded(
            8,
            [
                _call_until(http, base, Request("seed", "POST", "/v1/me/imports", u.token, {}))
                for u in pop.users
            ],
        )
        pop.popular = [u.handle for u in pop.users]
        users = len(pop.users)
        say(f"seeding {users * follows_each} follows and {2 * users} posts...")
        wanted: set[tuple[int, int]] = set()
        for i in range(users):
            while sum(1 for a, _ in wanted if a == i) < min(follows_each, users - 1):
                j = zipf_index(users, rng)
                if j != i:
                    wanted.add((i, j))
        await _bounded(
            8,
            [
                _call_until(
                    http,
                    base,
                    Request(
                        "seed", "PUT", f"/v1/me/following/{pop.users[j].handle}", pop.users[i].token
                    ),
                )
                for i, j in sorted(wanted)
            ],
        )
        posted = await _bounded(
            8,
            [
                _call_until(
                    http,
                    base,
                    Request(
                        "seed",
                        "POST",
                        "/v1/posts",
                        u.token,
                        {"text": f"seed post {k}"},
                        {"Idempotency-Key": uuid.uuid4().hex},
                    ),
                )
                for u in pop.users
                for k in range(2)
            ],
        )
        pop.posts = [d["id"] for s, d in posted if s == 201]
        await _bounded(
            8,
            [
                _call_until(http, base, Request("seed", "GET", "/v1/feed", u.token))
                for u in pop.users
            ],
        )
        say(f"picking {legacy_spare} unclaimed legacy accounts for the signups...")
        pop.free_legacy = await free_legacy_accounts(http, base, legacy_spare, rng)
    return pop
