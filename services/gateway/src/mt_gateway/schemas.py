"""The REST contract's shapes as pydantic models: request bodies are validated with them and
/openapi.json is generated from them (DESIGN.md §3)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

HANDLE_PATTERN = r"^[A-Za-z0-9_.]{1,30}$"  # case-folded by the server


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


ASSERTION = "The legacy identity provider's assertion (POST /v1/legacy/assertions)"


class AccountIn(_In):
    handle: str | None = Field(None, pattern=HANDLE_PATTERN)
    password: str | None = Field(
        None, min_length=8, max_length=128, description="Required unless legacy_assertion is given"
    )
    display_name: str | None = Field(None, min_length=1, max_length=64)
    legacy_id: str | None = Field(
        None, min_length=1, max_length=16, description="Only with its legacy_assertion"
    )
    legacy_assertion: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description=f"{ASSERTION}: links the legacy account it names; the handle defaults to "
        "that account's",
    )


class SessionIn(_In):
    handle: str | None = Field(None, min_length=1, max_length=30)
    password: str | None = Field(None, min_length=1, max_length=128)
    legacy_assertion: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description=f"{ASSERTION}: instead of handle and password",
    )


class LegacyAssertionIn(_In):
    legacy_id: str = Field(min_length=1, max_length=16)
    credential: str = Field(min_length=1, max_length=128, description="The legacy account's")
    audience: str | None = Field(
        None, min_length=1, max_length=64, description="The app it is for (default minithreads)"
    )


class LegacyAssertionOut(BaseModel):
    assertion: str
    legacy_id: str
    expires_at: str = Field(description="RFC 3339 UTC")


class ProfileIn(_In):
    display_name: str | None = Field(None, min_length=1, max_length=64)
    bio: str | None = Field(None, max_length=160)


class ImportIn(_In):
    pass


class PostIn(_In):
    text: str = Field(min_length=1, max_length=2000, description="1..500 characters after trimming")
    reply_to: str | None = Field(None, min_length=1, max_length=64)


class UserOut(BaseModel):
    id: str
    handle: str
    display_name: str
    bio: str
    followers_count: int
    following_count: int
    posts_count: int
    created_at: str = Field(description="RFC 3339 UTC")


class UserSummary(BaseModel):
    id: str
    handle: str
    display_name: str


class PostOut(BaseModel):
    id: str
    author: UserSummary
    text: str
    reply_to: str | None
    created_at: str
    like_count: int
    reply_count: int
    liked_by_me: bool


class SessionOut(BaseModel):
    user: UserOut
    token: str


class ImportOut(BaseModel):
    id: str
    state: Literal["queued", "running", "done", "failed"]
    total: int
    done: int
    pending: int


class NotificationOut(BaseModel):
    id: str
    type: Literal["follow", "like", "reply"]
    actor: UserOut
    post_id: str | None = None
    created_at: str


class LegacyAccountOut(BaseModel):
    legacy_id: str
    handle: str
    following_count: int


class LegacyFollowingOut(BaseModel):
    legacy_id: str
    handle: str
    on_app: bool


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody
