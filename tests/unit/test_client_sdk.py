"""The REST SDK (mt_client) against an in-process fake of the contract: typed results,
errors from the contract's error body, cursor iteration, and retries only where safe."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
from mt_client import (
    ApiError,
    Backoff,
    Client,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    Page,
    Post,
    RateLimited,
    RetryBudget,
    Session,
    Unauthorized,
    Unavailable,
    User,
    walk,
)
from mt_client.errors import error_from_response, parse_retry_after
from mt_client.models import ShapeError

from tests.unit.fakeapi import Failure, FakeApi

FAST = Backoff(base_s=0.001, cap_s=0.01, max_retry_after_s=0.05)
PASSWORD = "correct horse"


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with FakeApi.running() as fake:
        yield fake


@pytest.fixture
async def client(api: FakeApi) -> AsyncIterator[Client]:
    async with Client(api.url, backoff=FAST, timeout_s=5) as c:
        yield c


async def _signed_up(api: FakeApi, handle: str) -> Client:
    """Another user's client (closed by the caller)."""
    other = Client(api.url, backoff=FAST)
    await other.__aenter__()
    await other.signup(handle, password=PASSWORD)
    return other


# -- accounts and sessions ------------------------------------------------------------------------


async def test_signup__returns_the_user_and_keeps_the_token(client: Client, api: FakeApi) -> None:
    session = await client.signup("ada", password=PASSWORD, display_name="Ada")
    assert isinstance(session.user, User)
    assert (session.user.handle, session.user.display_name) == ("ada", "Ada")
    assert session.user.created_at.tzinfo is not None
    assert client.token == session.token
    assert session.token not in repr(session)  # tokens stay out of logs
    assert (await client.me()).id == session.user.id


async def _legacy_signup(client: Client, legacy_id: str) -> Session:
    assertion = await client.legacy_assertion(legacy_id, f"cred-{legacy_id}")
    return await client.signup(legacy_assertion=assertion)


async def test_signup__with_a_legacy_assertion_defaults_the_handle(client: Client) -> None:
    assertion = await client.legacy_assertion("7", "cred-7")
    assert assertion.assertion not in repr(assertion)  # kept out of logs, like tokens
    session = await client.signup(legacy_assertion=assertion)  # no password: none needed
    assert session.user.handle == "legacy_7"
    assert session.user.display_name == ""  # null is read as empty
    again = await client.login(legacy_assertion=await client.legacy_assertion("7", "cred-7"))
    assert again.user.id == session.user.id
    with pytest.raises(Unauthorized) as caught:
        await client.legacy_assertion("7", "cred-8")
    assert caught.value.code == "bad_credentials"


async def test_signup__is_not_retried_after_an_answer_that_leaves_it_open(
    client: Client, api: FakeApi
) -> None:
    api.fail("POST /v1/accounts", Failure(503, "unavailable", "a dependency is down"))
    with pytest.raises(Unavailable) as caught:
        await client.signup("ada", password=PASSWORD)
    assert caught.value.retriable
    assert not caught.value.refused
    assert len(api.calls_to("POST /v1/accounts")) == 1
    assert client.token is None


async def test_signup__refused_before_any_work_is_sent_again(client: Client, api: FakeApi) -> None:
    """A 503 ``overloaded`` or a 429 is a refusal at the door: nothing was done, so even a
    signup is sent again (after Retry-After)."""
    api.fail(
        "POST /v1/accounts",
        Failure(503, "overloaded", "shedding load", retry_after="1"),
        Failure(429, "rate_limited", "slow down", retry_after="1"),
    )
    session = await client.signup("ada", password=PASSWORD)
    assert session.user.handle == "ada"
    assert len(api.calls_to("POST /v1/accounts")) == 3


async def test_login_and_logout__the_token_stops_working(client: Client, api: FakeApi) -> None:
    await client.signup("ada", password=PASSWORD)
    session = await client.login("ada", PASSWORD)
    await client.logout()
    assert client.token is None
    client.token = session.token
    with pytest.raises(Unauthorized):
        await client.me()


async def test_login__bad_credentials_are_not_retried(client: Client, api: FakeApi) -> None:
    api.fail("POST /v1/sessions", Failure(503, "unavailable", "a dependency is down"))
    with pytest.raises(Unavailable):
        await client.login("ada", PASSWORD)
    with pytest.raises(Unauthorized) as caught:
        await client.login("ada", PASSWORD)
    assert (caught.value.code, caught.value.retriable) == ("bad_credentials", False)
    assert len(api.calls_to("POST /v1/sessions")) == 2


async def test_update_me__sends_only_the_fields_given(client: Client, api: FakeApi) -> None:
    await client.signup("ada", password=PASSWORD, display_name="Ada")
    user = await client.update_me(bio="hello")
    assert (user.display_name, user.bio) == ("Ada", "hello")


# -- errors ---------------------------------------------------------------------------------------


async def test_error_body__becomes_api_error(client: Client) -> None:
    await client.signup("ada", password=PASSWORD)
    with pytest.raises(Conflict) as caught:
        await client.signup("ada", password=PASSWORD)
    err = caught.value
    assert (err.status, err.code, err.message) == (409, "handle_taken", "@ada is taken")
    assert not err.retriable
    assert str(err) == "handle_taken: @ada is taken"


async def test_error_without_the_contract_body__keeps_the_status(api: FakeApi) -> None:
    async with Client(api.url + "/nowhere", backoff=FAST) as lost:
        with pytest.raises(NotFound) as caught:
            await lost.healthz()
    assert caught.value.code == "http_404"


def test_error_from_response__parses_retry_after_and_picks_the_class() -> None:
    err = error_from_response(429, '{"error": {"code": "slow_down", "message": "m"}}', "3")
    assert isinstance(err, RateLimited)
    assert (err.code, err.retry_after_s, err.retriable) == ("slow_down", 3.0, True)
    assert isinstance(error_from_response(403, "{}", None), Forbidden)
    assert error_from_response(502, "<html>bad gateway</html>", None).code == "http_502"


def test_parse_retry_after__seconds_or_an_http_date() -> None:
    now = datetime(2023, 7, 6, 12, 0, tzinfo=UTC)
    assert parse_retry_after("2", now) == 2.0
    assert parse_retry_after("Thu, 06 Jul 2023 12:00:05 GMT", now) == 5.0
    assert parse_retry_after("Thu, 06 Jul 2023 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


async def test_user__ids_and_handles_stay_one_path_segment(client: Client) -> None:
    with pytest.raises(NotFound) as caught:
        await client.user("a/b?c")
    assert caught.value.code == "not_found"  # our route answered, not the router's 404


async def test_client__must_be_used_inside_async_with(api: FakeApi) -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await Client(api.url).healthz()


def test_client__rejects_a_base_url_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="http"):
        Client("127.0.0.1:8080")


# -- retries --------------------------------------------------------------------------------------


async def test_get__retries_429_and_503_then_succeeds(client: Client, api: FakeApi) -> None:
    await client.signup("ada", password=PASSWORD)
    api.fail(
        "GET /v1/me",
        Failure(429, "rate_limited", "slow down", retry_after="1"),
        Failure(503, "overloaded", "shedding load"),
    )
    started = time.monotonic()
    assert (await client.me()).handle == "ada"
    assert len(api.calls_to("GET /v1/me")) == 3
    assert time.monotonic() - started >= FAST.max_retry_after_s  # Retry-After, capped


async def test_retries__give_up_after_the_budget(api: FakeApi) -> None:
    api.fail("GET /healthz", *[Failure(503, "overloaded", "shedding load")] * 3)
    async with Client(api.url, retries=2, backoff=FAST) as c:
        with pytest.raises(Unavailable):
            await c.healthz()
    assert len(api.calls_to("GET /healthz")) == 3


async def test_retries__stay_within_the_retry_budget(api: FakeApi) -> None:
    """A server refusing everything gets a fifth more requests from a client, not four times
    as many: the budget runs out and the refusals reach the caller."""
    now = [0.0]
    budget = RetryBudget(ratio=0.2, min_per_s=0.0, window_s=10.0, clock=lambda: now[0])
    api.fail("GET /healthz", *[Failure(503, "overloaded", "shedding load")] * 200)
    async with Client(api.url, retries=3, backoff=FAST, budget=budget) as c:
        for _ in range(50):
            with pytest.raises(Unavailable):
                await c.healthz()
    calls = len(api.calls_to("GET /healthz"))
    assert 50 < calls <= 50 + 0.2 * 50 + 1


def test_retry_budget__a_share_of_the_requests_plus_a_floor_per_second() -> None:
    now = [0.0]
    budget = RetryBudget(ratio=0.1, min_per_s=0.2, window_s=10.0, clock=lambda: now[0])
    for _ in range(30):
        budget.sent()
    allowed = 0
    while budget.spend():
        allowed += 1
    assert allowed == 3 + 2  # 10% of 30, and 0.2 a second over 10 s
    now[0] = 11.0
    assert budget.spend()


async def test_retries__never_for_a_non_retriable_error(client: Client, api: FakeApi) -> None:
    api.fail("GET /healthz", Failure(500, "internal", "internal error"))
    with pytest.raises(ApiError) as caught:
        await client.healthz()
    assert (caught.value.status, caught.value.retriable) == (500, False)
    assert len(api.calls_to("GET /healthz")) == 1


async def test_post__retries_with_the_same_idempotency_key(client: Client, api: FakeApi) -> None:
    await client.signup("ada", password=PASSWORD)
    api.drop("POST /v1/posts")  # the first attempt creates the post, but its answer is lost
    post = await client.post("hello")
    calls = api.calls_to("POST /v1/posts")
    keys = {call.headers["Idempotency-Key"] for call in calls}
    assert (len(calls), len(keys)) == (2, 1)
    assert list(api.posts) == [post.id]


async def test_post__a_fresh_key_per_call_unless_given(client: Client, api: FakeApi) -> None:
    await client.signup("ada", password=PASSWORD)
    first, second = await client.post("one"), await client.post("two")
    again = await client.post("one more", idempotency_key="k1")
    same = await client.post("one more", idempotency_key="k1")
    assert first.id != second.id
    assert again.id == same.id
    keys = [call.headers["Idempotency-Key"] for call in api.calls_to("POST /v1/posts")]
    assert keys[0] != keys[1]
    assert keys[2:] == ["k1", "k1"]


async def test_start_import__is_not_retried_after_a_lost_answer(
    client: Client, api: FakeApi
) -> None:
    await _legacy_signup(client, "3")
    api.drop("POST /v1/me/imports")
    with pytest.raises(ConnectionFailed) as caught:
        await client.start_import()
    assert (caught.value.code, caught.value.maybe_applied) == ("connection_lost", True)
    assert len(api.calls_to("POST /v1/me/imports")) == 1


async def test_logout__succeeds_when_the_token_is_already_dead(
    client: Client, api: FakeApi
) -> None:
    await client.signup("ada", password=PASSWORD)
    api.drop("DELETE /v1/sessions/current")  # logged out, but the answer is lost
    await client.logout()
    assert client.token is None
    assert len(api.calls_to("DELETE /v1/sessions/current")) == 2
    assert api.tokens == {}


async def test_connection_refused__is_a_retriable_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with Client(f"http://127.0.0.1:{port}", retries=1, backoff=FAST) as c:
        with pytest.raises(ConnectionFailed) as caught:
            await c.healthz()
    err = caught.value
    assert (err.status, err.code, err.retriable, err.maybe_applied) == (
        0,
        "unreachable",
        True,
        False,
    )


async def test_timeout__a_safe_request_is_retried_a_signup_is_not(api: FakeApi) -> None:
    async with Client(api.url, timeout_s=0.2, backoff=FAST) as c:
        api.stall("GET /healthz", 0.5)
        assert await c.healthz() == {"status": "serving", "services": {}}
        api.stall("POST /v1/accounts", 0.5)
        with pytest.raises(ConnectionFailed) as caught:
            await c.signup("ada", password=PASSWORD)
    assert (caught.value.code, caught.value.maybe_applied) == ("timeout", True)
    assert len(api.calls_to("GET /healthz")) == 2
    assert len(api.calls_to("POST /v1/accounts")) == 1


def test_backoff__full_jitter_under_a_cap_and_retry_after_as_a_floor() -> None:
    backoff = Backoff(base_s=0.1, cap_s=1.0, max_retry_after_s=10.0)
    assert backoff.delay_s(0, uniform=lambda: 1.0) == pytest.approx(0.1)
    assert backoff.delay_s(3, uniform=lambda: 1.0) == pytest.approx(0.8)
    assert backoff.delay_s(50, uniform=lambda: 1.0) == pytest.approx(1.0)
    assert backoff.delay_s(3, uniform=lambda: 0.0) == 0.0
    assert backoff.delay_s(0, retry_after_s=2.0, uniform=lambda: 0.0) == 2.0
    assert backoff.delay_s(0, retry_after_s=3600.0, uniform=lambda: 0.0) == 10.0


# -- lists and cursors ----------------------------------------------------------------------------


async def test_iter_feed__follows_cursors_to_the_end(client: Client, api: FakeApi) -> None:
    await client.signup("ada", password=PASSWORD)
    for n in range(7):
        await client.post(f"post {n}")
    page = await client.feed(limit=3)
    assert len(page.items) == 3
    assert page.next_cursor is not None
    texts = [post.text async for post in client.iter_feed(page_size=3)]
    assert texts == [f"post {n}" for n in reversed(range(7))]
    assert len(api.calls_to("GET /v1/feed")) == 1 + 3


async def test_iter_helpers__walk_every_list(client: Client, api: FakeApi) -> None:
    await client.signup("ada", password=PASSWORD)
    root = await client.post("root")
    handles = ["ada0", "ada1", "ada2"]
    for handle in handles:
        other = await _signed_up(api, handle)
        try:
            await other.follow("ada")
            await other.like(root.id)
            await other.post("re", reply_to=root.id)
        finally:
            await other.close()
        await client.follow(handle)
    assert [u.handle async for u in client.iter_followers("ada", page_size=2)] == handles
    assert [u.handle async for u in client.iter_following("ada", page_size=2)] == handles
    assert [p.text async for p in client.iter_replies(root.id, page_size=2)] == ["re"] * 3
    assert [p.id async for p in client.iter_user_posts("ada", page_size=1)] == [root.id]
    assert [u.handle async for u in client.iter_search_users("ada", page_size=2)] == [
        "ada",
        *handles,
    ]
    kinds = sorted([n.type async for n in client.iter_notifications(page_size=2)])
    assert kinds == ["follow"] * 3 + ["like"] * 3 + ["reply"] * 3
    following = [f.legacy_id async for f in client.iter_legacy_following("1", page_size=2)]
    assert following == ["2", "3", "4", "5", "6"]
    assert (await client.get_post(root.id)).like_count == 3


async def test_walk__refuses_a_cursor_that_does_not_advance() -> None:
    async def stuck(cursor: str | None) -> Page[int]:
        return Page(items=(1,), next_cursor="same")

    with pytest.raises(ApiError, match="did not advance"):
        _ = [item async for item in walk(stuck)]


# -- posts, likes, imports, legacy ----------------------------------------------------------------


async def test_like_and_unlike__are_idempotent_and_show_in_liked_by_me(
    client: Client, api: FakeApi
) -> None:
    await client.signup("ada", password=PASSWORD)
    post = await client.post("like me")
    await client.like(post.id)
    await client.like(post.id)
    liked = await client.get_post(post.id)
    assert (liked.like_count, liked.liked_by_me) == (1, True)
    await client.unlike(post.id)
    await client.unlike(post.id)
    assert (await client.get_post(post.id)).like_count == 0


async def test_delete_post__of_someone_else_is_forbidden(client: Client, api: FakeApi) -> None:
    await client.signup("ada", password=PASSWORD)
    post = await client.post("mine")
    bob = await _signed_up(api, "bob")
    try:
        with pytest.raises(Forbidden):
            await bob.delete_post(post.id)
    finally:
        await bob.close()


async def test_import__watch_until_done(client: Client) -> None:
    await _legacy_signup(client, "9")
    account = await client.legacy_account("9")
    assert (account.handle, account.following_count) == ("legacy_9", 5)
    started = await client.start_import()
    states = [job async for job in client.watch_import(started.id, interval_s=0.001)]
    assert states[-1].finished
    assert (states[-1].state, states[-1].done, states[-1].total) == ("done", 5, 5)
    assert states[-1].pending == 5  # none of the five followees has joined
    assert all(not job.finished for job in states[:-1])


# -- parsing --------------------------------------------------------------------------------------


POST = {
    "id": "1",
    "author": {"id": "9", "handle": "ada", "display_name": "Ada"},
    "text": "hi",
    "reply_to": None,
    "created_at": "2023-07-06T00:00:01.5Z",
    "like_count": 2,
    "reply_count": 0,
    "liked_by_me": False,
}


def test_post_from_json__types_and_times() -> None:
    post = Post.from_json(POST)
    assert post.author.handle == "ada"
    assert post.created_at == datetime(2023, 7, 6, 0, 0, 1, 500000, tzinfo=UTC)


@pytest.mark.parametrize(
    "change",
    [{"id": 1}, {"like_count": True}, {"created_at": "yesterday"}, {"author": None}],
    ids=["int_id", "bool_count", "bad_time", "no_author"],
)
def test_post_from_json__rejects_shapes_off_the_contract(change: dict[str, object]) -> None:
    with pytest.raises(ShapeError):
        Post.from_json({**POST, **change})
