"""The REST API of the running stack, as the end-to-end and chaos tests use it.

Every response is checked against the contract's general rules on the way (an error always
has the error body; 429/503 carry Retry-After); tests then check the specifics. A request
refused at admission (503 ``overloaded``: nothing was done) is sent again after its
Retry-After, as the mobile client does, unless a test asks to see the refusal.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from tests.legacy import legacy_credential

BASE = "http://127.0.0.1:8080"
T = TypeVar("T")
PASSWORD = "correct horse"


@dataclass(frozen=True)
class Joined:
    """A newcomer linked to a legacy account, and the import it started."""

    user: dict[str, Any]
    token: str
    import_id: str


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def code(self) -> str:
        return str(self.body["error"]["code"])


class Api:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        *,
        patience_s: float = 120,
    ) -> Reply:
        """One request; a refusal (503 ``overloaded``) is sent again after its Retry-After,
        for up to ``patience_s`` (0: the caller sees it). Under overload the lower classes
        wait for the critical: a default-class request may be turned away for a while."""
        give_up = asyncio.get_running_loop().time() + patience_s
        while True:
            reply = await self._once(method, path, body, token, headers, raw)
            if reply.status != 503 or reply.code != "overloaded":
                return reply
            wait_s = float(reply.headers["Retry-After"]) * random.uniform(1, 1.5)
            if asyncio.get_running_loop().time() + wait_s > give_up:
                return reply
            await asyncio.sleep(wait_s)

    async def _once(
        self,
        method: str,
        path: str,
        body: Any,
        token: str | None,
        headers: dict[str, str] | None,
        raw: bytes | None,
    ) -> Reply:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        async with self.http.request(method, BASE + path, data=data, headers=sent) as resp:
            text = await resp.text()
            parsed = json.loads(text) if text else None
            reply = Reply(resp.status, parsed, dict(resp.headers))
        _check_rules(reply)
        return reply

    async def create_account(self, body: dict[str, Any]) -> Reply:
        """POST /v1/accounts as a mobile client does it: a signup refused as ``overloaded``
        (at admission, or the password hasher's queue would outlast the request; nothing was
        done either way) is sent again after its Retry-After."""
        return await self.call("POST", "/v1/accounts", body)

    async def signup(self, prefix: str = "u", **extra: Any) -> tuple[dict[str, Any], str]:
        handle = f"{prefix}{secrets.token_hex(5)}"
        reply = await self.create_account({"handle": handle, "password": PASSWORD, **extra})
        assert reply.status == 201, reply.body
        return reply.body["user"], reply.body["token"]

    async def legacy_assertion(self, legacy_id: str, **extra: Any) -> str:
        """The legacy identity provider's assertion for ``legacy_id``, asked with its owner's
        credential (the operator's secret in ``.local`` derives it)."""
        body = {"legacy_id": legacy_id, "credential": legacy_credential(legacy_id), **extra}
        reply = await self.call("POST", "/v1/legacy/assertions", body)
        assert reply.status == 201, reply.body
        return str(reply.body["assertion"])

    async def signup_legacy(self, legacy_id: str) -> tuple[dict[str, Any], str] | None:
        """Sign up linked to a legacy account; None if an earlier run linked it already (the KV
        keeps its data between runs)."""
        body = {"legacy_assertion": await self.legacy_assertion(legacy_id), "password": PASSWORD}
        reply = await self.create_account(body)
        if reply.status == 409:
            return None
        assert reply.status == 201, reply.body
        return reply.body["user"], reply.body["token"]

    async def join_and_start_import(self, legacy_id: str, patience_s: float = 600) -> Joined | None:
        """Sign up linked to ``legacy_id`` and tap "import"; None if an earlier run linked that
        account already. While signups (critical) alone fill the box, the import's start
        (default) waits for them: ``patience_s`` bounds that wait."""
        made = await self.signup_legacy(legacy_id)
        if made is None:
            return None
        started = await self.call(
            "POST", "/v1/me/imports", {}, token=made[1], patience_s=patience_s
        )
        assert started.status == 202, started.body
        return Joined(made[0], made[1], started.body["id"])

    async def wait_imports(self, joined: list[Joined], timeout_s: float = 600) -> None:
        """Until every one of many imports is done. Imports are opportunistic work: they run
        once the foreground leaves room, so the newcomers' signups come first and their
        imports after; meanwhile the async platform is watched rather than every import
        polled (a thousand polls would be foreground load of their own)."""
        await eventually(
            imports_idle, timeout_s=timeout_s, what="the imports to be run", interval_s=2.0
        )
        for one in joined:
            await self.wait_import(one.token, one.import_id, timeout_s=60)

    async def wait_import(self, token: str, import_id: str, timeout_s: float = 180) -> Any:
        """Poll an import until it ends (riding out 503s while parts restart); it must be done."""

        async def ended() -> Any:
            reply = await self.call("GET", f"/v1/me/imports/{import_id}", token=token)
            ok = reply.status == 200 and reply.body["state"] in ("done", "failed")
            return reply.body if ok else None

        # Once a second, as the app shows progress: polling faster is load of its own, and
        # imports (opportunistic work) wait while the foreground is saturated.
        state = await eventually(
            ended, timeout_s=timeout_s, what="the import to finish", interval_s=1.0
        )
        assert state["state"] == "done", state
        return state

    async def post(self, token: str, text: str, **extra: Any) -> dict[str, Any]:
        reply = await self.call("POST", "/v1/posts", {"text": text, **extra}, token=token)
        assert reply.status == 201, reply.body
        return dict(reply.body)

    async def all_pages(
        self, path: str, token: str | None = None, limit: int = 2
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        sep = "&" if "?" in path else "?"
        for _ in range(1000):
            query = f"{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            reply = await self.call("GET", path + query, token=token)
            assert reply.status == 200, reply.body
            assert set(reply.body) == {"items", "next_cursor"}
            items += reply.body["items"]
            cursor = reply.body["next_cursor"]
            if cursor is None:
                return items
        raise AssertionError("pagination did not end")


async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout_s: float = 30,
    what: str = "condition",
    interval_s: float = 0.2,
) -> T:
    """Poll ``check`` until it returns a truthy value: the async platform's effects (fan-out,
    notifications, imports, joins) arrive after the request that caused them."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout_s} s (last: {result!r})")
        await asyncio.sleep(interval_s)


async def imports_idle() -> bool:
    """No import waiting or running, twice in a row a second apart."""
    from tests.conftest import minithreads

    for attempt in range(2):
        result = await asyncio.to_thread(minithreads, "jobs", "status", "--json", timeout_s=30)
        kind = json.loads(result.stdout)["kinds"].get("import", {})
        if kind.get("lag") or kind.get("queued") or kind.get("in_flight"):
            return False
        if attempt == 0:
            await asyncio.sleep(1)
    return True


def _check_rules(reply: Reply) -> None:
    if reply.status >= 400:
        assert isinstance(reply.body, dict), reply.body
        assert set(reply.body) == {"error"}, reply.body
        assert set(reply.body["error"]) == {"code", "message"}, reply.body
        assert reply.body["error"]["code"].replace("_", "").isalnum()
        assert "Traceback" not in reply.body["error"]["message"]
    assert reply.status < 500 or reply.status == 503, reply.body
    if reply.status in (429, 503):
        assert int(reply.headers["Retry-After"]) >= 1
