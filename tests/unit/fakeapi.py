"""An in-memory stand-in for the REST API v1 (DESIGN.md §3), for the client's unit tests.

It implements just enough of the contract — shapes, statuses, cursors, the error body,
idempotency keys — to exercise the SDK and the CLI, and it can be told to misbehave: answer a
route with an error (``fail``), answer late (``stall``), or drop the connection after doing
the work (``drop``), which is how a client meets an unknown outcome. It runs in a thread with
its own event loop, so both async tests and the CLI (which runs its own ``asyncio.run``) can
talk to it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EPOCH = datetime(2023, 7, 5, 23, 0, tzinfo=UTC)
LEGACY_ACCOUNTS = 50


class Failure(Exception):
    """An error answer in the contract's shape."""

    def __init__(self, status: int, code: str, message: str, retry_after: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    def response(self) -> web.Response:
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        body = {"error": {"code": self.code, "message": self.message}}
        return web.json_response(body, status=self.status, headers=headers)


@dataclass(frozen=True)
class Call:
    method: str
    route: str  # "POST /v1/posts": the method and the route's pattern
    headers: dict[str, str]


@dataclass
class _Post:
    id: str
    author: str
    text: str
    reply_to: str | None
    created_at: datetime
    likes: set[str] = field(default_factory=set)


@dataclass
class FakeApi:
    url: str = ""
    calls: list[Call] = field(default_factory=list)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    follows: set[tuple[str, str]] = field(default_factory=set)
    posts: dict[str, _Post] = field(default_factory=dict)
    imports: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    assertions: dict[str, str] = field(default_factory=dict)  # unspent: assertion -> legacy id
    _faults: dict[str, list[Failure | float | Literal["drop"]]] = field(default_factory=dict)
    _keys: dict[tuple[str, str], str] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    # -- what tests use ---------------------------------------------------------------------

    def fail(self, route: str, *failures: Failure) -> None:
        """The next requests to ``route`` ("METHOD /pattern") get these answers, in order."""
        self._faults.setdefault(route, []).extend(failures)

    def drop(self, route: str) -> None:
        """The next request to ``route`` is handled, then its connection closed unanswered."""
        self._faults.setdefault(route, []).append("drop")

    def stall(self, route: str, seconds: float) -> None:
        """The next request to ``route`` waits this long before it is handled."""
        self._faults.setdefault(route, []).append(seconds)

    def calls_to(self, route: str) -> list[Call]:
        return [call for call in self.calls if call.route == route]

    @classmethod
    @contextmanager
    def running(cls) -> Iterator[FakeApi]:
        """A fresh fake listening on a free port of 127.0.0.1, in its own thread."""
        fake = cls()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        runner = web.AppRunner(fake.app())
        try:
            asyncio.run_coroutine_threadsafe(fake._start(runner), loop).result(10)
            yield fake
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    async def _start(self, runner: web.AppRunner) -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    # -- the application --------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_post("/v1/accounts", self.signup)
        r.add_post("/v1/sessions", self.login)
        r.add_post("/v1/legacy/assertions", self.legacy_assertion)
        r.add_delete("/v1/sessions/current", self.logout)
        r.add_get("/v1/me", self.me)
        r.add_patch("/v1/me", self.update_me)
        r.add_get("/v1/users/{handle}", self.user)
        r.add_put("/v1/me/following/{handle}", self.follow)
        r.add_delete("/v1/me/following/{handle}", self.unfollow)
        r.add_get("/v1/users/{handle}/followers", self.followers)
        r.add_get("/v1/users/{handle}/following", self.following)
        r.add_post("/v1/me/imports", self.start_import)
        r.add_get("/v1/me/imports/{id}", self.get_import)
        r.add_post("/v1/posts", self.create_post)
        r.add_get("/v1/posts/{id}", self.get_post)
        r.add_delete("/v1/posts/{id}", self.delete_post)
        r.add_get("/v1/posts/{id}/replies", self.replies)
        r.add_get("/v1/users/{handle}/posts", self.user_posts)
        r.add_put("/v1/posts/{id}/like", self.like)
        r.add_delete("/v1/posts/{id}/like", self.unlike)
        r.add_get("/v1/feed", self.feed)
        r.add_get("/v1/notifications", self.notifications)
        r.add_get("/v1/search/users", self.search)
        r.add_get("/v1/legacy/accounts/{legacy_id}", self.legacy_account)
        r.add_get("/v1/legacy/accounts/{legacy_id}/following", self.legacy_following)
        r.add_get("/healthz", self.healthz)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = f"{request.method} {resource.canonical if resource else request.path}"
        self.calls.append(Call(request.method, route, dict(request.headers)))
        queued = self._faults.get(route)
        fault = queued.pop(0) if queued else None
        if isinstance(fault, Failure):
            return fault.response()
        if isinstance(fault, float):
            await asyncio.sleep(fault)
        try:
            response = await handler(request)
        except Failure as failure:
            return failure.response()
        if fault == "drop" and request.transport is not None:
            request.transport.close()  # the work is done, but the client never hears of it
        return response

    # -- accounts -----------------------------------------------------------------------------

    async def legacy_assertion(self, request: web.Request) -> web.Response:
        """The legacy identity provider: a legacy account's credential is ``cred-<id>``."""
        body = await request.json()
        legacy_id = body.get("legacy_id", "")
        if body.get("credential") != f"cred-{legacy_id}":
            raise Failure(401, "bad_credentials", "wrong legacy account or credential")
        assertion = f"assertion:{legacy_id}:{self._id()}"
        self.assertions[assertion] = legacy_id
        payload = {
            "assertion": assertion,
            "legacy_id": legacy_id,
            "expires_at": _rfc3339(self._now()),
        }
        return web.json_response(payload, status=201)

    def _spend(self, assertion: str) -> str:
        legacy_id = self.assertions.pop(assertion, None)
        if legacy_id is None:
            raise Failure(401, "invalid_assertion", "not a valid legacy assertion")
        return legacy_id

    async def signup(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("legacy_id") and not body.get("legacy_assertion"):
            raise Failure(401, "assertion_required", "linking needs the provider's assertion")
        legacy_id = self._spend(body["legacy_assertion"]) if body.get("legacy_assertion") else None
        handle = body.get("handle") or (_legacy_handle(legacy_id) if legacy_id else None)
        if not handle or not _valid_handle(handle):
            raise Failure(400, "invalid_handle", "a handle is 1..30 of a-z 0-9 _ .")
        password = body.get("password")
        if (password is not None or not legacy_id) and not 8 <= len(password or "") <= 128:
            raise Failure(400, "invalid_password", "a password is 8..128 characters")
        if handle in self.users:
            raise Failure(409, "handle_taken", f"@{handle} is taken")
        if legacy_id and any(u["legacy_id"] == legacy_id for u in self.users.values()):
            raise Failure(409, "legacy_taken", "that legacy account already has an account")
        self.users[handle] = {
            "id": self._id(),
            "handle": handle,
            "display_name": body.get("display_name"),
            "bio": "",
            "created_at": self._now(),
            "password": password,
            "legacy_id": legacy_id,
        }
        return self._session(handle)

    async def login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("legacy_assertion"):
            legacy_id = self._spend(body["legacy_assertion"])
            linked = [u for u in self.users.values() if u["legacy_id"] == legacy_id]
            if not linked:
                raise Failure(404, "user_not_found", "no account is linked to it")
            return self._session(linked[0]["handle"])
        user = self.users.get(body.get("handle", ""))
        if user is None or user["password"] != body.get("password"):
            raise Failure(401, "bad_credentials", "wrong handle or password")
        return self._session(user["handle"])

    async def logout(self, request: web.Request) -> web.Response:
        self._viewer(request)
        del self.tokens[_bearer(request)]
        return web.Response(status=204)

    async def me(self, request: web.Request) -> web.Response:
        return web.json_response(self._user_json(self._viewer(request)))

    async def update_me(self, request: web.Request) -> web.Response:
        handle = self._viewer(request)
        body = await request.json()
        for name in ("display_name", "bio"):
            if name in body:
                self.users[handle][name] = body[name]
        return web.json_response(self._user_json(handle))

    # -- users and follows ----------------------------------------------------------------------

    async def user(self, request: web.Request) -> web.Response:
        return web.json_response(self._user_json(self._known(request.match_info["handle"])))

    async def follow(self, request: web.Request) -> web.Response:
        viewer, handle = self._viewer(request), self._known(request.match_info["handle"])
        if (viewer, handle) not in self.follows:
            self.follows.add((viewer, handle))
            self._notify(handle, "follow", viewer, None)
        return web.Response(status=204)

    async def unfollow(self, request: web.Request) -> web.Response:
        viewer, handle = self._viewer(request), self._known(request.match_info["handle"])
        self.follows.discard((viewer, handle))
        return web.Response(status=204)

    async def followers(self, request: web.Request) -> web.Response:
        handle = self._known(request.match_info["handle"])
        users = sorted(a for a, b in self.follows if b == handle)
        return _page(request, [self._user_json(u) for u in users])

    async def following(self, request: web.Request) -> web.Response:
        handle = self._known(request.match_info["handle"])
        users = sorted(b for a, b in self.follows if a == handle)
        return _page(request, [self._user_json(u) for u in users])

    async def search(self, request: web.Request) -> web.Response:
        prefix = request.query.get("q", "").lower()
        users = sorted(h for h in self.users if h.startswith(prefix))
        return _page(request, [self._user_json(u) for u in users])

    # -- imports and the legacy graph -----------------------------------------------------------

    async def start_import(self, request: web.Request) -> web.Response:
        legacy_id = self.users[self._viewer(request)]["legacy_id"]
        if legacy_id is None:
            raise Failure(409, "no_legacy_account", "this account is not linked to one")
        followees = _legacy_following(legacy_id)
        pending = sum(1 for f in followees if not self._on_app(f))
        job_id = self._id()
        job = {"id": job_id, "state": "queued", "total": len(followees), "done": 0}
        self.imports[job_id] = {**job, "pending": pending}
        return web.json_response(self.imports[job_id], status=202)

    async def get_import(self, request: web.Request) -> web.Response:
        self._viewer(request)
        job = self.imports.get(request.match_info["id"])
        if job is None:
            raise Failure(404, "not_found", "no such import")
        # Each look advances the job, so a poller sees queued → running → done.
        job["done"] = min(job["total"], job["done"] + 2) if job["state"] != "queued" else 0
        job["state"] = "done" if job["done"] == job["total"] else "running"
        return web.json_response(job)

    async def legacy_account(self, request: web.Request) -> web.Response:
        legacy_id = _known_legacy(request.match_info["legacy_id"])
        following = len(_legacy_following(legacy_id))
        body = {"legacy_id": legacy_id, "handle": _legacy_handle(legacy_id)}
        return web.json_response({**body, "following_count": following})

    async def legacy_following(self, request: web.Request) -> web.Response:
        legacy_id = _known_legacy(request.match_info["legacy_id"])
        items = [
            {"legacy_id": f, "handle": _legacy_handle(f), "on_app": self._on_app(f)}
            for f in _legacy_following(legacy_id)
        ]
        return _page(request, items)

    # -- posts ------------------------------------------------------------------------------------

    async def create_post(self, request: web.Request) -> web.Response:
        viewer = self._viewer(request)
        key = request.headers.get("Idempotency-Key")
        if key and (viewer, key) in self._keys:
            return web.json_response(self._post_json(self._keys[(viewer, key)], viewer), status=201)
        body = await request.json()
        text = str(body.get("text", "")).strip()
        if not 1 <= len(text) <= 500:
            raise Failure(400, "invalid_text", "a post is 1..500 characters")
        reply_to = body.get("reply_to")
        if reply_to is not None and reply_to not in self.posts:
            raise Failure(404, "not_found", "no such post to reply to")
        post = _Post(self._id(), viewer, text, reply_to, self._now())
        self.posts[post.id] = post
        if key:
            self._keys[(viewer, key)] = post.id
        if reply_to is not None:
            self._notify(self.posts[reply_to].author, "reply", viewer, post.id)
        return web.json_response(self._post_json(post.id, viewer), status=201)

    async def get_post(self, request: web.Request) -> web.Response:
        post = self._known_post(request.match_info["id"])
        return web.json_response(self._post_json(post.id, self._maybe_viewer(request)))

    async def delete_post(self, request: web.Request) -> web.Response:
        viewer, post = self._viewer(request), self._known_post(request.match_info["id"])
        if post.author != viewer:
            raise Failure(403, "not_yours", "only its author can delete a post")
        del self.posts[post.id]
        return web.Response(status=204)

    async def replies(self, request: web.Request) -> web.Response:
        parent = self._known_post(request.match_info["id"])
        ids = [p.id for p in self.posts.values() if p.reply_to == parent.id]
        return self._post_page(request, ids)

    async def user_posts(self, request: web.Request) -> web.Response:
        handle = self._known(request.match_info["handle"])
        ids = [p.id for p in reversed(self.posts.values()) if p.author == handle]
        return self._post_page(request, ids)

    async def like(self, request: web.Request) -> web.Response:
        viewer, post = self._viewer(request), self._known_post(request.match_info["id"])
        if viewer not in post.likes:
            post.likes.add(viewer)
            self._notify(post.author, "like", viewer, post.id)
        return web.Response(status=204)

    async def unlike(self, request: web.Request) -> web.Response:
        viewer, post = self._viewer(request), self._known_post(request.match_info["id"])
        post.likes.discard(viewer)
        return web.Response(status=204)

    async def feed(self, request: web.Request) -> web.Response:
        viewer = self._viewer(request)
        authors = {viewer} | {b for a, b in self.follows if a == viewer}
        ids = [p.id for p in reversed(self.posts.values()) if p.author in authors]
        return self._post_page(request, ids)

    async def notifications(self, request: web.Request) -> web.Response:
        notes = list(reversed(self.notes.get(self._viewer(request), [])))
        return _page(request, [{**n, "actor": self._user_json(n["actor"])} for n in notes])

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "serving", "services": {}})

    # -- helpers ----------------------------------------------------------------------------------

    def _id(self) -> str:
        return str(next(self._ids))

    def _now(self) -> datetime:
        return EPOCH + timedelta(seconds=len(self.posts) + len(self.users))

    def _session(self, handle: str) -> web.Response:
        token = f"tok-{self._id()}"
        self.tokens[token] = handle
        return web.json_response({"user": self._user_json(handle), "token": token}, status=201)

    def _maybe_viewer(self, request: web.Request) -> str | None:
        return self.tokens.get(_bearer(request))

    def _viewer(self, request: web.Request) -> str:
        viewer = self._maybe_viewer(request)
        if viewer is None:
            raise Failure(401, "unauthenticated", "a valid bearer token is required")
        return viewer

    def _known(self, handle: str) -> str:
        if handle not in self.users:
            raise Failure(404, "not_found", f"no user @{handle}")
        return handle

    def _known_post(self, post_id: str) -> _Post:
        if post_id not in self.posts:
            raise Failure(404, "not_found", f"no post {post_id}")
        return self.posts[post_id]

    def _on_app(self, legacy_id: str) -> bool:
        return any(u["legacy_id"] == legacy_id for u in self.users.values())

    def _notify(self, handle: str, kind: str, actor: str, post_id: str | None) -> None:
        if handle != actor:
            note = {"id": self._id(), "type": kind, "actor": actor, "post_id": post_id}
            self.notes.setdefault(handle, []).append({**note, "created_at": _rfc3339(self._now())})

    def _user_json(self, handle: str) -> dict[str, Any]:
        user = self.users[handle]
        return {
            "id": user["id"],
            "handle": handle,
            "display_name": user["display_name"],
            "bio": user["bio"],
            "followers_count": sum(1 for _, b in self.follows if b == handle),
            "following_count": sum(1 for a, _ in self.follows if a == handle),
            "posts_count": sum(1 for p in self.posts.values() if p.author == handle),
            "created_at": _rfc3339(user["created_at"]),
        }

    def _post_json(self, post_id: str, viewer: str | None) -> dict[str, Any]:
        post = self.posts[post_id]
        author = self.users[post.author]
        return {
            "id": post.id,
            "author": {
                "id": author["id"],
                "handle": post.author,
                "display_name": author["display_name"],
            },
            "text": post.text,
            "reply_to": post.reply_to,
            "created_at": _rfc3339(post.created_at),
            "like_count": len(post.likes),
            "reply_count": sum(1 for p in self.posts.values() if p.reply_to == post.id),
            "liked_by_me": viewer in post.likes,
        }

    def _post_page(self, request: web.Request, ids: list[str]) -> web.Response:
        viewer = self._maybe_viewer(request)
        return _page(request, [self._post_json(i, viewer) for i in ids])


def _page(request: web.Request, items: list[dict[str, Any]]) -> web.Response:
    """The contract's list: ``limit`` 1..100 (default 20), an opaque cursor (here an offset)."""
    try:
        limit = int(request.query.get("limit", "20"))
        start = int(request.query.get("cursor", "0"))
    except ValueError:
        raise Failure(400, "invalid_page", "limit and cursor must be what we gave") from None
    if not 1 <= limit <= 100:
        raise Failure(400, "invalid_limit", "limit is 1..100")
    end = start + limit
    next_cursor = str(end) if end < len(items) else None
    return web.json_response({"items": items[start:end], "next_cursor": next_cursor})


def _bearer(request: web.Request) -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ")


def _valid_handle(handle: str) -> bool:
    return 1 <= len(handle) <= 30 and all(
        c.isascii() and (c.isalnum() or c in "_.") for c in handle
    )


def _rfc3339(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _known_legacy(legacy_id: str) -> str:
    if not legacy_id.isdigit() or not 1 <= int(legacy_id) <= LEGACY_ACCOUNTS:
        raise Failure(404, "not_found", f"no legacy account {legacy_id}")
    return legacy_id


def _legacy_handle(legacy_id: str) -> str:
    return f"legacy_{legacy_id}"


def _legacy_following(legacy_id: str) -> list[str]:
    """A small deterministic graph: account n follows the next five (wrapping around)."""
    n = int(legacy_id)
    return [str((n + k - 1) % LEGACY_ACCOUNTS + 1) for k in range(1, 6)]
