"""The launch surge as Locust users of the REST API, shaped by the public signup curve.

- ``Newcomer``: signs up linked to a legacy account, taps "import" (one-tap copy of the legacy
  follow graph) and writes a first post; then stays on as an active user: feed reads, likes,
  replies, posts and follows — mostly of the same popular accounts, as everyone did.
- the celebrity: the first newcomer past half-way is a top legacy account not yet on the app;
  the pending follows every earlier importer left for it flood the async platform (a third of
  the newcomers are picked among its legacy followers, so the flood is worth watching).
- ``LaunchShape``: users alive = the scaled, time-compressed cumulative signups
  (see ``surge_curve``); arrivals are signups, and everyone who arrived keeps engaging.

Every effect is written to a ledger (``SURGE_LEDGER``, JSON lines) — acknowledged, or with an
unknown outcome (a timeout, a 5xx) — so that ``surge.py`` can settle the unknown ones and check
that counts equal the truth once the async backlog has drained.

Settings by environment: SURGE_DURATION_S (180), SURGE_SCALE (5e-6), SURGE_HOURS (120),
SURGE_THINK_S (mean pause between an active user's actions, 4), SURGE_LEDGER (a folder).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from locust import FastHttpUser, LoadTestShape, between, events, task
from locust.env import Environment
from mt_client import RetryBudget
from mt_legacy import LegacyGraph
from openloop import assertion_body
from surge_curve import Surge

GRAPH = LegacyGraph()
SURGE = Surge(
    duration_s=float(os.environ.get("SURGE_DURATION_S", "180")),
    scale=float(os.environ.get("SURGE_SCALE", "5e-6")),
    hours=float(os.environ.get("SURGE_HOURS", "120")),
)
THINK_S = float(os.environ.get("SURGE_THINK_S", "4"))
CELEBRITY_AT = 0.5  # of the duration
CELEBRITY_FANS = 0.33  # share of newcomers picked among the celebrity's legacy followers
FIRST_NEWCOMER_RANK = 1_000  # newcomers come from the long tail; top ranks are celebrities


class Ledger:
    """Append-only JSON lines of what the users did, for the invariant check afterwards."""

    def __init__(self, folder: str | None) -> None:
        self._file = None
        self._lock = threading.Lock()
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self._file = (Path(folder) / "ledger.jsonl").open("a", buffering=1)

    def write(self, kind: str, **fields: Any) -> None:
        if self._file is not None:
            with self._lock:
                self._file.write(json.dumps({"kind": kind, **fields}) + "\n")


LEDGER = Ledger(os.environ.get("SURGE_LEDGER"))


class World:
    """What the simulated users know of each other (one Locust process)."""

    def __init__(self) -> None:
        self.handles: list[str] = []
        self.popular: list[str] = []  # the accounts everyone taps "follow" on
        self.posts: list[str] = []
        self.celebrity_rank: int | None = None
        self.celebrity_handle: str | None = None
        self.celebrity_fans: list[int] = []
        self.started_at = time.monotonic()
        self.celebrity_claimed = False

    def celebrity_due(self) -> bool:
        """True once, for the first newcomer past the celebrity's moment."""
        due = time.monotonic() - self.started_at >= SURGE.duration_s * CELEBRITY_AT
        if due and not self.celebrity_claimed and self.celebrity_rank is not None:
            self.celebrity_claimed = True
            return True
        return False

    def remember_post(self, post_id: str) -> None:
        self.posts.append(post_id)
        if len(self.posts) > 5_000:
            del self.posts[:1_000]


WORLD = World()


def _on_app(host: str, handle: str) -> bool:
    try:
        with urllib.request.urlopen(f"{host}/v1/users/{handle}", timeout=10):  # noqa: S310
            return True
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return False
        raise


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _pick_celebrity(environment: Environment, **_: Any) -> None:
    """The most followed legacy account not on the app yet (its default handle unclaimed)."""
    host = environment.host or "http://127.0.0.1:8080"
    for rank in range(7, 500):  # ranks 1-6 are the e2e tests' celebrities
        if not _on_app(host, GRAPH.handle(rank)):
            WORLD.celebrity_rank, WORLD.celebrity_handle = rank, GRAPH.handle(rank)
            break
    rng = random.Random()
    wanted = int(SURGE.total_users * CELEBRITY_FANS) + 20
    while len(WORLD.celebrity_fans) < wanted and WORLD.celebrity_rank is not None:
        n = rng.randint(FIRST_NEWCOMER_RANK, GRAPH.size)
        if GRAPH.out_degree(n) <= 400 and WORLD.celebrity_rank in GRAPH.following(str(n)):
            WORLD.celebrity_fans.append(n)
    WORLD.started_at = time.monotonic()
    LEDGER.write("celebrity", rank=WORLD.celebrity_rank, handle=WORLD.celebrity_handle)


def refused(status: int, reply: Any) -> bool:
    """A refusal before any work (a 429, or a 503 ``overloaded``): a known outcome, nothing
    done — unlike a timeout or another 5xx, which the check settles by repeating."""
    if status == 429:
        return True
    code = reply.get("error", {}).get("code") if isinstance(reply, dict) else None
    return status == 503 and code == "overloaded"


COUNTS: dict[str, int] = {"requests": 0, "shed": 0, "rate_limited": 0, "errors": 0}


@events.request.add_listener  # type: ignore[untyped-decorator]
def _count(response: Any = None, exception: Any = None, **_: Any) -> None:
    COUNTS["requests"] += 1
    status = getattr(response, "status_code", 0) or 0
    if status == 503:
        COUNTS["shed"] += 1
    elif status == 429:
        COUNTS["rate_limited"] += 1
    if exception is not None:
        COUNTS["errors"] += 1


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _write_counts(**_: Any) -> None:
    folder = os.environ.get("SURGE_LEDGER")
    if folder:
        (Path(folder) / "counts.json").write_text(json.dumps(COUNTS))


class Active(FastHttpUser):
    """An account on the app, engaging: the mix of the day-1 peak (posts : likes : feed reads
    = 1 : 2 : 4), plus replies and follows."""

    abstract = True
    wait_time = between(THINK_S * 0.25, THINK_S * 1.75)
    network_timeout = 30.0
    connection_timeout = 10.0

    handle = ""
    token = ""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        # As the app would: retries (after Retry-After) stay a small share of what it sends.
        self.budget = RetryBudget()

    def call(
        self, method: str, path: str, name: str, body: Any = None, headers: Any = None
    ) -> tuple[int, Any]:
        status, parsed, _ = self.call_with_headers(method, path, name, body, headers)
        return status, parsed

    def call_with_headers(
        self, method: str, path: str, name: str, body: Any = None, headers: Any = None
    ) -> tuple[int, Any, float]:
        """One request: (status, parsed body, Retry-After s), status 0 for no response at all.
        A 2xx (or the 409 of a signup of a taken account, which the client expects and answers
        with another pick) is a success in Locust's statistics; a refusal (503 or 429 with
        Retry-After: nothing was done, the app tries again later) is one too, under the name
        with " [refused]" appended, so that each name's latencies are those of the admitted;
        anything else is a failure."""
        sent = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        sent.update(headers or {})
        self.budget.sent()
        with self.client.request(
            method, path, name=name, json=body, headers=sent, catch_response=True
        ) as resp:
            status = resp.status_code or 0
            parsed = None
            if resp.text:
                try:
                    parsed = json.loads(resp.text)
                except ValueError:
                    parsed = None
            retry_after_raw = (resp.headers or {}).get("Retry-After", "")
            try:
                retry_after = float(retry_after_raw or 0)
            except ValueError:
                retry_after = 0.0
            if 200 <= status < 300 or status == 409:
                resp.success()
            elif status in (429, 503) and retry_after_raw:
                resp.request_meta["name"] = f"{name} [refused]"
                resp.success()
            else:
                code = parsed["error"]["code"] if isinstance(parsed, dict) else "no_response"
                resp.failure(f"{status} {code}")
            return status, parsed, retry_after

    def post(self, text: str, reply_to: str | None = None) -> str | None:
        key = uuid.uuid4().hex
        body = {"text": text, **({"reply_to": reply_to} if reply_to else {})}
        name = "POST /v1/posts (reply)" if reply_to else "POST /v1/posts"
        # The intent goes first: a user stopped mid-request (the end of the run) or a timeout
        # leaves it unanswered, and the check settles it by retrying with the same key.
        LEDGER.write("post?", user=self.handle, token=self.token, key=key, body=body)
        status, reply = self.call("POST", "/v1/posts", name, body, headers={"Idempotency-Key": key})
        if status == 201:
            LEDGER.write("post", user=self.handle, id=reply["id"], key=key, reply_to=reply_to)
            WORLD.remember_post(reply["id"])
            return str(reply["id"])
        if refused(status, reply):
            LEDGER.write("refused", key=key)
        return None

    @task(4)
    def read_feed(self) -> None:
        status, reply = self.call("GET", "/v1/feed?limit=20", "GET /v1/feed")
        if status == 200:
            for item in reply["items"][:5]:
                WORLD.remember_post(item["id"])

    @task(2)
    def like(self) -> None:
        if not WORLD.posts:
            return
        post_id = random.choice(WORLD.posts[-500:])
        self._effect("like", f"/v1/posts/{post_id}/like", "PUT /v1/posts/[id]/like", post=post_id)

    @task(1)
    def write_post(self) -> None:
        self.post(f"launch day thoughts #{random.randint(1, 10**6)}")

    @task(1)
    def reply(self) -> None:
        if WORLD.posts:
            self.post("same here!", reply_to=random.choice(WORLD.posts[-500:]))

    @task(1)
    def follow(self) -> None:
        """Mostly the same popular accounts; sometimes someone who just arrived."""
        pool = WORLD.popular if WORLD.popular and random.random() < 0.7 else WORLD.handles[-200:]
        target = random.choice(pool) if pool else None
        if target is None or target == self.handle:
            return
        self._effect(
            "follow", f"/v1/me/following/{target}", "PUT /v1/me/following/[h]", target=target
        )

    def _effect(self, kind: str, path: str, name: str, **what: str) -> None:
        """An idempotent PUT, ledgered as an intent first and as done once acknowledged."""
        key = uuid.uuid4().hex
        LEDGER.write(kind + "?", user=self.handle, token=self.token, path=path, key=key, **what)
        status, reply = self.call("PUT", path, name)
        if 200 <= status < 300:
            LEDGER.write(kind, user=self.handle, **what)
        elif refused(status, reply):
            LEDGER.write("refused", key=key)

    def join(self, pick: Callable[[], str | None]) -> bool:
        """Sign up like the app does: a taken account means another pick; a 503 or 429 means
        trying again after Retry-After (backing off), not hammering the service. A taken
        account right after a failed attempt may be our own (created after we gave up on the
        answer): the app then logs in with the password it just chose."""
        legacy_id, pause_s, unanswered = pick(), 1.0, False
        for _ in range(12):
            if legacy_id is None:
                return False
            status, retry_after_s = self.sign_up(legacy_id)
            if status == 201:
                return True
            if status == 409:
                if unanswered and self.log_in(legacy_id):
                    return True
                legacy_id, unanswered = pick(), False
                continue
            unanswered = status == 0 or status >= 500
            pause_s = self.back_off(retry_after_s, pause_s)
            if not self.may_retry():
                return False
        return False

    def may_retry(self) -> bool:
        """Within the retry budget; past it the user waits a while (the app would show "try
        again later") before spending from a budget that has had time to refill."""
        if self.budget.spend():
            return True
        time.sleep(self.budget.window_s * random.uniform(0.5, 1.5))
        return self.budget.spend()

    def log_in(self, legacy_id: str) -> bool:
        """Into the account a signup of ours made after we stopped waiting for its answer:
        with a fresh assertion of the same legacy account (no password needed)."""
        _, assertion, _ = self.assertion(legacy_id)
        if assertion is None:
            return False
        body = {"legacy_assertion": assertion}
        status, reply = self.call("POST", "/v1/sessions", "POST /v1/sessions", body)
        if status != 201:
            return False
        self.adopt(reply, legacy_id)
        return True

    def persist(self, method: str, path: str, name: str, body: Any) -> Any:
        """A step of onboarding the app retries until it is done (or gives up after a while)."""
        pause_s = 1.0
        for _ in range(8):
            status, reply, retry_after_s = self.call_with_headers(method, path, name, body)
            if 200 <= status < 300:
                return reply
            if 400 <= status < 500 and status != 429:
                return None
            pause_s = self.back_off(retry_after_s, pause_s)
            if not self.may_retry():
                return None
        return None

    @staticmethod
    def back_off(retry_after_s: float, pause_s: float) -> float:
        # (Locust's gevent makes this sleep yield to the other users.)
        time.sleep(max(retry_after_s, pause_s) * random.uniform(0.5, 1.5))
        return min(pause_s * 2, 30.0)

    def assertion(self, legacy_id: str) -> tuple[int, str | None, float]:
        """(status, the legacy provider's assertion for ``legacy_id``, Retry-After seconds):
        the app proves the account with the owner's credential, as Threads did with
        Instagram's login."""
        status, reply, retry_after = self.call_with_headers(
            "POST", "/v1/legacy/assertions", "POST /v1/legacy/assertions", assertion_body(legacy_id)
        )
        return status, reply["assertion"] if status == 201 else None, retry_after

    def sign_up(self, legacy_id: str) -> tuple[int, float]:
        """(status, Retry-After seconds) of one signup attempt linked to ``legacy_id``."""
        status, assertion, retry_after = self.assertion(legacy_id)
        if assertion is None:
            return status, retry_after
        # As Threads' newcomers came, with their Instagram login: no password, no hash.
        body = {"legacy_assertion": assertion}
        status, reply, retry_after = self.call_with_headers(
            "POST", "/v1/accounts", "POST /v1/accounts", body
        )
        if status == 201:
            self.adopt(reply, legacy_id)
        return status, retry_after

    def adopt(self, reply: Any, legacy_id: str) -> None:
        """Become the account in a signup's or login's answer."""
        self.handle, self.token = reply["user"]["handle"], reply["token"]
        WORLD.handles.append(self.handle)
        if len(WORLD.popular) < 10:
            WORLD.popular.append(self.handle)  # the first arrivals become the ones to follow
        LEDGER.write("user", user=self.handle, token=self.token, legacy_id=legacy_id)


class Newcomer(Active):
    def on_start(self) -> None:
        if WORLD.celebrity_due():
            self.be_the_celebrity()
            return
        if not self.join(self._pick_legacy_account):
            self.stop()  # could not join: this user is done
            return
        reply = self.persist("POST", "/v1/me/imports", "POST /v1/me/imports", {})
        if reply is not None:
            LEDGER.write("import", user=self.handle, token=self.token, id=reply["id"])
        self.post("hello threads!")

    def be_the_celebrity(self) -> None:
        """The top legacy account that joins mid-surge: its pending follows flood the workers."""
        rank = WORLD.celebrity_rank
        picks = iter([str(rank)] if rank is not None else [])
        if not self.join(lambda: next(picks, None)):
            self.stop()
            return
        WORLD.popular.insert(0, self.handle)
        LEDGER.write("celebrity_joined", user=self.handle, at=time.time())
        self.post("I'm here too")

    @staticmethod
    def _pick_legacy_account() -> str:
        if WORLD.celebrity_fans and random.random() < CELEBRITY_FANS:
            return str(WORLD.celebrity_fans.pop())
        return str(random.randint(FIRST_NEWCOMER_RANK, GRAPH.size))


class LaunchShape(LoadTestShape):
    """Users alive follow the scaled cumulative signups (the celebrity is one of them)."""

    def tick(self) -> tuple[int, float] | None:
        t = float(self.get_run_time())  # type: ignore[no-untyped-call]
        if t >= SURGE.duration_s:
            return None
        users = max(1, SURGE.users_at(t))
        # Spawn at the curve's arrival rate a little ahead, so the count keeps up with it.
        rate = max(1.0, SURGE.arrivals_per_s(t + 1) * 1.5)
        return users, rate
