"""``make cost``: CPU time per user action, summed over every process of the stack, this tree
against a base revision in the same run.

    make cost                                   # A/B against COST_BASE (the Makefile's)
    .venv/bin/python loadtest/cost.py --base REV [--rounds 2]
    .venv/bin/python loadtest/cost.py --only    # this tree alone (quicker, no ratio)

These machines drift by 2x between days, so an action's cost means something only next to the
same action on the base revision measured in the same run. Each side is a whole stack of its
own revision (the base from a git worktree with its own virtualenv) with its own data under
``.local/cost/``; the sides take turns, a round each, on the same ports.

The data (seeded once per side through the REST API, then kept with the likes and follows each
run made, so that the next makes new ones): ``--users`` accounts ranked by popularity, half of
them active (they have read their feed), ``--posters`` posters at the top of the ranking with
``--followers`` followers each (half of them active) and a few posts each. Who acts and on whom
is picked Zipf-like over the ranking, from a fixed seed, so both sides do the same things.
Seeding hashes passwords cheaply (a setting of the users service) and restarts the users service
with the real cost before anything is measured.

Each round starts its stack afresh and warms it first (a tenth of every phase, not measured: the
broker's JVM compiles its hot paths in its first minute of work). A phase is one kind of action,
``--concurrency`` at a time (closed loop: this measures CPU, not latency). It ends only once the
async work it caused (fan-out, backfills, notifications) has drained; its cost is the CPU time
of every process of the stack over the phase (``/proc``), minus what each burns idle (the lower
of 15 s before the phases and 15 s after), divided by the actions. Admission is the fixed bound,
so that nothing is refused and every request is an action. ``--profile post,like`` runs those
phases under py-spy (``profile_top.py`` reads what it writes). Progress on stderr; Ctrl-C stops
the stack it started. The report: ``loadtest/reports/<UTC ts>/cost.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openloop as ol
import stackcpu
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from mt_cli.jobscmd import collect
from mt_legacy.identity import credential, ensure_secret

REPO = Path(__file__).resolve().parent.parent
BASE_URL = "http://127.0.0.1:8080"
REDIS_URL = "redis://127.0.0.1:6379/0"
KAFKA = "127.0.0.1:9092"
KV_ADDR = "127.0.0.1:50060"
PASSWORD = "cost-password"  # noqa: S105 - the simulated users' password
# Every simulated user comes from 127.0.0.1, and nothing may be refused (see the module doc).
STACK_ENV = {
    "MT_RATE_PER_IP_PER_MIN": "100000000",
    "MT_RATE_PER_USER_PER_MIN": "100000000",
    "MT_LOGIN_PER_IP_PER_MIN": "100000000",
    "MT_ADMISSION": "fixed",
}
# Seeding only: a password hash of ~1 ms instead of Argon2id's ~25 ms of CPU per account.
CHEAP_HASH_ENV = {"MT_ARGON2_MEMORY_KIB": "1024", "MT_ARGON2_TIME_COST": "1"}
ACTIONS = ("get_user", "get_post", "feed", "like", "follow", "post", "signup", "signup_legacy")
# Only where the stack has a legacy identity provider (the base of "cheaper actions" had none).
NEEDS_PROVIDER = {"signup_legacy"}
TARGET_MS = {"post": 10, "follow": 10, "like": 6, "feed": 8, "get_post": 3, "get_user": 3}


def say(line: str) -> None:
    print(f"cost: {line}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- the two stacks


@dataclass(frozen=True)
class Side:
    """One revision's stack: its checkout, its command and its data."""

    name: str
    repo: Path
    home: Path
    revision: str

    @property
    def cli(self) -> str:
        return str(self.repo / ".venv" / "bin" / "minithreads")

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, **STACK_ENV, **(extra or {}), "MT_HOME": str(self.home)}

    def minithreads(self, *args: str, extra: dict[str, str] | None = None) -> None:
        subprocess.run(
            [self.cli, *args], env=self.env(extra), stdout=sys.stderr, stderr=sys.stderr, check=True
        )

    def pids(self) -> dict[str, int]:
        return stackcpu.stack_pids(self.cli, self.env())

    @property
    def seed_file(self) -> Path:
        return self.home / "cost-seed.json"


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def _link_opt(home: Path) -> None:
    """Kafka's and Zipkin's jars are this checkout's (infra/install.sh put them there)."""
    home.mkdir(parents=True, exist_ok=True)
    opt = home / "opt"
    if not opt.exists():
        opt.symlink_to(REPO / ".local" / "opt")


def this_side(bench: str = "cost") -> Side:
    """This tree, with its data for ``bench`` under ``.local/<bench>/this``."""
    dirty = (
        " (uncommitted changes)" if _git("status", "--porcelain", "--untracked-files=no") else ""
    )
    home = REPO / ".local" / bench / "this"
    _link_opt(home)
    return Side("this", REPO, home, _git("rev-parse", "--short", "HEAD") + dirty)


def base_side(revision: str, bench: str = "cost") -> Side:
    """The base revision in a worktree of its own (``.local/worktrees``), with its own
    virtualenv (both kept for reuse), and its data for ``bench`` beside this tree's."""
    sha = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
    tree = REPO / ".local" / "worktrees" / sha[:12]
    if not (tree / ".git").exists():
        say(f"checking out {revision} ({sha[:12]}) in {tree}...")
        _git("worktree", "add", "--force", "--detach", str(tree), sha)
    if not (tree / ".venv" / "bin" / "minithreads").exists():
        say("building its virtualenv...")
        uv = subprocess.run(
            [str(REPO / "infra" / "bootstrap-uv.sh")], capture_output=True, text=True, check=True
        ).stdout.strip()
        subprocess.run([uv, "sync", "--locked", "--quiet"], cwd=tree, check=True)
    home = REPO / ".local" / bench / f"base-{sha[:12]}"
    _link_opt(home)
    return Side("base", tree, home, sha[:12])


def ensure_ports_free() -> None:
    try:
        import socket

        with socket.create_connection(("127.0.0.1", 8080), timeout=0.5):
            pass
    except OSError:
        return
    raise SystemExit("cost: something listens on :8080; stop the running stack first (make down)")


# ---------------------------------------------------------------------- the data


@dataclass(frozen=True)
class Plan:
    users: int
    posters: int
    followers: int
    posts_each: int
    seed: int

    def as_json(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.__dict__.items()}


@dataclass
class World:
    """What the driver knows of one side's data: accounts by rank, posts, edges, likes."""

    handles: list[str]
    tokens: list[str]
    active: list[int]  # ranks of the active users, most popular first
    posts: list[str]  # post ids, newest last
    follows: set[tuple[int, int]] = field(default_factory=set)
    likes: set[tuple[int, str]] = field(default_factory=set)

    def as_json(self) -> dict[str, Any]:
        return {
            "handles": self.handles,
            "tokens": self.tokens,
            "active": self.active,
            "posts": self.posts,
            "follows": sorted(self.follows),
            "likes": sorted(self.likes),
        }

    @staticmethod
    def from_json(doc: dict[str, Any]) -> World:
        return World(
            doc["handles"],
            doc["tokens"],
            doc["active"],
            doc["posts"],
            {(a, b) for a, b in doc["follows"]},
            {(a, b) for a, b in doc.get("likes", ())},
        )


class Driver:
    """Closed-loop requests through the REST API; a refusal is waited out and sent again."""

    def __init__(self, http: aiohttp.ClientSession, concurrency: int) -> None:
        self.http = http
        self.concurrency = concurrency
        self.errors: list[str] = []

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        expected: tuple[int, ...] = (),
    ) -> tuple[int, Any]:
        """The answer; one not 2xx (nor ``expected``: the caller handles it) is an error."""
        request = ol.Request("cost", method, path, token, body, headers or {})
        status, data = await ol._call_until(self.http, BASE_URL, request)
        if not 200 <= status < 300 and status not in expected:
            self.errors.append(f"{method} {path}: {status}")
        return status, data

    async def each(self, work: list[Any]) -> list[Any]:
        return await ol._bounded(self.concurrency, work)


def _followers_of(poster: int, plan: Plan, active: set[int], rng: random.Random) -> list[int]:
    """``plan.followers`` followers of ``poster``, half of them active."""
    half = plan.followers // 2
    chosen: set[int] = set()
    for want_active, count in ((True, half), (False, plan.followers - half)):
        picked = 0
        while picked < count:
            who = rng.randrange(plan.users)
            if who != poster and who not in chosen and (who in active) == want_active:
                chosen.add(who)
                picked += 1
    return sorted(chosen)


async def seed(driver: Driver, plan: Plan) -> World:
    rng = random.Random(plan.seed)
    handles = [f"c{rank:05d}" for rank in range(plan.users)]
    say(f"seeding {plan.users} accounts...")
    made = await driver.each(
        [
            driver.call("POST", "/v1/accounts", body={"handle": h, "password": PASSWORD})
            for h in handles
        ]
    )
    if driver.errors:
        raise SystemExit(f"cost: seeding failed: {driver.errors[:5]}")
    world = World(handles, [d["token"] for _, d in made], [], [])
    active = set(rng.sample(range(plan.users), plan.users // 2))
    world.active = sorted(active)
    edges = [(f, p) for p in range(plan.posters) for f in _followers_of(p, plan, active, rng)]
    say(f"seeding {len(edges)} follows of the {plan.posters} posters...")
    await driver.each(
        [driver.call("PUT", f"/v1/me/following/{handles[p]}", world.tokens[f]) for f, p in edges]
    )
    world.follows = set(edges)
    say(f"seeding {plan.posters * plan.posts_each} posts...")
    for k in range(plan.posts_each):
        posted = await driver.each(
            [
                driver.call("POST", "/v1/posts", world.tokens[p], {"text": f"seed post {k} of {p}"})
                for p in range(plan.posters)
            ]
        )
        world.posts += [d["id"] for s, d in posted if s == 201]
    say(f"the {len(active)} active users read their feeds...")
    await driver.each([driver.call("GET", "/v1/feed", world.tokens[u]) for u in world.active])
    if driver.errors:
        raise SystemExit(f"cost: seeding failed: {driver.errors[:5]}")
    return world


# ---------------------------------------------------------------------- the actions


def _zipf(n: int, rng: random.Random) -> int:
    return ol.zipf_index(n, rng)


class Actions:
    """The requests of each phase, picked Zipf-like from a seed; new edges and likes only."""

    def __init__(self, world: World, plan: Plan, seed: int, tag: str, secret: bytes) -> None:
        self.w = world
        self.plan = plan
        self.rng = random.Random(seed)
        self.tag = tag  # keeps signup handles apart between rounds
        # Legacy accounts apart between runs too (a run on kept data finds earlier ones linked).
        self.legacy_rng = random.Random(tag)
        self.secret = secret  # the stack's legacy identity provider's (its owners' credentials)

    def _user(self) -> int:
        return _zipf(len(self.w.handles), self.rng)

    def _post(self) -> str:
        return self.w.posts[-1 - _zipf(len(self.w.posts), self.rng)]

    def get_user(self, driver: Driver, i: int) -> Any:
        return driver.call("GET", f"/v1/users/{self.w.handles[self._user()]}")

    def get_post(self, driver: Driver, i: int) -> Any:
        return driver.call("GET", f"/v1/posts/{self._post()}", self.w.tokens[self._user()])

    def feed(self, driver: Driver, i: int) -> Any:
        reader = self.w.active[_zipf(len(self.w.active), self.rng)]
        return driver.call("GET", "/v1/feed?limit=20", self.w.tokens[reader])

    def like(self, driver: Driver, i: int) -> Any:
        while True:
            who, post = self._user(), self._post()
            if (who, post) not in self.w.likes:
                self.w.likes.add((who, post))
                return driver.call("PUT", f"/v1/posts/{post}/like", self.w.tokens[who])

    def follow(self, driver: Driver, i: int) -> Any:
        while True:
            follower, followee = self._user(), self._user()
            if follower != followee and (follower, followee) not in self.w.follows:
                self.w.follows.add((follower, followee))
                path = f"/v1/me/following/{self.w.handles[followee]}"
                return driver.call("PUT", path, self.w.tokens[follower])

    def post(self, driver: Driver, i: int) -> Any:
        author = _zipf(self.plan.posters, self.rng)
        return driver.call(
            "POST",
            "/v1/posts",
            self.w.tokens[author],
            {"text": f"cost post {self.tag}-{i}"},
            {"Idempotency-Key": uuid.uuid4().hex},
        )

    def signup(self, driver: Driver, i: int) -> Any:
        return driver.call(
            "POST", "/v1/accounts", body={"handle": f"s{self.tag}{i:05d}", "password": PASSWORD}
        )

    async def signup_legacy(self, driver: Driver, i: int) -> Any:
        """A newcomer with a legacy account: its provider's assertion, then the account it
        links — no password, so no password hash (the launch's signups)."""
        for _ in range(5):  # a legacy account an earlier run linked: another one
            legacy_id = str(self.legacy_rng.randint(500_000, 1_000_000))
            body = {"legacy_id": legacy_id, "credential": credential(self.secret, legacy_id)}
            status, made = await driver.call("POST", "/v1/legacy/assertions", body=body)
            if status != 201:
                return status, made
            body = {"legacy_assertion": made["assertion"]}
            status, made = await driver.call("POST", "/v1/accounts", body=body, expected=(409,))
            if status != 409:
                return status, made
        driver.errors.append(f"POST /v1/accounts: {status} five times")
        return status, made


async def _has_provider() -> bool:
    """Whether the stack serves the legacy identity provider (from its API document)."""
    async with aiohttp.ClientSession() as http, http.get(f"{BASE_URL}/openapi.json") as reply:
        document = await reply.json()
    return "/v1/legacy/assertions" in document.get("paths", {})


class Backlog:
    """The async platform's backlog, read through one consumer and one admin client kept for a
    round: a phase ends with a few checks a second apart, and the broker's CPU for them counts
    as the phase's (a check that connected afresh also paid for connections and metadata)."""

    def __init__(self) -> None:
        self._stack = AsyncExitStack()
        self._consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)

    async def __aenter__(self) -> Backlog:
        await self._consumer.start()
        self._stack.push_async_callback(self._consumer.stop)
        await self._admin.start()
        self._stack.push_async_callback(self._admin.close)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def jobs(self) -> int:
        """Jobs not yet done: records of every job topic past its consumer group's committed
        offset (from the broker: a worker still joining its group reports no lag of its own),
        and what the workers hold (fetched, running)."""
        kinds = await collect(REDIS_URL)
        held = sum(int(k["in_flight"] + k["queued"]) for k in kinds.values())
        return held + await self._uncommitted()

    async def _uncommitted(self) -> int:
        topics = [t for t in await self._consumer.topics() if t.startswith("jobs.")]
        work = [t for t in topics if not t.endswith(".dead")]
        parts = [
            TopicPartition(t, p) for t in work for p in self._consumer.partitions_for_topic(t) or ()
        ]
        if not parts:
            return 0
        ends = await self._consumer.end_offsets(parts)
        starts = await self._consumer.beginning_offsets(parts)
        left = 0
        for kind in {t.split(".")[1] for t in work}:
            committed = await self._admin.list_consumer_group_offsets(f"mt-workers.{kind}")
            for tp in parts:
                if tp.topic.split(".")[1] == kind:
                    done = committed[tp].offset if tp in committed else -1
                    left += max(0, ends[tp] - max(done, starts[tp]))
        return left

    async def drained(self, timeout_s: float = 180.0) -> float:
        """Seconds until the async platform has nothing left (three empty samples in a row, a
        second apart: the workers commit their offsets every 0.2 s)."""
        started = time.monotonic()
        empty = 0
        while empty < 3:
            if time.monotonic() - started > timeout_s:
                raise SystemExit(f"cost: the async backlog did not drain in {timeout_s:.0f} s")
            empty = empty + 1 if await self.jobs() == 0 else 0
            await asyncio.sleep(1.0)
        return time.monotonic() - started


@dataclass
class Phase:
    action: str
    count: int
    wall_s: float
    cpu_ms: dict[str, float]  # per process, over the phase
    idle_ms_per_s: dict[str, float] = field(default_factory=dict)  # set once the round ends

    @property
    def per_action_ms(self) -> dict[str, float]:
        """Per process: its CPU over the phase less its idle burn, per action."""
        return {
            name: round((cpu - self.idle_ms_per_s.get(name, 0.0) * self.wall_s) / self.count, 3)
            for name, cpu in self.cpu_ms.items()
        }

    @property
    def total_ms(self) -> float:
        return round(sum(self.per_action_ms.values()), 2)


async def idle_burn(pids: dict[str, int], seconds: float, backlog: Backlog) -> dict[str, float]:
    """ms of CPU per second each process spends with nothing to do."""
    await backlog.drained()
    await asyncio.sleep(2.0)  # what the last answers set going (a checkpoint, spans) settles
    before = stackcpu.snapshot(pids)
    await asyncio.sleep(seconds)
    return stackcpu.snapshot(pids).minus(before)


async def warm_up(
    driver: Driver, actions: Actions, counts: dict[str, int], backlog: Backlog
) -> None:
    """A tenth of each phase, not measured: the stack was just started, and the broker's JVM
    compiles its hot paths during its first minute of work (uncounted, a phase's Kafka CPU
    followed whichever phase first made jobs: 5-10 ms per post after phases that made none)."""
    errors_before = len(driver.errors)
    for action, count in counts.items():
        build: Callable[[Driver, int], Any] = getattr(actions, action)
        await driver.each([build(driver, count + i) for i in range(max(5, count // 10))])
    await backlog.drained()
    if len(driver.errors) > errors_before:
        say(f"cost: warming up: {len(driver.errors) - errors_before} failed: {driver.errors[-3:]}")


async def phase(
    driver: Driver,
    actions: Actions,
    action: str,
    count: int,
    pids: dict[str, int],
    backlog: Backlog,
) -> Phase:
    build: Callable[[Driver, int], Any] = getattr(actions, action)
    errors_before = len(driver.errors)
    before = stackcpu.snapshot(pids)
    await driver.each([build(driver, i) for i in range(count)])
    await backlog.drained()
    after = stackcpu.snapshot(pids)
    failed = len(driver.errors) - errors_before
    if failed > count // 100:
        raise SystemExit(f"cost: {failed} of {count} {action}s failed: {driver.errors[-5:]}")
    cpu = {n: (after.cpu_s[n] - before.cpu_s.get(n, after.cpu_s[n])) * 1000 for n in after.cpu_s}
    return Phase(action, count, after.at - before.at, cpu)


# ---------------------------------------------------------------------- a round on one side


@dataclass
class Run:
    plan: Plan
    counts: dict[str, int]
    concurrency: int
    idle_s: float
    folder: Path
    profile: tuple[str, ...] = ()
    # Signups' handles of this run (kept data holds an earlier run's)
    tag: str = field(default_factory=lambda: f"{int(time.time()) % 36**4:x}")
    worlds: dict[str, World] = field(default_factory=dict)
    results: dict[str, list[Phase]] = field(default_factory=dict)  # side -> phases of all rounds
    idle: dict[str, list[dict[str, float]]] = field(default_factory=dict)


async def _session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=64)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))


async def prepare(side: Side, run: Run, reuse: bool) -> World:
    """Start the side's stack, seeded (once) and with the real password cost."""
    plan_doc = run.plan.as_json()
    seeded = side.seed_file.exists() and reuse
    if seeded and json.loads(side.seed_file.read_text()).get("plan") != plan_doc:
        seeded = False
    if not seeded:
        say(f"{side.name}: a fresh stack ({side.revision}) to seed...")
        _wipe(side)
        side.minithreads("up", "--no-install", extra=CHEAP_HASH_ENV)
        async with await _session() as http:
            world = await seed(Driver(http, run.concurrency), run.plan)
        async with Backlog() as backlog:
            await backlog.drained(600)
        _save(side, run, world)
        side.minithreads("down", "users")
    else:
        world = World.from_json(json.loads(side.seed_file.read_text())["world"])
        say(f"{side.name}: its stack ({side.revision}), seeded earlier...")
    side.minithreads("up", "--no-install")  # users with Argon2id's real cost
    return world


def _save(side: Side, run: Run, world: World) -> None:
    """What the side's data holds, for a later run on it: with the likes and follows made, so
    that run makes new ones (a repeated like or follow is a no-op, far cheaper than one)."""
    side.seed_file.write_text(json.dumps({"plan": run.plan.as_json(), "world": world.as_json()}))


def _wipe(side: Side) -> None:
    subprocess.run([side.cli, "down"], env=side.env(), capture_output=True, check=False)
    data = side.home / "data"
    if data.exists():
        subprocess.run(["rm", "-rf", str(data)], check=True)
    side.seed_file.unlink(missing_ok=True)


PYTHON_PROCESSES = (
    "gateway",
    "users",
    "graph",
    "posts",
    "counters",
    "feed",
    "workers",
    "kv-1",
    "kv-2",
    "kv-3",
)


class Profiler:
    """py-spy on every Python process of the stack for one phase: collapsed stacks per process
    (``<folder>/<action>.<process>.txt``, flamegraph.pl's input) to read with ``profile_top``."""

    def __init__(self, folder: Path, pids: dict[str, int]) -> None:
        self.folder = folder
        self.pids = {n: p for n, p in pids.items() if n in PYTHON_PROCESSES}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, action: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        spy = str(Path(sys.executable).parent / "py-spy")
        for name, pid in self.pids.items():
            out = self.folder / f"{action}.{name}.txt"
            self.procs.append(
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "-p",
                        str(pid),
                        "-r",
                        "250",
                        "-f",
                        "raw",
                        "--nonblocking",
                        "-o",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            proc.wait(timeout=30)
        self.procs = []


async def round_on(side: Side, run: Run, number: int, reuse: bool) -> None:
    world = run.worlds.get(side.name)
    if world is None:
        world = run.worlds[side.name] = await prepare(side, run, reuse)
    else:
        side.minithreads("up", "--no-install")
    try:
        async with Backlog() as backlog:
            await _measure(side, run, number, world, backlog)
    finally:
        _save(side, run, world)
        side.minithreads("down")


async def _measure(side: Side, run: Run, number: int, world: World, backlog: Backlog) -> None:
    """One round's phases on a warmed stack, between two measures of its idle burn."""
    pids = side.pids()
    actions = Actions(
        world,
        run.plan,
        run.plan.seed * 1000 + number,
        f"{side.name[0]}{number}{run.tag}",
        ensure_secret(side.home),
    )
    kinds = [a for a in ACTIONS if a not in NEEDS_PROVIDER or await _has_provider()]
    phases = []
    async with await _session() as http:
        driver = Driver(http, run.concurrency)
        await warm_up(driver, actions, {a: run.counts[a] for a in kinds}, backlog)
        idle_before = await idle_burn(pids, run.idle_s, backlog)
        for action in kinds:
            profiler = None
            if action in run.profile:
                profiler = Profiler(run.folder / f"profile-{side.name}", pids)
                profiler.start(action)
            try:
                done = await phase(driver, actions, action, run.counts[action], pids, backlog)
            finally:
                if profiler is not None:
                    profiler.stop()
            phases.append(done)
            say(f"{side.name} round {number}: {action:<8} {done.count} in {done.wall_s:.1f} s")
    idle_after = await idle_burn(pids, run.idle_s, backlog)
    # The lower of the two, per process: extra work in either (a JVM's collection after a
    # busy phase, a checkpoint) was caused by the actions and is theirs.
    idle = {n: min(idle_before.get(n, 0.0), idle_after.get(n, 0.0)) for n in idle_after}
    run.idle.setdefault(side.name, []).append(idle)
    say(
        f"{side.name} round {number}: idle burn {sum(idle_before.values()):.0f} ms/s before, "
        f"{sum(idle_after.values()):.0f} after"
    )
    for done in phases:
        done.idle_ms_per_s = idle
        say(f"{side.name} round {number}: {done.action:<8} {done.total_ms:7.2f} ms/action")
    run.results.setdefault(side.name, []).extend(phases)


# ---------------------------------------------------------------------- the report


def medians(phases: list[Phase], action: str) -> dict[str, float]:
    """Per process, the median over the rounds of an action's cost; ``total`` too."""
    mine = [p for p in phases if p.action == action]
    if not mine:
        return {}
    names = sorted({n for p in mine for n in p.per_action_ms})
    out = {n: round(statistics.median(p.per_action_ms.get(n, 0.0) for p in mine), 2) for n in names}
    out["total"] = round(statistics.median(p.total_ms for p in mine), 2)
    return out


def table(run: Run, sides: list[Side]) -> tuple[list[str], dict[str, Any]]:
    lines = []
    report: dict[str, Any] = {}
    head = f"{'action':<10}" + "".join(f"{s.name + ' ms':>12}" for s in sides)
    head += f"{'ratio':>8}{'target':>8}" if len(sides) == 2 else f"{'target':>8}"
    lines.append(head)
    for action in ACTIONS:
        per_side = {s.name: medians(run.results.get(s.name, []), action) for s in sides}
        row = f"{action:<10}" + "".join(
            f"{per_side[s.name].get('total', float('nan')):>12.2f}" for s in sides
        )
        entry: dict[str, Any] = {s.name: per_side[s.name] for s in sides}
        if len(sides) == 2:
            base, this = per_side["base"].get("total"), per_side["this"].get("total")
            ratio = round(base / this, 2) if base and this and this > 0 else None
            entry["ratio"] = ratio
            row += f"{ratio if ratio is not None else '-':>8}"
        target = TARGET_MS.get(action)
        entry["target_ms"] = target
        row += f"{'<= ' + str(target) if target else '-':>8}"
        lines.append(row)
        report[action] = entry
    return lines, report


def breakdown(run: Run, side: Side) -> list[str]:
    lines = [f"per process, {side.name} ({side.revision}), ms per action:"]
    for action in ACTIONS:
        m = medians(run.results.get(side.name, []), action)
        parts = sorted(((n, v) for n, v in m.items() if n != "total"), key=lambda kv: -kv[1])
        shown = ", ".join(f"{n} {v:.2f}" for n, v in parts if abs(v) >= 0.05)
        lines.append(f"  {action:<9}{shown}")
    return lines


# ---------------------------------------------------------------------- main


def _rounds(sides: list[Side], rounds: int) -> Iterator[tuple[int, Side]]:
    for number in range(1, rounds + 1):
        order = sides if number % 2 else list(reversed(sides))  # neither side always goes first
        for side in order:
            yield number, side


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=os.environ.get("COST_BASE", ""))
    parser.add_argument("--only", action="store_true", help="this tree alone")
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("COST_ROUNDS", "2")))
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--posters", type=int, default=100)
    parser.add_argument("--followers", type=int, default=100)
    parser.add_argument("--posts-each", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2023)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--idle-s", type=float, default=15.0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies each phase's count")
    parser.add_argument(
        "--reseed", action="store_true", help="seed the base afresh too, not only this tree"
    )
    parser.add_argument(
        "--profile",
        default="",
        help="comma-separated actions whose phase runs under py-spy (skews their CPU figures)",
    )
    parser.add_argument(
        "--keep-data",
        action="store_true",
        help="reuse this tree's data of an earlier run of the same plan (when its layout is "
        "unchanged): iterating without seeding again",
    )
    args = parser.parse_args()
    if not args.only and not args.base:
        parser.error("--base REV (or COST_BASE), or --only")
    ensure_ports_free()
    counts = {
        "signup_legacy": 60,
        "get_user": 600,
        "get_post": 600,
        "feed": 400,
        "like": 400,
        "follow": 300,
        "post": 200,
        "signup": 60,
    }
    folder = REPO / "loadtest" / "reports" / time.strftime("%Y%m%d-%H%M%SZ", time.gmtime())
    run = Run(
        Plan(args.users, args.posters, args.followers, args.posts_each, args.seed),
        {k: max(10, int(v * args.scale)) for k, v in counts.items()},
        args.concurrency,
        args.idle_s,
        folder,
        tuple(a for a in args.profile.split(",") if a),
    )
    sides = [this_side()] if args.only else [base_side(args.base), this_side()]
    say(
        f"{' vs '.join(f'{s.name} {s.revision}' for s in sides)}; {args.rounds} round(s); "
        f"report in {folder} (Ctrl-C stops)"
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        for number, side in _rounds(sides, args.rounds):
            # This tree's data is seeded afresh in each run (its code, so its layout, may have
            # changed); the base's is kept between runs (its code cannot have).
            reuse = not args.reseed if side.name == "base" else args.keep_data
            await round_on(side, run, number, reuse=reuse)
    finally:
        lines, report = table(run, sides)
        text = "\n".join(lines + [line for s in sides for line in breakdown(run, s)])
        print(text)
        folder.mkdir(parents=True, exist_ok=True)
        doc = {
            "sides": {s.name: s.revision for s in sides},
            "plan": run.plan.as_json(),
            "counts": run.counts,
            "concurrency": run.concurrency,
            "rounds": args.rounds,
            "idle_ms_per_s": {
                name: statistics.median(sum(i.values()) for i in idles)
                for name, idles in run.idle.items()
            },
            "actions": report,
            "phases": {name: [p.__dict__ for p in phases] for name, phases in run.results.items()},
        }
        (folder / "cost.json").write_text(json.dumps(doc, indent=1))
        say(f"report: {folder / 'cost.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
