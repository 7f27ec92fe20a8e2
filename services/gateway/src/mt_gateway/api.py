"""The REST API v1 handlers (DESIGN.md §3): validate, call the services, render.

Each handler is registered once with :func:`~mt_gateway.routing.endpoint`; the pipeline in
:mod:`mt_gateway.routing` has already rate-limited, authenticated and validated the request.
Writes go to the service that owns the data; a single profile or post is read where the data
is — the KV, through the schema's readers (:mod:`mt_schema.views`), as the web tier reads TAO
at Meta — with no hop at all.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from mt_core.errors import FailedPrecondition, InvalidArgument, NotFound
from mt_core.rpc.client import call
from mt_core.telemetry import annotate
from mt_proto import common_pb2 as cpb
from mt_proto import feed_pb2 as fpb
from mt_proto import graph_pb2 as gpb
from mt_proto import posts_pb2 as ppb
from mt_proto import users_pb2 as upb
from mt_schema import views

from mt_gateway import render, schemas
from mt_gateway.routing import Ctx, client_ip, endpoint

ERRORS_AUTH = (401,)


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.json_response(payload, status=status)


def _no_content() -> web.Response:
    return web.Response(status=204)


def _page(ctx: Ctx) -> cpb.PageRequest:
    return cpb.PageRequest(limit=ctx.limit, cursor=ctx.cursor)


def _no_user() -> NotFound:
    return NotFound("no such user", code="user_not_found")


async def _user_id(ctx: Ctx, handle: str, *, remembered: bool = True) -> str:
    """The id a handle names (remembered, for reads; else one read of its claim in the KV)."""
    user_id = await ctx.handles.id_of(handle, remembered=remembered)
    if user_id is None:
        raise _no_user()
    return user_id


# ---------------------------------------------------------------------- accounts and sessions


@endpoint(
    "POST",
    "/v1/accounts",
    "Sign up (linked to a legacy account with its identity provider's assertion, if any)",
    body=schemas.AccountIn,
    response=schemas.SessionOut,
    status=201,
    errors=(400, 401, 404, 409),
)
async def create_account(ctx: Ctx) -> web.StreamResponse:
    body: schemas.AccountIn = ctx.body
    request = upb.CreateAccountRequest(password=body.password or "")
    for name in ("handle", "display_name", "legacy_id", "legacy_assertion"):
        if getattr(body, name) is not None:
            setattr(request, name, getattr(body, name))
    reply = await call(ctx.b.users.CreateAccount(request))
    return _json({"user": render.user(reply.user), "token": reply.token}, 201)


@endpoint(
    "POST",
    "/v1/sessions",
    "Log in (handle and password, or a legacy assertion)",
    body=schemas.SessionIn,
    response=schemas.SessionOut,
    status=201,
    errors=(400, 401, 404, 429),
)
async def login(ctx: Ctx) -> web.StreamResponse:
    body: schemas.SessionIn = ctx.body
    limiter = ctx.request.app["limiter"]
    if body.legacy_assertion is not None:
        # A signed assertion cannot be guessed: only the address's limit applies.
        await limiter.hit_all(
            [("login-ip", client_ip(ctx.request), ctx.settings.login_per_ip_per_min)],
            fail_open=False,
        )
        request = upb.LoginRequest(legacy_assertion=body.legacy_assertion)
    elif body.handle is not None and body.password is not None:
        # Password guessing: per account from anywhere, and per address across accounts.
        # These limits fail closed: without Redis we cannot count, so no guess goes through.
        await limiter.hit_all(
            [
                ("login-ip", client_ip(ctx.request), ctx.settings.login_per_ip_per_min),
                (
                    "login-handle",
                    body.handle.strip().casefold(),
                    ctx.settings.login_per_handle_per_min,
                ),
            ],
            fail_open=False,
        )
        request = upb.LoginRequest(handle=body.handle, password=body.password)
    else:
        raise InvalidArgument(
            "log in with handle and password, or with legacy_assertion", code="invalid_body"
        )
    reply = await call(ctx.b.users.Login(request))
    return _json({"user": render.user(reply.user), "token": reply.token}, 201)


@endpoint(
    "POST",
    "/v1/legacy/assertions",
    "The legacy identity provider: an assertion that you own a legacy account, to sign up or "
    "log in with it",
    body=schemas.LegacyAssertionIn,
    response=schemas.LegacyAssertionOut,
    status=201,
    errors=(400, 401, 429),
)
async def legacy_assertion(ctx: Ctx) -> web.StreamResponse:
    body: schemas.LegacyAssertionIn = ctx.body
    # Credential guessing: held to the login limit per account (failing closed, like it).
    await ctx.request.app["limiter"].hit_all(
        [
            ("assertion-ip", client_ip(ctx.request), ctx.settings.assertion_per_ip_per_min),
            ("login-legacy", body.legacy_id, ctx.settings.login_per_handle_per_min),
        ],
        fail_open=False,
    )
    request = gpb.IssueLegacyAssertionRequest(
        legacy_id=body.legacy_id, credential=body.credential, audience=body.audience or ""
    )
    made = await call(ctx.b.graph.IssueLegacyAssertion(request))
    return _json(
        {
            "assertion": made.assertion,
            "legacy_id": made.legacy_id,
            "expires_at": render.rfc3339(made.expires_at_us),
        },
        201,
    )


@endpoint(
    "DELETE",
    "/v1/sessions/current",
    "Log out: the token stops working",
    auth="required",
    status=204,
    errors=ERRORS_AUTH,
)
async def logout(ctx: Ctx) -> web.StreamResponse:
    await call(ctx.b.users.RevokeSession(upb.RevokeSessionRequest(token=ctx.token or "")))
    return _no_content()


@endpoint(
    "GET",
    "/v1/me",
    "The caller's profile",
    auth="required",
    response=schemas.UserOut,
    errors=ERRORS_AUTH,
)
async def me(ctx: Ctx) -> web.StreamResponse:
    found = await views.users_by_id(ctx.kv, [ctx.me])
    if ctx.me not in found:
        raise _no_user()
    return _json(render.user(found[ctx.me]))


@endpoint(
    "PATCH",
    "/v1/me",
    "Change display name and/or bio",
    auth="required",
    body=schemas.ProfileIn,
    response=schemas.UserOut,
    errors=(400, 401),
)
async def update_me(ctx: Ctx) -> web.StreamResponse:
    body: schemas.ProfileIn = ctx.body
    request = upb.UpdateProfileRequest(user_id=ctx.me)
    if body.display_name is not None:
        request.display_name = body.display_name
    if body.bio is not None:
        request.bio = body.bio
    user = await call(ctx.b.users.UpdateProfile(request))
    return _json(render.user(user))


@endpoint("GET", "/v1/users/{handle}", "A user's profile", response=schemas.UserOut, errors=(404,))
async def get_user(ctx: Ctx) -> web.StreamResponse:
    user = await views.by_handle(ctx.kv, ctx.handles, ctx.param("handle"))
    if user is None:
        raise _no_user()
    return _json(render.user(user))


@endpoint(
    "GET",
    "/v1/search/users",
    "Users whose handle starts with q",
    response=schemas.UserOut,
    paged=True,
    errors=(400,),
    extra_query=("q",),
)
async def search_users(ctx: Ctx) -> web.StreamResponse:
    q = ctx.request.query.get("q", "")
    if not q:
        raise InvalidArgument("q (a handle prefix) is required", code="invalid_query")
    reply = await call(ctx.b.users.SearchUsers(upb.SearchUsersRequest(prefix=q, page=_page(ctx))))
    return _json(render.page(render.users(reply.items), reply.next_cursor))


# ---------------------------------------------------------------------- graph


@endpoint(
    "PUT",
    "/v1/me/following/{handle}",
    "Follow (idempotent)",
    auth="required",
    status=204,
    errors=(400, 401, 404),
)
async def follow(ctx: Ctx) -> web.StreamResponse:
    followee = await _user_id(ctx, ctx.param("handle"), remembered=False)
    annotate(followee_id=followee)
    await call(ctx.b.graph.Follow(gpb.FollowRequest(follower_id=ctx.me, followee_id=followee)))
    return _no_content()


@endpoint(
    "GET",
    "/v1/me/following/{handle}",
    "Whether you follow the user: 204 if you do, 404 not_following if not",
    auth="required",
    status=204,
    errors=(401, 404),
)
async def is_following(ctx: Ctx) -> web.StreamResponse:
    # Beyond DESIGN.md's table: the read of the resource PUT and DELETE name, which a profile's
    # Follow button needs (issue 20's web client).
    followee = await _user_id(ctx, ctx.param("handle"))
    reply = await call(
        ctx.b.graph.IsFollowing(gpb.IsFollowingRequest(viewer_id=ctx.me, target_ids=[followee]))
    )
    if followee not in reply.following_ids:
        raise NotFound("you do not follow this user", code="not_following")
    return _no_content()


@endpoint(
    "DELETE",
    "/v1/me/following/{handle}",
    "Unfollow (idempotent)",
    auth="required",
    status=204,
    errors=(401, 404),
)
async def unfollow(ctx: Ctx) -> web.StreamResponse:
    followee = await _user_id(ctx, ctx.param("handle"), remembered=False)
    await call(ctx.b.graph.Unfollow(gpb.UnfollowRequest(follower_id=ctx.me, followee_id=followee)))
    return _no_content()


@endpoint(
    "GET",
    "/v1/users/{handle}/followers",
    "Who follows the user, newest first",
    response=schemas.UserOut,
    paged=True,
    errors=(400, 404),
)
async def followers(ctx: Ctx) -> web.StreamResponse:
    user_id = await _user_id(ctx, ctx.param("handle"))
    reply = await call(
        ctx.b.graph.ListFollowers(gpb.ListFollowersRequest(user_id=user_id, page=_page(ctx)))
    )
    return _json(render.page(render.users(reply.users), reply.next_cursor))


@endpoint(
    "GET",
    "/v1/users/{handle}/following",
    "Whom the user follows, newest first",
    response=schemas.UserOut,
    paged=True,
    errors=(400, 404),
)
async def following(ctx: Ctx) -> web.StreamResponse:
    user_id = await _user_id(ctx, ctx.param("handle"))
    reply = await call(
        ctx.b.graph.ListFollowing(gpb.ListFollowingRequest(user_id=user_id, page=_page(ctx)))
    )
    return _json(render.page(render.users(reply.users), reply.next_cursor))


@endpoint(
    "POST",
    "/v1/me/imports",
    "Copy the linked legacy account's follow graph (async)",
    auth="required",
    body=schemas.ImportIn,
    response=schemas.ImportOut,
    status=202,
    errors=(401, 409),
)
async def start_import(ctx: Ctx) -> web.StreamResponse:
    user = await call(ctx.b.users.GetUser(upb.GetUserRequest(user_id=ctx.me)))
    if not user.HasField("legacy_id"):
        raise FailedPrecondition(
            "this account is not linked to a legacy account", code="no_legacy_account"
        )
    started = await call(
        ctx.b.graph.StartImport(gpb.StartImportRequest(user_id=ctx.me, legacy_id=user.legacy_id))
    )
    return _json(render.import_(started), 202)


@endpoint(
    "GET",
    "/v1/me/imports/{id}",
    "Progress of an import",
    auth="required",
    response=schemas.ImportOut,
    errors=(401, 404),
)
async def get_import(ctx: Ctx) -> web.StreamResponse:
    found = await call(
        ctx.b.graph.GetImport(gpb.GetImportRequest(user_id=ctx.me, import_id=ctx.param("id")))
    )
    return _json(render.import_(found))


@endpoint(
    "GET",
    "/v1/legacy/accounts/{legacy_id}",
    "A simulated legacy (Instagram) account",
    response=schemas.LegacyAccountOut,
    errors=(404,),
)
async def legacy_account(ctx: Ctx) -> web.StreamResponse:
    account = await call(
        ctx.b.graph.GetLegacyAccount(gpb.GetLegacyAccountRequest(legacy_id=ctx.param("legacy_id")))
    )
    return _json(
        {
            "legacy_id": account.legacy_id,
            "handle": account.handle,
            "following_count": account.following_count,
        }
    )


@endpoint(
    "GET",
    "/v1/legacy/accounts/{legacy_id}/following",
    "Whom a legacy account follows there, and who has joined",
    response=schemas.LegacyFollowingOut,
    paged=True,
    errors=(400, 404),
)
async def legacy_following(ctx: Ctx) -> web.StreamResponse:
    reply = await call(
        ctx.b.graph.ListLegacyFollowing(
            gpb.ListLegacyFollowingRequest(legacy_id=ctx.param("legacy_id"), page=_page(ctx))
        )
    )
    ids = [a.legacy_id for a in reply.items]
    joined = await call(
        ctx.b.users.BatchGetUsersByLegacyId(upb.BatchGetUsersByLegacyIdRequest(legacy_ids=ids))
    )
    items = [
        {"legacy_id": a.legacy_id, "handle": a.handle, "on_app": a.legacy_id in joined.users}
        for a in reply.items
    ]
    return _json(render.page(items, reply.next_cursor))


# ---------------------------------------------------------------------- posts


@endpoint(
    "POST",
    "/v1/posts",
    "Publish a post or a reply (Idempotency-Key: same key, same post, once)",
    auth="required",
    body=schemas.PostIn,
    response=schemas.PostOut,
    status=201,
    errors=(400, 401, 404, 409),
    headers=("Idempotency-Key",),
)
async def create_post(ctx: Ctx) -> web.StreamResponse:
    body: schemas.PostIn = ctx.body
    key = ctx.request.headers.get("Idempotency-Key")
    request = ppb.CreatePostRequest(author_id=ctx.me, text=body.text)
    if body.reply_to is not None:
        request.reply_to = body.reply_to
    if key is not None:
        # The posts service keeps one post per (author, key), beside the post in the KV.
        request.idempotency_key = _idempotency_key(key)
    post = await call(ctx.b.posts.CreatePost(request))
    annotate(post_id=post.id)
    return _json(render.post(post), 201)


def _idempotency_key(key: str) -> str:
    if not 1 <= len(key) <= 128 or not key.isprintable():
        raise InvalidArgument(
            "Idempotency-Key must be 1-128 printable characters", code="invalid_idempotency_key"
        )
    return key


@endpoint(
    "GET", "/v1/posts/{id}", "A post", auth="optional", response=schemas.PostOut, errors=(404,)
)
async def get_post(ctx: Ctx) -> web.StreamResponse:
    post_id = ctx.param("id")
    found = await views.posts_by_id(ctx.kv, [post_id], ctx.viewer or "")
    if post_id not in found:
        raise NotFound("no such post", code="post_not_found")
    annotate(post_id=post_id)
    return _json(render.post(found[post_id]))


@endpoint(
    "DELETE",
    "/v1/posts/{id}",
    "Delete a post (author only)",
    auth="required",
    status=204,
    errors=(401, 403, 404),
)
async def delete_post(ctx: Ctx) -> web.StreamResponse:
    await call(
        ctx.b.posts.DeletePost(ppb.DeletePostRequest(post_id=ctx.param("id"), actor_id=ctx.me))
    )
    return _no_content()


@endpoint(
    "GET",
    "/v1/posts/{id}/replies",
    "Direct replies, oldest first",
    auth="optional",
    response=schemas.PostOut,
    paged=True,
    errors=(400, 404),
)
async def replies(ctx: Ctx) -> web.StreamResponse:
    request = ppb.ListRepliesRequest(
        post_id=ctx.param("id"), page=_page(ctx), viewer_id=ctx.viewer or ""
    )
    reply = await call(ctx.b.posts.ListReplies(request))
    return _json(render.page(render.posts(reply.items), reply.next_cursor))


@endpoint(
    "GET",
    "/v1/users/{handle}/posts",
    "A user's posts, newest first",
    auth="optional",
    response=schemas.PostOut,
    paged=True,
    errors=(400, 404),
)
async def user_posts(ctx: Ctx) -> web.StreamResponse:
    author = await _user_id(ctx, ctx.param("handle"))
    request = ppb.ListUserPostsRequest(
        author_id=author, page=_page(ctx), viewer_id=ctx.viewer or ""
    )
    reply = await call(ctx.b.posts.ListUserPosts(request))
    return _json(render.page(render.posts(reply.items), reply.next_cursor))


@endpoint(
    "PUT",
    "/v1/posts/{id}/like",
    "Like (idempotent)",
    auth="required",
    status=204,
    errors=(401, 404),
)
async def like(ctx: Ctx) -> web.StreamResponse:
    await call(ctx.b.posts.Like(ppb.LikeRequest(user_id=ctx.me, post_id=ctx.param("id"))))
    return _no_content()


@endpoint(
    "DELETE",
    "/v1/posts/{id}/like",
    "Unlike (idempotent)",
    auth="required",
    status=204,
    errors=(401, 404),
)
async def unlike(ctx: Ctx) -> web.StreamResponse:
    await call(ctx.b.posts.Unlike(ppb.UnlikeRequest(user_id=ctx.me, post_id=ctx.param("id"))))
    return _no_content()


# ---------------------------------------------------------------------- feed and notifications


@endpoint(
    "GET",
    "/v1/feed",
    "Home feed: own and followed authors' posts, newest first",
    auth="required",
    response=schemas.PostOut,
    paged=True,
    errors=(400, 401),
)
async def feed(ctx: Ctx) -> web.StreamResponse:
    reply = await call(ctx.b.feed.GetFeed(fpb.GetFeedRequest(viewer_id=ctx.me, page=_page(ctx))))
    return _json(render.page(render.posts(reply.items), reply.next_cursor))


@endpoint(
    "GET",
    "/v1/notifications",
    "Follows, likes and replies, newest first",
    auth="required",
    response=schemas.NotificationOut,
    paged=True,
    errors=(400, 401),
)
async def notifications(ctx: Ctx) -> web.StreamResponse:
    reply = await call(
        ctx.b.feed.ListNotifications(fpb.ListNotificationsRequest(user_id=ctx.me, page=_page(ctx)))
    )
    return _json(render.page(render.notifications(reply.items, reply.actors), reply.next_cursor))
