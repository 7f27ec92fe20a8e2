"""The REST contract's shapes as pydantic models: request bodies are validated with them and
/openapi.json is generated from them (DESIGN.md §3)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

HANDLE_PATTERN = r"^[A-Za-z0-9_.]{1,30}$"  # case-folded by the server


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


ASSERTION = "The legacy identity provider's assertion (POST /v1/legacy/assertions)"


TIME = "RFC 3339, UTC"
ID = "An opaque string id; ids of one kind sort by creation time"


class AccountIn(_In):
    """A new account: a handle and password, or the legacy identity provider's assertion."""

    handle: str | None = Field(
        None,
        pattern=HANDLE_PATTERN,
        description="1..30 of a-z, 0-9, _ and . (case-folded); may be left out with a "
        "legacy_assertion: the legacy account's handle is taken",
    )
    password: str | None = Field(
        None,
        min_length=8,
        max_length=128,
        description="8..128 characters; required unless legacy_assertion is given",
    )
    display_name: str | None = Field(
        None, min_length=1, max_length=64, description="The name shown; the handle if left out"
    )
    legacy_id: str | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="The legacy account to link; only with its legacy_assertion",
    )
    legacy_assertion: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description=f"{ASSERTION}: links the legacy account it names (one account per legacy "
        "account: 409 legacy_taken); the handle defaults to that account's",
    )


class SessionIn(_In):
    """A login: handle and password, or a legacy assertion."""

    handle: str | None = Field(
        None, min_length=1, max_length=30, description="The account's handle"
    )
    password: str | None = Field(
        None, min_length=1, max_length=128, description="The account's password"
    )
    legacy_assertion: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description=f"{ASSERTION}: instead of handle and password",
    )


class LegacyAssertionIn(_In):
    """Ask the (simulated) legacy identity provider to vouch for a legacy account."""

    legacy_id: str = Field(min_length=1, max_length=16, description="The legacy account's id")
    credential: str = Field(
        min_length=1,
        max_length=128,
        description="The legacy account's credential (what its owner types at the legacy app)",
    )
    audience: str | None = Field(
        None, min_length=1, max_length=64, description="The app it is for (default minithreads)"
    )


class LegacyAssertionOut(BaseModel):
    """A short-lived proof that the caller owns a legacy account."""

    assertion: str = Field(description="Pass it as legacy_assertion to sign up or log in")
    legacy_id: str = Field(description="The legacy account it vouches for")
    expires_at: str = Field(description=f"When it stops being accepted ({TIME})")


class ProfileIn(_In):
    """What a user may change of their profile; fields left out keep their value."""

    display_name: str | None = Field(
        None, min_length=1, max_length=64, description="The name shown (1..64 characters)"
    )
    bio: str | None = Field(
        None, max_length=160, description="A line about oneself (up to 160 characters)"
    )


class ImportIn(_In):
    """No fields: the import copies the signed-in user's linked legacy account."""


class PostIn(_In):
    """A new post, or a reply."""

    text: str = Field(
        min_length=1,
        max_length=2000,
        description="1..500 characters after trimming (the raw body may carry up to 2000)",
    )
    reply_to: str | None = Field(
        None, min_length=1, max_length=64, description="The id of the post this replies to"
    )


class UserOut(BaseModel):
    """A user's public profile."""

    id: str = Field(description=ID)
    handle: str = Field(description="Unique, lower case; in URLs as /@handle")
    display_name: str = Field(description="The name shown")
    bio: str = Field(description="A line about themselves (may be empty)")
    followers_count: int = Field(description="How many follow them (may lag briefly)")
    following_count: int = Field(description="How many they follow (may lag briefly)")
    posts_count: int = Field(description="How many posts they wrote")
    created_at: str = Field(description=f"When they joined ({TIME})")


class UserSummary(BaseModel):
    """Who wrote a post."""

    id: str = Field(description=ID)
    handle: str = Field(description="Unique, lower case")
    display_name: str = Field(description="The name shown")


class PostOut(BaseModel):
    """A post or a reply."""

    id: str = Field(description=ID)
    author: UserSummary = Field(description="Who wrote it")
    text: str = Field(description="As written, trimmed: show it as text, never as HTML")
    reply_to: str | None = Field(description="The post it replies to; null for a post")
    created_at: str = Field(description=f"When it was written ({TIME})")
    like_count: int = Field(description="Likes (may lag briefly for others than the liker)")
    reply_count: int = Field(description="Replies to it")
    liked_by_me: bool = Field(description="Whether the caller likes it (false without a token)")


class SessionOut(BaseModel):
    """A signed-in session."""

    user: UserOut = Field(description="Whose session it is")
    token: str = Field(
        description="The bearer token: Authorization: Bearer <token> until logout (30 days)"
    )


class ImportOut(BaseModel):
    """The copy of a legacy account's follow graph (one-tap import)."""

    id: str = Field(description=ID)
    state: Literal["queued", "running", "done", "failed"] = Field(
        description="queued until a worker takes it, running, then done (or failed)"
    )
    total: int = Field(description="How many accounts the legacy account follows")
    done: int = Field(description="Of those, how many are followed here so far")
    pending: int = Field(
        description="Of those, how many have not joined yet: followed automatically when they do"
    )


class NotificationOut(BaseModel):
    """Something that happened to the caller."""

    id: str = Field(description=ID)
    type: Literal["follow", "like", "reply"] = Field(
        description="follow: the actor followed you; like: liked post_id; reply: post_id "
        "replies to you"
    )
    actor: UserOut = Field(description="Who did it")
    post_id: str | None = Field(None, description="The post it is about (likes and replies)")
    created_at: str = Field(description=f"When it happened ({TIME})")


class LegacyAccountOut(BaseModel):
    """An account of the (simulated) legacy app."""

    legacy_id: str = Field(description="Its id on the legacy app")
    handle: str = Field(description="Its handle on the legacy app")
    following_count: int = Field(description="How many it follows there")


class LegacyFollowingOut(BaseModel):
    """An account a legacy account follows."""

    legacy_id: str = Field(description="Its id on the legacy app")
    handle: str = Field(description="Its handle on the legacy app")
    on_app: bool = Field(description="Whether it has joined minithreads")


class ErrorBody(BaseModel):
    """What went wrong."""

    code: str = Field(description="snake_case, stable: what a client branches on")
    message: str = Field(description="A human sentence (not for parsing)")


class ErrorOut(BaseModel):
    """Every error answer (429 and 503 also carry Retry-After, in seconds)."""

    error: ErrorBody = Field(description="The error")
