"""The async SDK of the REST API v1: one method per row of the contract (DESIGN.md §3).

Retry rule — a request is retried (up to ``retries`` times, within the client's retry
budget) only when sending it twice cannot do anything twice:

* any request the server refused before doing anything (a 429, or a 503 ``overloaded``:
  admission at the edge or a saturated service turned it away);
* on any other 503 or a connection failure, GET, PUT and DELETE, which the contract makes
  idempotent, and POST /v1/posts, because it always carries an ``Idempotency-Key`` (one per
  logical call, reused by its retries), so the server creates the post once.

Other writes — POST /v1/accounts, /v1/sessions, /v1/me/imports and PATCH /v1/me — are not
sent again after an answer that leaves their outcome open; that failure is the caller's to
handle, since a retry could sign up twice or start a second import. (aiohttp itself resends
GET, PUT and DELETE once when a pooled keep-alive connection turns out to be closed; that is
within the same rule.)

Waits between attempts: exponential backoff with full jitter, at least the server's
``Retry-After`` (capped); retries stay within a :class:`~mt_client.retry.RetryBudget` (a
fifth of the requests sent, by default), so a client never multiplies the load a server is
refusing — see :mod:`mt_client.retry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import NamedTuple, Self, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp

from mt_client.errors import (
    ApiError,
    BadResponse,
    ConnectionFailed,
    Unauthorized,
    error_from_response,
)
from mt_client.models import (
    Import,
    LegacyAccount,
    LegacyAssertion,
    LegacyFollowing,
    Notification,
    Page,
    Post,
    Session,
    ShapeError,
    User,
)
from mt_client.retry import Backoff, RetryBudget

T = TypeVar("T")

_IDEMPOTENT = frozenset({"GET", "PUT", "DELETE"})


class _Reply(NamedTuple):
    status: int
    data: object  # the decoded JSON body; None for 204


class Client:
    """A client of one server, as one user (or anonymous until signup or login).

    Use as ``async with Client(url) as client: ...``; it owns one HTTP connection pool.
    ``timeout_s`` bounds each attempt; ``retries`` is how many times a safe request is tried
    again after the first attempt, within ``budget`` (shared by every call of the client)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = 10,
        retries: int = 3,
        backoff: Backoff | None = None,
        budget: RetryBudget | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = _checked_base_url(base_url)
        self.token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._retries = retries
        self._backoff = backoff or Backoff()
        self._budget = budget or RetryBudget()
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._http = aiohttp.ClientSession(
            timeout=self._timeout, headers={"Accept": "application/json"}
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- accounts and sessions ------------------------------------------------------------

    async def legacy_assertion(
        self, legacy_id: str, credential: str, *, audience: str | None = None
    ) -> LegacyAssertion:
        """Prove to the legacy identity provider that you own ``legacy_id`` (its credential):
        its assertion signs you up linked to it, or logs its account in."""
        body = _without_none(legacy_id=legacy_id, credential=credential, audience=audience)
        return await self._json(
            "POST", "/v1/legacy/assertions", LegacyAssertion.from_json, body=body
        )

    async def signup(
        self,
        handle: str | None = None,
        *,
        password: str | None = None,
        display_name: str | None = None,
        legacy_assertion: LegacyAssertion | None = None,
    ) -> Session:
        """Create an account and use its token from now on. With ``legacy_assertion`` the
        account is linked to that legacy account, ``handle`` defaults to the legacy handle, and
        ``password`` may be left out (the account then logs in with an assertion)."""
        body = _without_none(
            handle=handle,
            password=password,
            display_name=display_name,
            legacy_assertion=legacy_assertion.assertion if legacy_assertion else None,
        )
        session = await self._json("POST", "/v1/accounts", Session.from_json, body=body)
        self.token = session.token
        return session

    async def login(
        self,
        handle: str | None = None,
        password: str | None = None,
        *,
        legacy_assertion: LegacyAssertion | None = None,
    ) -> Session:
        """Start a session (with handle and password, or a legacy assertion) and use its token
        from now on."""
        body = (
            {"legacy_assertion": legacy_assertion.assertion}
            if legacy_assertion is not None
            else _without_none(handle=handle, password=password)
        )
        session = await self._json("POST", "/v1/sessions", Session.from_json, body=body)
        self.token = session.token
        return session

    async def logout(self) -> None:
        """End this client's session: its token stops working, here and on the server."""
        # A 401 means the token already does not work (e.g. a retry after our lost answer).
        with contextlib.suppress(Unauthorized):
            await self._no_content("DELETE", "/v1/sessions/current")
        self.token = None

    async def me(self) -> User:
        return await self._json("GET", "/v1/me", User.from_json)

    async def update_me(self, *, display_name: str | None = None, bio: str | None = None) -> User:
        """Change the fields given (None leaves a field as it is)."""
        body = _without_none(display_name=display_name, bio=bio)
        return await self._json("PATCH", "/v1/me", User.from_json, body=body)

    # -- users and the follow graph -------------------------------------------------------

    async def user(self, handle: str) -> User:
        return await self._json("GET", f"/v1/users/{_seg(handle)}", User.from_json)

    async def follow(self, handle: str) -> None:
        await self._no_content("PUT", f"/v1/me/following/{_seg(handle)}")

    async def unfollow(self, handle: str) -> None:
        await self._no_content("DELETE", f"/v1/me/following/{_seg(handle)}")

    async def followers(
        self, handle: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[User]:
        path = f"/v1/users/{_seg(handle)}/followers"
        return await self._page(path, User.from_json, limit, cursor)

    async def following(
        self, handle: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[User]:
        path = f"/v1/users/{_seg(handle)}/following"
        return await self._page(path, User.from_json, limit, cursor)

    async def search_users(
        self, q: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[User]:
        """Users whose handle starts with ``q``."""
        return await self._page("/v1/search/users", User.from_json, limit, cursor, q=q)

    # -- importing the legacy follow graph ------------------------------------------------

    async def start_import(self) -> Import:
        """Start copying the follow graph of this account's legacy account (202: it runs on)."""
        return await self._json("POST", "/v1/me/imports", Import.from_json, body={})

    async def get_import(self, import_id: str) -> Import:
        return await self._json("GET", f"/v1/me/imports/{_seg(import_id)}", Import.from_json)

    async def watch_import(
        self, import_id: str, *, interval_s: float = 1.0
    ) -> AsyncIterator[Import]:
        """Poll an import every ``interval_s``, yielding each state, the finished one last."""
        while True:
            current = await self.get_import(import_id)
            yield current
            if current.finished:
                return
            await asyncio.sleep(interval_s)

    async def legacy_account(self, legacy_id: str) -> LegacyAccount:
        path = f"/v1/legacy/accounts/{_seg(legacy_id)}"
        return await self._json("GET", path, LegacyAccount.from_json)

    async def legacy_following(
        self, legacy_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[LegacyFollowing]:
        path = f"/v1/legacy/accounts/{_seg(legacy_id)}/following"
        return await self._page(path, LegacyFollowing.from_json, limit, cursor)

    # -- posts, likes, feed ---------------------------------------------------------------

    async def post(
        self, text: str, *, reply_to: str | None = None, idempotency_key: str | None = None
    ) -> Post:
        """Publish a post (or a reply). The idempotency key — the caller's, else a fresh one —
        is the same on every retry of this call, so the post is created at most once."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        body = _without_none(text=text, reply_to=reply_to)
        return await self._json("POST", "/v1/posts", Post.from_json, body=body, headers=headers)

    async def get_post(self, post_id: str) -> Post:
        return await self._json("GET", f"/v1/posts/{_seg(post_id)}", Post.from_json)

    async def delete_post(self, post_id: str) -> None:
        """Delete one's own post. A :class:`NotFound` after a lost connection may mean an
        earlier attempt of this call deleted it (the answer, not the work, was lost)."""
        await self._no_content("DELETE", f"/v1/posts/{_seg(post_id)}")

    async def replies(
        self, post_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Post]:
        """Replies to a post, oldest first."""
        path = f"/v1/posts/{_seg(post_id)}/replies"
        return await self._page(path, Post.from_json, limit, cursor)

    async def user_posts(
        self, handle: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Post]:
        """A user's posts, newest first."""
        path = f"/v1/users/{_seg(handle)}/posts"
        return await self._page(path, Post.from_json, limit, cursor)

    async def like(self, post_id: str) -> None:
        await self._no_content("PUT", f"/v1/posts/{_seg(post_id)}/like")

    async def unlike(self, post_id: str) -> None:
        await self._no_content("DELETE", f"/v1/posts/{_seg(post_id)}/like")

    async def feed(self, *, limit: int | None = None, cursor: str | None = None) -> Page[Post]:
        """Own and followed authors' posts, newest first."""
        return await self._page("/v1/feed", Post.from_json, limit, cursor)

    async def notifications(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Notification]:
        return await self._page("/v1/notifications", Notification.from_json, limit, cursor)

    async def healthz(self) -> dict[str, object]:
        """The gateway's liveness answer (its own and each service's health)."""
        return await self._json("GET", "/healthz", _json_object)

    # -- every item of a list, following cursors ------------------------------------------

    def iter_feed(self, *, page_size: int | None = None) -> AsyncIterator[Post]:
        return walk(lambda cursor: self.feed(limit=page_size, cursor=cursor))

    def iter_followers(self, handle: str, *, page_size: int | None = None) -> AsyncIterator[User]:
        return walk(lambda cursor: self.followers(handle, limit=page_size, cursor=cursor))

    def iter_following(self, handle: str, *, page_size: int | None = None) -> AsyncIterator[User]:
        return walk(lambda cursor: self.following(handle, limit=page_size, cursor=cursor))

    def iter_user_posts(self, handle: str, *, page_size: int | None = None) -> AsyncIterator[Post]:
        return walk(lambda cursor: self.user_posts(handle, limit=page_size, cursor=cursor))

    def iter_replies(self, post_id: str, *, page_size: int | None = None) -> AsyncIterator[Post]:
        return walk(lambda cursor: self.replies(post_id, limit=page_size, cursor=cursor))

    def iter_notifications(self, *, page_size: int | None = None) -> AsyncIterator[Notification]:
        return walk(lambda cursor: self.notifications(limit=page_size, cursor=cursor))

    def iter_search_users(self, q: str, *, page_size: int | None = None) -> AsyncIterator[User]:
        return walk(lambda cursor: self.search_users(q, limit=page_size, cursor=cursor))

    def iter_legacy_following(
        self, legacy_id: str, *, page_size: int | None = None
    ) -> AsyncIterator[LegacyFollowing]:
        return walk(lambda cursor: self.legacy_following(legacy_id, limit=page_size, cursor=cursor))

    # -- the HTTP exchange ------------------------------------------------------------------

    async def _json(
        self,
        method: str,
        path: str,
        parse: Callable[[object], T],
        *,
        body: Mapping[str, object] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> T:
        reply = await self._request(method, path, body=body, params=params, headers=headers)
        try:
            return parse(reply.data)
        except ShapeError as err:
            raise BadResponse(reply.status, "bad_response", str(err)) from None

    async def _no_content(self, method: str, path: str) -> None:
        await self._request(method, path)

    async def _page(
        self,
        path: str,
        item: Callable[[object], T],
        limit: int | None,
        cursor: str | None,
        **query: str,
    ) -> Page[T]:
        params = dict(query)
        if limit is not None:
            params["limit"] = str(limit)
        if cursor is not None:
            params["cursor"] = cursor
        return await self._json("GET", path, lambda data: Page.from_json(data, item), params=params)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, object] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Reply:
        """Send, retrying when that is safe (see the module docstring)."""
        safe = _retry_safe(method, headers)
        attempt = 0
        self._budget.sent()
        while True:
            try:
                return await self._send(method, path, body, params, headers)
            except ApiError as err:
                again = err.refused or (safe and err.retriable)
                if not again or attempt >= self._retries or not self._budget.spend():
                    raise
                await asyncio.sleep(self._backoff.delay_s(attempt, err.retry_after_s))
                attempt += 1

    async def _send(
        self,
        method: str,
        path: str,
        body: Mapping[str, object] | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> _Reply:
        """One attempt; every failure comes out as an :class:`ApiError`."""
        http = self._session()
        url = self.base_url + path
        sent = {**self._auth(), **(headers or {})}
        try:
            async with http.request(
                method, url, json=body, params=params, headers=sent
            ) as response:
                raw = await response.read()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise ConnectionFailed(
                "unreachable", f"cannot connect to {self.base_url} ({exc})", maybe_applied=False
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            code = "timeout" if isinstance(exc, TimeoutError) else "connection_lost"
            detail = str(exc) or type(exc).__name__
            raise ConnectionFailed(
                code, f"{method} {path}: no complete answer ({detail})", maybe_applied=True
            ) from exc
        return _decode(response.status, raw.decode("utf-8", errors="replace"), response.headers)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("use the client inside `async with Client(...) as client:`")
        return self._http

    def _auth(self) -> dict[str, str]:
        # Sent on public reads too: the server fills in per-viewer fields such as liked_by_me.
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


async def walk(fetch: Callable[[str | None], Awaitable[Page[T]]]) -> AsyncIterator[T]:
    """Every item of a list: fetch the first page (cursor None), then each ``next_cursor``."""
    cursor: str | None = None
    while True:
        page = await fetch(cursor)
        for item in page.items:
            yield item
        if page.next_cursor is None:
            return
        if page.next_cursor == cursor:  # the server would send us round this page forever
            raise BadResponse(200, "bad_response", f"the cursor did not advance: {cursor!r}")
        cursor = page.next_cursor


def _decode(status: int, text: str, headers: Mapping[str, str]) -> _Reply:
    if status >= 400:
        raise error_from_response(status, text, headers.get("Retry-After"))
    if status == 204 or not text:
        return _Reply(status, None)
    try:
        return _Reply(status, json.loads(text))
    except ValueError:
        raise BadResponse(status, "bad_response", f"not JSON: {text[:80]!r}") from None


def _retry_safe(method: str, headers: Mapping[str, str] | None) -> bool:
    return method in _IDEMPOTENT or "Idempotency-Key" in (headers or {})


def _seg(value: str) -> str:
    """One path segment: a handle or id with "/" or "?" in it must not change the route."""
    return quote(value, safe="")


def _without_none(**fields: str | None) -> dict[str, object]:
    """A request body of the given optional fields: an absent field means "not given"."""
    return {name: value for name, value in fields.items() if value is not None}


def _json_object(data: object) -> dict[str, object]:
    if not isinstance(data, dict):
        raise ShapeError(f"expected an object, got {type(data).__name__}")
    return data


def _checked_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return url.rstrip("/")
