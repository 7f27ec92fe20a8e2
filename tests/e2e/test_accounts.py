"""Accounts, sessions, profiles and search through the REST API."""

from __future__ import annotations

import asyncio
import secrets

from tests.api import PASSWORD, Api

USER_FIELDS = {
    "id",
    "handle",
    "display_name",
    "bio",
    "followers_count",
    "following_count",
    "posts_count",
    "created_at",
}


async def test_signup__returns_the_user_and_a_working_token(api: Api) -> None:
    handle = f"Ann{secrets.token_hex(4)}"
    reply = await api.call(
        "POST", "/v1/accounts", {"handle": handle, "password": PASSWORD, "display_name": "Ann"}
    )
    assert reply.status == 201
    user, token = reply.body["user"], reply.body["token"]
    assert set(user) == USER_FIELDS
    assert user["handle"] == handle.lower()  # case-folded
    assert user["display_name"] == "Ann"
    assert user["posts_count"] == 0
    assert user["created_at"].endswith("Z")
    assert len(token) >= 22  # at least 128 random bits, url-safe
    me = await api.call("GET", "/v1/me", token=token)
    assert me.status == 200
    assert me.body["id"] == user["id"]
    public = await api.call("GET", f"/v1/users/{handle.upper()}")
    assert public.status == 200
    assert public.body["id"] == user["id"]


async def test_signup__rejects_bad_input_with_clear_codes(api: Api) -> None:
    cases = [
        ({"handle": "has space", "password": PASSWORD}, "invalid_handle"),
        ({"handle": "x" * 31, "password": PASSWORD}, "invalid_handle"),
        ({"handle": "okname", "password": "short"}, "invalid_password"),
        ({"handle": "okname", "password": "x" * 129}, "invalid_password"),
        ({"password": PASSWORD}, "handle_required"),
        ({"handle": 5, "password": PASSWORD}, "invalid_handle"),
        ({"handle": "okname", "password": PASSWORD, "admin": True}, "unknown_field"),
    ]
    for body, code in cases:
        reply = await api.call("POST", "/v1/accounts", body)
        assert (reply.status, reply.code) == (400, code), (body, reply.body)
    for raw in (b"{not json", b"[1, 2]", '"\udcff"'.encode("utf-8", "surrogatepass")):
        reply = await api.call("POST", "/v1/accounts", raw=raw)
        assert (reply.status, reply.code) == (400, "invalid_json"), raw


async def test_signup__taken_handle_is_409(api: Api) -> None:
    user, _ = await api.signup()
    reply = await api.call(
        "POST", "/v1/accounts", {"handle": user["handle"].upper(), "password": PASSWORD}
    )
    assert (reply.status, reply.code) == (409, "handle_taken")


async def test_signup__concurrent_signups_of_one_handle_have_exactly_one_winner(api: Api) -> None:
    handle = f"race{secrets.token_hex(4)}"
    replies = await asyncio.gather(
        *(
            api.call("POST", "/v1/accounts", {"handle": handle, "password": PASSWORD})
            for _ in range(12)
        )
    )
    statuses = sorted(r.status for r in replies)
    assert statuses == [201] + [409] * 11, statuses
    winner = next(r for r in replies if r.status == 201)
    found = await api.call("GET", f"/v1/users/{handle}")
    assert found.body["id"] == winner.body["user"]["id"]


async def test_login__right_password_opens_a_session_wrong_one_is_401(api: Api) -> None:
    user, _ = await api.signup()
    ok = await api.call("POST", "/v1/sessions", {"handle": user["handle"], "password": PASSWORD})
    assert ok.status == 201
    assert ok.body["user"]["id"] == user["id"]
    assert (await api.call("GET", "/v1/me", token=ok.body["token"])).status == 200
    bad = await api.call(
        "POST", "/v1/sessions", {"handle": user["handle"], "password": "wrong password"}
    )
    assert (bad.status, bad.code) == (401, "bad_credentials")
    nobody = await api.call(
        "POST", "/v1/sessions", {"handle": "nobody" + secrets.token_hex(4), "password": PASSWORD}
    )
    assert (nobody.status, nobody.code) == (401, "bad_credentials")  # indistinguishable


async def test_login__brute_force_on_one_account_is_rate_limited(api: Api) -> None:
    user, _ = await api.signup()
    statuses = []
    for _ in range(12):
        reply = await api.call(
            "POST", "/v1/sessions", {"handle": user["handle"], "password": "guess1234"}
        )
        statuses.append(reply.status)
    assert statuses[:10] == [401] * 10
    assert statuses[10:] == [429, 429]
    # Even the right password is refused while the account is under attack.
    right = await api.call("POST", "/v1/sessions", {"handle": user["handle"], "password": PASSWORD})
    assert right.status == 429


async def test_logout__the_token_stops_working_at_once(api: Api) -> None:
    _, token = await api.signup()
    assert (await api.call("DELETE", "/v1/sessions/current", token=token)).status == 204
    reply = await api.call("GET", "/v1/me", token=token)
    assert (reply.status, reply.code) == (401, "invalid_token")
    again = await api.call("DELETE", "/v1/sessions/current", token=token)
    assert again.status == 401


async def test_auth__missing_or_malformed_tokens_are_401(api: Api) -> None:
    assert (await api.call("GET", "/v1/me")).code == "unauthenticated"
    for header in ("Basic abc", "Bearer", "Bearer " + "x" * 300, "Bearer not-a-token"):
        reply = await api.call("GET", "/v1/me", headers={"Authorization": header})
        assert reply.status == 401, header


async def test_patch_me__changes_profile_and_validates(api: Api) -> None:
    _, token = await api.signup()
    reply = await api.call(
        "PATCH", "/v1/me", {"display_name": "New Name", "bio": "hello there"}, token=token
    )
    assert reply.status == 200
    assert (reply.body["display_name"], reply.body["bio"]) == ("New Name", "hello there")
    assert (await api.call("GET", "/v1/me", token=token)).body["bio"] == "hello there"
    bad = await api.call("PATCH", "/v1/me", {"bio": "x" * 161}, token=token)
    assert (bad.status, bad.code) == (400, "invalid_bio")
    assert (await api.call("PATCH", "/v1/me", {"bio": "x"})).status == 401


async def test_unknown_user__is_404(api: Api) -> None:
    reply = await api.call("GET", f"/v1/users/nobody{secrets.token_hex(4)}")
    assert (reply.status, reply.code) == (404, "user_not_found")
    assert (await api.call("GET", "/v1/users/NOT%20A%20HANDLE")).status == 404


async def test_search__lists_users_by_handle_prefix_in_pages(api: Api) -> None:
    prefix = f"srch{secrets.token_hex(3)}"
    made = [await api.signup(prefix) for _ in range(5)]
    found = await api.all_pages(f"/v1/search/users?q={prefix.upper()}", limit=2)
    assert sorted(u["id"] for u in found) == sorted(u["id"] for u, _ in made)
    assert [u["handle"] for u in found] == sorted(u["handle"] for u in found)
    assert (await api.call("GET", "/v1/search/users")).code == "invalid_query"
    assert (await api.call("GET", "/v1/search/users?q=%20%21")).code == "invalid_query"
