"""The legacy graph, imports, and the API's own rules (paging, sizes, OpenAPI, unknown paths)."""

from __future__ import annotations

import random
import time

from mt_legacy.identity import Provider

from tests.api import PASSWORD, Api
from tests.legacy import operator_secret


def _fresh_legacy_id() -> str:
    # The KV keeps data between runs: pick legacy accounts nobody has linked yet.
    return str(random.randint(200_000, 999_999))


async def test_legacy_account__is_deterministic_with_paged_following(api: Api) -> None:
    reply = await api.call("GET", "/v1/legacy/accounts/42")
    assert reply.status == 200
    assert set(reply.body) == {"legacy_id", "handle", "following_count"}
    assert reply.body == (await api.call("GET", "/v1/legacy/accounts/42")).body
    following = await api.all_pages("/v1/legacy/accounts/42/following", limit=100)
    assert len(following) == reply.body["following_count"]
    assert len({f["legacy_id"] for f in following}) == len(following)
    assert all(set(f) == {"legacy_id", "handle", "on_app"} for f in following)
    for bad in ("0", "abc", "99999999", "-1"):
        assert (await api.call("GET", f"/v1/legacy/accounts/{bad}")).code == "legacy_not_found"


async def test_signup_with_legacy_assertion__links_once_and_shows_on_app(api: Api) -> None:
    legacy_id = _fresh_legacy_id()
    legacy = (await api.call("GET", f"/v1/legacy/accounts/{legacy_id}")).body
    assertion = await api.legacy_assertion(legacy_id)
    reply = await api.call("POST", "/v1/accounts", {"legacy_assertion": assertion})
    assert reply.status == 201  # no password: the account logs in with its legacy identity
    assert reply.body["user"]["handle"] == legacy["handle"]
    again = await api.call(
        "POST",
        "/v1/accounts",
        {
            "handle": "other" + legacy_id,
            "legacy_assertion": await api.legacy_assertion(legacy_id),
            "password": PASSWORD,
        },
    )
    assert (again.status, again.code) == (409, "legacy_taken")
    # The losing signup did not keep its handle.
    assert (await api.call("GET", f"/v1/users/other{legacy_id}")).status == 404
    # Logging in: with a fresh assertion, never with a password it does not have.
    login = await api.call(
        "POST", "/v1/sessions", {"legacy_assertion": await api.legacy_assertion(legacy_id)}
    )
    assert (login.status, login.body["user"]["id"]) == (201, reply.body["user"]["id"])
    guess = await api.call(
        "POST", "/v1/sessions", {"handle": legacy["handle"], "password": PASSWORD}
    )
    assert (guess.status, guess.code) == (401, "bad_credentials")


async def test_legacy_identity__nobody_links_or_logs_in_without_a_valid_assertion(
    api: Api,
) -> None:
    """Forged, expired, replayed, for another account, for another app, or none at all: each
    refused with the error shape, and nothing is linked."""
    legacy_id, other = _fresh_legacy_id(), _fresh_legacy_id()
    ours = Provider(operator_secret())
    forged = Provider(b"\x00" * 32).sign(legacy_id, "minithreads").token
    expired = ours.sign(legacy_id, "minithreads", now_s=time.time() - 3600).token
    elsewhere = await api.legacy_assertion(legacy_id, audience="another-app")
    theirs = await api.legacy_assertion(other)
    refused = [
        ({"legacy_id": legacy_id, "password": PASSWORD}, "assertion_required"),
        ({"legacy_assertion": forged}, "invalid_assertion"),
        ({"legacy_assertion": expired}, "assertion_expired"),
        ({"legacy_assertion": elsewhere}, "assertion_audience"),
        ({"legacy_assertion": "not.a.token"}, "invalid_assertion"),
        ({"legacy_id": legacy_id, "legacy_assertion": theirs}, "assertion_mismatch"),
    ]
    for body, code in refused:
        reply = await api.call("POST", "/v1/accounts", body)
        assert (reply.status, reply.code) == (401, code), body
        login = await api.call(
            "POST", "/v1/sessions", {"legacy_assertion": body.get("legacy_assertion", "x")}
        )
        assert login.status in (401, 404), body
    wrong = await api.call(
        "POST", "/v1/legacy/assertions", {"legacy_id": legacy_id, "credential": "guess"}
    )
    assert (wrong.status, wrong.code) == (401, "bad_credentials")
    unknown = await api.call(
        "POST", "/v1/legacy/assertions", {"legacy_id": "99999999", "credential": "guess"}
    )
    assert (unknown.status, unknown.code) == (401, "bad_credentials")  # no account oracle
    # Nothing was linked by any of that: the rightful owner still can.
    assert (await api.call("POST", "/v1/accounts", {"legacy_assertion": theirs})).status == 201
    # ... and an assertion, once spent, is spent: replaying it links and logs in nothing.
    replayed = await api.call(
        "POST", "/v1/accounts", {"legacy_assertion": theirs, "handle": "x" + other}
    )
    assert (replayed.status, replayed.code) == (401, "assertion_replayed")
    again = await api.call("POST", "/v1/sessions", {"legacy_assertion": theirs})
    assert (again.status, again.code) == (401, "assertion_replayed")


async def test_import__copies_follows_and_records_pending(api: Api) -> None:
    legacy_id = _fresh_legacy_id()
    followees = await api.all_pages(f"/v1/legacy/accounts/{legacy_id}/following", limit=100)
    joined = followees[0]
    if joined["on_app"] is False:
        await api.signup_legacy(joined["legacy_id"])  # (None if a concurrent test linked it)
    made = await api.signup_legacy(legacy_id)
    assert made is not None
    token = made[1]
    listed = await api.call("GET", f"/v1/legacy/accounts/{legacy_id}/following?limit=1")
    assert listed.body["items"][0]["on_app"] is True
    started = await api.call("POST", "/v1/me/imports", {}, token=token)
    assert started.status == 202
    assert set(started.body) == {"id", "state", "total", "done", "pending"}
    assert started.body["total"] == len(followees)
    state = await api.wait_import(token, started.body["id"])
    # Who is on the app now (other tests link legacy accounts concurrently).
    listing = await api.all_pages(f"/v1/legacy/accounts/{legacy_id}/following", limit=100)
    on_app = sum(1 for f in listing if f["on_app"])
    assert state["done"] == state["total"] == len(followees)
    assert state["pending"] == len(followees) - on_app
    me = await api.call("GET", "/v1/me", token=token)
    assert me.body["following_count"] == on_app
    # Someone else cannot read it; an account without a legacy link cannot import.
    _, other = await api.signup()
    assert (
        await api.call("GET", f"/v1/me/imports/{started.body['id']}", token=other)
    ).status == 404
    refused = await api.call("POST", "/v1/me/imports", {}, token=other)
    assert (refused.status, refused.code) == (409, "no_legacy_account")


async def test_paging__limits_and_cursors_are_validated(api: Api) -> None:
    user, _ = await api.signup()
    path = f"/v1/users/{user['handle']}/posts"
    for limit in ("0", "101", "-1", "abc", "1.5"):
        reply = await api.call("GET", f"{path}?limit={limit}")
        assert (reply.status, reply.code) == (400, "invalid_limit"), limit
    assert (await api.call("GET", f"{path}?limit=100")).status == 200
    for cursor in ("zz", "%00%01", "x" * 600):
        reply = await api.call("GET", f"{path}?cursor={cursor}")
        assert (reply.status, reply.code) == (400, "invalid_cursor"), cursor


async def test_api__unknown_paths_methods_and_huge_bodies_get_the_error_shape(api: Api) -> None:
    assert (await api.call("GET", "/v1/nope")).status == 404
    assert (await api.call("PATCH", "/v1/feed")).status == 405
    _, token = await api.signup()
    huge = await api.call(
        "POST", "/v1/posts", raw=b'{"text": "' + b"x" * 200_000 + b'"}', token=token
    )
    assert huge.status == 413


async def test_openapi__describes_every_contract_row(api: Api) -> None:
    reply = await api.call("GET", "/openapi.json")
    assert reply.status == 200
    assert reply.body["openapi"].startswith("3.")
    paths = reply.body["paths"]
    expected = {
        ("post", "/v1/accounts"),
        ("post", "/v1/sessions"),
        ("delete", "/v1/sessions/current"),
        ("get", "/v1/me"),
        ("patch", "/v1/me"),
        ("get", "/v1/users/{handle}"),
        ("put", "/v1/me/following/{handle}"),
        ("delete", "/v1/me/following/{handle}"),
        ("get", "/v1/users/{handle}/followers"),
        ("get", "/v1/users/{handle}/following"),
        ("post", "/v1/me/imports"),
        ("get", "/v1/me/imports/{id}"),
        ("post", "/v1/posts"),
        ("get", "/v1/posts/{id}"),
        ("delete", "/v1/posts/{id}"),
        ("get", "/v1/posts/{id}/replies"),
        ("get", "/v1/users/{handle}/posts"),
        ("put", "/v1/posts/{id}/like"),
        ("delete", "/v1/posts/{id}/like"),
        ("get", "/v1/feed"),
        ("get", "/v1/notifications"),
        ("get", "/v1/search/users"),
        ("get", "/v1/legacy/accounts/{legacy_id}"),
        ("get", "/v1/legacy/accounts/{legacy_id}/following"),
        ("post", "/v1/legacy/assertions"),  # wave 2: the legacy identity provider
        ("get", "/v1/me/following/{handle}"),  # wave 2: the web client's Follow button
    }
    assert {(m, p) for p, ops in paths.items() for m in ops} == expected
    docs = await api.http.get("http://127.0.0.1:8080/docs")
    assert docs.status == 200  # Swagger UI over /openapi.json (tests/browser/test_docs.py)
    assert "/assets/docs-" in await docs.text()
    assert "script-src 'self'" in docs.headers["Content-Security-Policy"]
