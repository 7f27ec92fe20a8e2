"""The REST API of the running stack, as the end-to-end and chaos tests use it.

Every response is checked against the contract's general rules on the way (an error always
has the error body; 429/503 carry Retry-After); tests then check the specifics.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

BASE = "http://127.0.0.1:8080"
T = TypeVar("T")
PASSWORD = "correct horse"


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
        (the password hasher's queue would outlast the request; nothing was done) is sent
        again after its Retry-After."""
        for _ in range(20):
            reply = await self.call("POST", "/v1/accounts", body)
            if reply.status != 503 or reply.code != "overloaded":
                return reply
            await asyncio.sleep(float(reply.headers.get("Retry-After", "1")))
        return reply

    async def signup(self, prefix: str = "u", **extra: Any) -> tuple[dict[str, Any], str]:
        handle = f"{prefix}{secrets.token_hex(5)}"
        reply = await self.create_account({"handle": handle, "password": PASSWORD, **extra})
        assert reply.status == 201, reply.body
        return reply.body["user"], reply.body["token"]

    async def signup_legacy(self, legacy_id: str) -> tuple[dict[str, Any], str] | None:
        """Sign up linked to a legacy account; None if an earlier run linked it already (the KV
        keeps its data between runs)."""
        body = {"legacy_id": legacy_id, "password": PASSWORD}
        reply = await self.create_account(body)
        if reply.status == 409:
            return None
        assert reply.status == 201, reply.body
        return reply.body["user"], reply.body["token"]

    async def join_and_import(self, legacy_id: str) -> tuple[dict[str, Any], str] | None:
        """Sign up linked to ``legacy_id`` and run its import to the end; None if an earlier
        run linked that account already."""
        made = await self.signup_legacy(legacy_id)
        if made is None:
            return None
        started = await self.call("POST", "/v1/me/imports", {}, token=made[1])
        assert started.status == 202, started.body
        await self.wait_import(made[1], started.body["id"])
        return made

    async def wait_import(self, token: str, import_id: str, timeout_s: float = 180) -> Any:
        """Poll an import until it ends (riding out 503s while parts restart); it must be done."""

        async def ended() -> Any:
            reply = await self.call("GET", f"/v1/me/imports/{import_id}", token=token)
            ok = reply.status == 200 and reply.body["state"] in ("done", "failed")
            return reply.body if ok else None

        state = await eventually(ended, timeout_s=timeout_s, what="the import to finish")
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
    check: Callable[[], Awaitable[T]], *, timeout_s: float = 30, what: str = "condition"
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
        await asyncio.sleep(0.2)


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
