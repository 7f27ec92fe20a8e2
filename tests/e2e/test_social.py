"""Follows, posts, replies, likes, feed and notifications through the REST API."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from tests.api import Api, eventually

POST_FIELDS = {
    "id",
    "author",
    "text",
    "reply_to",
    "created_at",
    "like_count",
    "reply_count",
    "liked_by_me",
}


async def test_follow__is_idempotent_and_counted_once(api: Api) -> None:
    alice, _ = await api.signup()
    bob, tb = await api.signup()
    for _ in range(3):
        assert (
            await api.call("PUT", f"/v1/me/following/{alice['handle']}", token=tb)
        ).status == 204
    # The follower's side at once (their own write); the followee's once the follow job ran.
    assert (await api.call("GET", "/v1/me", token=tb)).body["following_count"] == 1
    await _followers_become(api, alice, [bob["id"]])
    for _ in range(2):
        assert (
            await api.call("DELETE", f"/v1/me/following/{alice['handle']}", token=tb)
        ).status == 204
    assert (await api.call("GET", "/v1/me", token=tb)).body["following_count"] == 0
    await _followers_become(api, alice, [])


async def _followers_become(api: Api, user: dict[str, Any], ids: list[str]) -> None:
    """The user's follower list and count converge on ``ids`` (the follow jobs mirror each
    follow on the followee's side within seconds)."""

    async def converged() -> bool:
        listed = await api.all_pages(f"/v1/users/{user['handle']}/followers", limit=2)
        count = (await api.call("GET", f"/v1/users/{user['handle']}")).body["followers_count"]
        return [u["id"] for u in listed] == ids and count == len(ids)

    await eventually(converged, timeout_s=30, what=f"{user['handle']}'s followers {ids}")


async def test_follow__is_readable_by_the_follower_at_once(api: Api) -> None:
    alice, _ = await api.signup()
    _, tb = await api.signup()
    path = f"/v1/me/following/{alice['handle']}"
    reply = await api.call("GET", path, token=tb)
    assert (reply.status, reply.code) == (404, "not_following")
    await api.call("PUT", path, token=tb)
    assert (await api.call("GET", path, token=tb)).status == 204  # read-your-writes
    await api.call("DELETE", path, token=tb)
    assert (await api.call("GET", path, token=tb)).status == 404
    assert (await api.call("GET", path)).status == 401
    unknown = await api.call("GET", f"/v1/me/following/nobody{secrets.token_hex(4)}", token=tb)
    assert (unknown.status, unknown.code) == (404, "user_not_found")


async def test_follow__lists_are_newest_first_across_pages(api: Api) -> None:
    star, _ = await api.signup()
    fans = [await api.signup() for _ in range(5)]
    for _, token in fans:
        await api.call("PUT", f"/v1/me/following/{star['handle']}", token=token)
    await _followers_become(api, star, [u["id"] for u, _ in reversed(fans)])
    following = await api.all_pages(f"/v1/users/{fans[0][0]['handle']}/following")
    assert [u["id"] for u in following] == [star["id"]]


async def test_follow__self_unknown_and_unauthenticated_are_refused(api: Api) -> None:
    me, token = await api.signup()
    reply = await api.call("PUT", f"/v1/me/following/{me['handle']}", token=token)
    assert (reply.status, reply.code) == (400, "cannot_follow_self")
    reply = await api.call("PUT", f"/v1/me/following/nobody{secrets.token_hex(4)}", token=token)
    assert reply.status == 404
    assert (await api.call("PUT", f"/v1/me/following/{me['handle']}")).status == 401


async def test_post__shape_text_rules_and_reads(api: Api) -> None:
    author, token = await api.signup()
    post = await api.post(token, "  hello world  ")
    assert set(post) == POST_FIELDS
    assert post["text"] == "hello world"
    assert post["reply_to"] is None
    assert post["author"] == {
        "id": author["id"],
        "handle": author["handle"],
        "display_name": author["display_name"],
    }
    fetched = await api.call("GET", f"/v1/posts/{post['id']}")
    assert fetched.status == 200
    assert fetched.body["id"] == post["id"]
    assert (await api.post(token, "é" * 500))["text"] == "é" * 500  # characters, not bytes
    for text, code in (
        ("   ", "text_empty"),
        ("", "text_empty"),
        ("x" * 501, "text_too_long"),
        ("x" * 5000, "text_too_long"),
    ):
        reply = await api.call("POST", "/v1/posts", {"text": text}, token=token)
        assert (reply.status, reply.code) == (400, code), text[:10]
    assert (await api.call("POST", "/v1/posts", {"text": 42}, token=token)).status == 400
    assert (await api.call("GET", "/v1/posts/0000")).code == "post_not_found"
    assert (await api.call("POST", "/v1/posts", {"text": "hi"})).status == 401


async def test_post__ids_sort_by_time_and_user_posts_are_newest_first(api: Api) -> None:
    user, token = await api.signup()
    made = [await api.post(token, f"post {i}") for i in range(5)]
    assert [p["id"] for p in made] == sorted(p["id"] for p in made)
    listed = await api.all_pages(f"/v1/users/{user['handle']}/posts", limit=2)
    assert [p["id"] for p in listed] == [p["id"] for p in reversed(made)]
    assert (await api.call("GET", "/v1/me", token=token)).body["posts_count"] == 5


async def test_replies__are_oldest_first_and_counted(api: Api) -> None:
    _, ta = await api.signup()
    _, tb = await api.signup()
    root = await api.post(ta, "root")
    replies = [await api.post(tb, f"reply {i}", reply_to=root["id"]) for i in range(3)]
    listed = await api.all_pages(f"/v1/posts/{root['id']}/replies", limit=2)
    assert [p["id"] for p in listed] == [p["id"] for p in replies]
    assert all(p["reply_to"] == root["id"] for p in listed)
    assert (await api.call("GET", f"/v1/posts/{root['id']}", token=ta)).body["reply_count"] == 3
    missing = await api.call("POST", "/v1/posts", {"text": "x", "reply_to": "nope"}, token=tb)
    assert (missing.status, missing.code) == (404, "reply_to_not_found")


async def test_delete__only_the_author_may_and_the_post_is_gone(api: Api) -> None:
    author, ta = await api.signup()
    _, tb = await api.signup()
    post = await api.post(ta, "mine")
    reply = await api.call("DELETE", f"/v1/posts/{post['id']}", token=tb)
    assert (reply.status, reply.code) == (403, "not_author")
    assert (await api.call("GET", f"/v1/posts/{post['id']}")).status == 200
    assert (await api.call("DELETE", f"/v1/posts/{post['id']}", token=ta)).status == 204
    assert (await api.call("GET", f"/v1/posts/{post['id']}")).status == 404
    assert (await api.call("DELETE", f"/v1/posts/{post['id']}", token=ta)).status == 404
    assert await api.all_pages(f"/v1/users/{author['handle']}/posts") == []
    assert (await api.call("GET", "/v1/me", token=ta)).body["posts_count"] == 0


async def test_like__idempotent_liked_by_me_and_unlike(api: Api) -> None:
    _, ta = await api.signup()
    _, tb = await api.signup()
    post = await api.post(ta, "like me")
    for _ in range(3):
        assert (await api.call("PUT", f"/v1/posts/{post['id']}/like", token=tb)).status == 204
    seen = await api.call("GET", f"/v1/posts/{post['id']}", token=tb)
    assert (seen.body["like_count"], seen.body["liked_by_me"]) == (1, True)
    assert (await api.call("GET", f"/v1/posts/{post['id']}", token=ta)).body["liked_by_me"] is False
    for _ in range(2):
        assert (await api.call("DELETE", f"/v1/posts/{post['id']}/like", token=tb)).status == 204
    seen = await api.call("GET", f"/v1/posts/{post['id']}", token=tb)
    assert (seen.body["like_count"], seen.body["liked_by_me"]) == (0, False)
    assert (await api.call("PUT", "/v1/posts/nope/like", token=tb)).status == 404
    assert (await api.call("PUT", f"/v1/posts/{post['id']}/like")).status == 401


async def test_like__concurrent_likes_are_counted_exactly(api: Api) -> None:
    _, ta = await api.signup()
    post = await api.post(ta, "popular")
    fans = await asyncio.gather(*(api.signup() for _ in range(15)))
    # Every fan likes twice at once: 30 concurrent requests, 15 likes.
    replies = await asyncio.gather(
        *(
            api.call("PUT", f"/v1/posts/{post['id']}/like", token=t)
            for _, t in fans
            for _ in range(2)
        )
    )
    assert {r.status for r in replies} == {204}
    assert (await api.call("GET", f"/v1/posts/{post['id']}", token=ta)).body["like_count"] == 15


async def test_idempotency_key__retries_yield_one_post(api: Api) -> None:
    user, token = await api.signup()
    key = {"Idempotency-Key": secrets.token_hex(8)}
    first = await api.call("POST", "/v1/posts", {"text": "once"}, token=token, headers=key)
    again = await api.call("POST", "/v1/posts", {"text": "once"}, token=token, headers=key)
    assert first.status == again.status == 201
    assert first.body["id"] == again.body["id"]
    other = await api.call("POST", "/v1/posts", {"text": "different"}, token=token, headers=key)
    assert (other.status, other.code) == (409, "idempotency_key_reused")
    # Concurrent retries of a new key.
    key2 = {"Idempotency-Key": secrets.token_hex(8)}
    replies = await asyncio.gather(
        *(
            api.call("POST", "/v1/posts", {"text": "burst"}, token=token, headers=key2)
            for _ in range(8)
        )
    )
    assert {r.status for r in replies} == {201}
    assert len({r.body["id"] for r in replies}) == 1
    posts = await api.all_pages(f"/v1/users/{user['handle']}/posts", limit=10)
    assert len(posts) == 2
    assert (await api.call("GET", "/v1/me", token=token)).body["posts_count"] == 2
    # The key is per author: someone else's same key is their own post.
    _, other_token = await api.signup()
    theirs = await api.call("POST", "/v1/posts", {"text": "once"}, token=other_token, headers=key)
    assert theirs.status == 201
    assert theirs.body["id"] != first.body["id"]


async def test_feed__own_posts_at_once_followed_authors_newest_first_no_dups(api: Api) -> None:
    _, reader = await api.signup()
    authors = [await api.signup() for _ in range(3)]
    for author, _ in authors:
        await api.call("PUT", f"/v1/me/following/{author['handle']}", token=reader)
    _stranger, ts = await api.signup()
    await api.post(ts, "not followed")
    made = []
    for i in range(9):
        made.append(await api.post(authors[i % 3][1], f"post {i}"))
    mine = await api.post(reader, "my own")  # visible on the very next read (read-your-writes)
    made.append(mine)
    feed = await api.all_pages("/v1/feed", token=reader, limit=4)
    assert [p["id"] for p in feed] == [p["id"] for p in reversed(made)]
    # Unfollowing removes an author's posts (a worker takes them out of the inbox).
    await api.call("DELETE", f"/v1/me/following/{authors[0][0]['handle']}", token=reader)

    async def gone() -> bool:
        feed = await api.all_pages("/v1/feed", token=reader, limit=100)
        return all(p["author"]["id"] != authors[0][0]["id"] for p in feed)

    await eventually(gone, what="unfollowed author's posts leave the feed")
    assert (await api.call("GET", "/v1/feed")).status == 401


async def test_feed__a_page_cursor_survives_new_posts(api: Api) -> None:
    _, reader = await api.signup()
    author, ta = await api.signup()
    await api.call("PUT", f"/v1/me/following/{author['handle']}", token=reader)
    old = [await api.post(ta, f"old {i}") for i in range(4)]
    first = await api.call("GET", "/v1/feed?limit=2", token=reader)
    await api.post(ta, "new, after the first page")
    second = await api.call(
        "GET", f"/v1/feed?limit=2&cursor={first.body['next_cursor']}", token=reader
    )
    seen = [p["id"] for p in first.body["items"] + second.body["items"]]
    assert seen == [p["id"] for p in reversed(old)]


async def test_notifications__follow_like_reply(api: Api) -> None:
    _, ta = await api.signup()
    bob, tb = await api.signup()
    me = (await api.call("GET", "/v1/me", token=ta)).body
    post = await api.post(ta, "notify me")
    await api.call("PUT", f"/v1/me/following/{me['handle']}", token=tb)
    await api.call("PUT", f"/v1/posts/{post['id']}/like", token=tb)
    await api.call("PUT", f"/v1/posts/{post['id']}/like", token=tb)  # idempotent: one notification
    reply = await api.post(tb, "a reply", reply_to=post["id"])
    await api.call("PUT", f"/v1/posts/{post['id']}/like", token=ta)  # own like: no notification

    async def three() -> list[dict[str, Any]]:
        items = await api.all_pages("/v1/notifications", token=ta, limit=2)
        return items if len(items) >= 3 else []

    items = await eventually(three, what="three notifications")
    await asyncio.sleep(1)  # and no more arrive (the repeated like is one notification)
    items = await api.all_pages("/v1/notifications", token=ta, limit=2)
    assert [(n["type"], n["post_id"]) for n in items] == [
        ("reply", reply["id"]),
        ("like", post["id"]),
        ("follow", None),
    ]
    assert all(n["actor"]["id"] == bob["id"] and n["created_at"].endswith("Z") for n in items)
    assert (await api.call("GET", "/v1/notifications")).status == 401


async def test_feed__scrolls_past_the_inbox_into_older_posts_of_followees(api: Api) -> None:
    """A reader's first read rebuilds the inbox with each followee's 20 newest posts; scrolling
    goes on into the older ones, with no repeat and no gap."""
    author, ta = await api.signup("fa")
    _, tr = await api.signup("fr")
    assert (await api.call("PUT", f"/v1/me/following/{author['handle']}", token=tr)).status == 204
    posts = [(await api.post(ta, f"post {i}"))["id"] for i in range(30)]
    feed = await api.all_pages("/v1/feed", token=tr, limit=20)
    assert [p["id"] for p in feed] == list(reversed(posts))


async def test_feed__a_backfilled_followee_leaves_no_gap_in_the_older_posts(api: Api) -> None:
    """Older followee B, followed after the first read: its 20 newest posts go into the
    inbox, below the 10 of A's that the rebuild left out — which the scroll must still show."""
    old, tb = await api.signup("fb")
    new, ta = await api.signup("fa")
    _, tr = await api.signup("fr")
    b_posts = [(await api.post(tb, f"b {i}"))["id"] for i in range(25)]
    a_posts = [(await api.post(ta, f"a {i}"))["id"] for i in range(30)]
    assert (await api.call("PUT", f"/v1/me/following/{new['handle']}", token=tr)).status == 204
    await api.call("GET", "/v1/feed", token=tr)  # the first read: A's 20 newest in the inbox
    assert (await api.call("PUT", f"/v1/me/following/{old['handle']}", token=tr)).status == 204
    expected = list(reversed(b_posts + a_posts))

    async def scrolled() -> list[str] | None:
        ids = [p["id"] for p in await api.all_pages("/v1/feed", token=tr, limit=20)]
        return ids if b_posts[-1] in ids else None  # B's backfill (the follow job) has run

    ids = await eventually(scrolled, what="the followee's posts in the feed")
    assert ids == expected
