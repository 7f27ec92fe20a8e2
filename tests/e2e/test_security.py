"""Nobody acts as another user, and nothing secret leaks into responses or logs.

The authorization matrix: for every mutating endpoint, a second user's token is used against
the first user's things; the first user's state must be exactly as before.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from tests.api import PASSWORD, Api
from tests.legacy import GRAPH

pytestmark = pytest.mark.e2e


async def _state(api: Api, handle: str, token: str, post_id: str) -> dict[str, Any]:
    """Everything of a user another user's token might try to change."""
    me = (await api.call("GET", "/v1/me", token=token)).body
    post = (await api.call("GET", f"/v1/posts/{post_id}", token=token)).body
    return {
        "me": {k: me[k] for k in ("handle", "display_name", "bio", "following_count")},
        "following": [u["id"] for u in await api.all_pages(f"/v1/users/{handle}/following")],
        "followers": [u["id"] for u in await api.all_pages(f"/v1/users/{handle}/followers")],
        "posts": [p["id"] for p in await api.all_pages(f"/v1/users/{handle}/posts")],
        "post": {k: post[k] for k in ("text", "like_count", "liked_by_me")},
        "session": (await api.call("GET", "/v1/me", token=token)).status,
    }


async def _legacy_user(api: Api) -> tuple[dict[str, Any], str]:
    """A user linked to a small legacy account (so that its import is quick)."""
    rng = random.Random()
    for _ in range(2_000):
        n = rng.randint(500_000, GRAPH.size)
        if GRAPH.out_degree(n) <= 30:
            made = await api.signup_legacy(str(n))
            if made is not None:
                return made
    raise AssertionError("no free small legacy account found")


async def test_authz_matrix__another_users_token_changes_nothing_of_mine(api: Api) -> None:
    alice, alice_token = await _legacy_user(api)
    mallory, mallory_token = await api.signup("mallory")
    carol, carol_token = await api.signup("carol")
    post = await api.post(alice_token, "alice's own words")
    imported = await api.call("POST", "/v1/me/imports", {}, token=alice_token)
    assert imported.status == 202, imported.body
    await api.wait_import(alice_token, imported.body["id"])
    before = await _state(api, alice["handle"], alice_token, post["id"])

    # Each mutating endpoint, with mallory's token, aimed at alice's things where the API
    # names a target, and otherwise acting as whoever the token says (mallory).
    attempts: list[tuple[str, str, Any, set[int]]] = [
        ("DELETE", f"/v1/posts/{post['id']}", None, {403}),
        ("PATCH", "/v1/me", {"display_name": "pwned", "bio": "pwned"}, {200}),
        ("PUT", f"/v1/me/following/{carol['handle']}", None, {204}),
        ("DELETE", f"/v1/me/following/{carol['handle']}", None, {204}),
        ("PUT", f"/v1/posts/{post['id']}/like", None, {204}),
        ("DELETE", f"/v1/posts/{post['id']}/like", None, {204}),
        ("POST", "/v1/posts", {"text": "as whom?"}, {201}),
        ("POST", "/v1/me/imports", {}, {409}),  # mallory has no legacy account to copy
        ("DELETE", "/v1/sessions/current", None, {204}),
    ]
    for method, path, body, allowed in attempts:
        reply = await api.call(method, path, body, token=mallory_token)
        assert reply.status in allowed, (method, path, reply.status, reply.body)
        if method == "POST" and path == "/v1/posts":
            assert reply.body["author"]["id"] == mallory["id"]  # never alice

    # Alice's import is hers alone: another user cannot even see it.
    peek = await api.call("GET", f"/v1/me/imports/{imported.body['id']}", token=carol_token)
    assert peek.status == 404

    after = await _state(api, alice["handle"], alice_token, post["id"])
    assert after == before
    # Mallory's own session ended with her logout, and only hers.
    assert (await api.call("GET", "/v1/me", token=mallory_token)).status == 401


async def test_authz__every_mutating_endpoint_needs_a_token(api: Api) -> None:
    user, token = await api.signup("owner")
    post = await api.post(token, "mine")
    for method, path, body in [
        ("DELETE", "/v1/sessions/current", None),
        ("PATCH", "/v1/me", {"bio": "x"}),
        ("PUT", f"/v1/me/following/{user['handle']}", None),
        ("DELETE", f"/v1/me/following/{user['handle']}", None),
        ("POST", "/v1/me/imports", {}),
        ("POST", "/v1/posts", {"text": "x"}),
        ("DELETE", f"/v1/posts/{post['id']}", None),
        ("PUT", f"/v1/posts/{post['id']}/like", None),
        ("DELETE", f"/v1/posts/{post['id']}/like", None),
    ]:
        for bad in (None, "", "not-a-token", token[:-2] + "xx"):
            reply = await api.call(method, path, body, token=bad)
            assert reply.status == 401, (method, path, bad, reply.status)


async def test_no_secrets__passwords_and_tokens_never_reach_responses_or_logs(api: Api) -> None:
    password = f"{PASSWORD} s3cret-{os.urandom(4).hex()}"
    handle = f"sec{os.urandom(4).hex()}"
    made = await api.call("POST", "/v1/accounts", {"handle": handle, "password": password})
    assert made.status == 201
    token = made.body["token"]
    login = await api.call("POST", "/v1/sessions", {"handle": handle, "password": password})
    wrong = await api.call("POST", "/v1/sessions", {"handle": handle, "password": "nope nope"})
    me = await api.call("GET", "/v1/me", token=token)
    for reply in (made, login, wrong, me):
        text = str(reply.body)
        assert password not in text
        assert "$argon2" not in text  # no password hash either
    assert token not in str(me.body)
    assert token not in str(login.body)
    logs = Path(os.environ.get("MT_HOME", ".local")) / "run" / "logs"
    leaked = [
        p.name
        for p in logs.glob("*.log")
        if any(s in p.read_text(errors="replace") for s in (password, token))
    ]
    assert not leaked, f"a password or token was logged in {leaked}"
