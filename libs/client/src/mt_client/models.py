"""The REST API's JSON shapes (DESIGN.md §3) as frozen, typed values.

Parsing is strict where the contract is (ids are strings, counts are integers, times are
RFC 3339), so a server that drifts from the contract fails loudly in the client instead of
handing wrong types to application code. The one leniency: ``display_name`` and ``bio`` are
optional at signup, so ``null`` is read as the empty string.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ShapeError(ValueError):
    """A response body does not have the contract's shape."""


class _Object:
    """One JSON object of a response, read field by field as the type the contract gives."""

    def __init__(self, data: object, what: str) -> None:
        if not isinstance(data, dict):
            raise ShapeError(f"{what}: expected an object, got {type(data).__name__}")
        self._data: dict[str, Any] = data
        self._what = what

    def _get(self, name: str, kind: type, *, optional: bool = False) -> Any:
        value = self._data.get(name)
        if value is None and optional:
            return None
        # bool is an int in Python; a count or id must not silently accept true/false
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ShapeError(f"{self._what}.{name}: expected {kind.__name__}, got {value!r}")
        return value

    def string(self, name: str) -> str:
        value: str = self._get(name, str)
        return value

    def optional_string(self, name: str) -> str | None:
        value: str | None = self._get(name, str, optional=True)
        return value

    def text(self, name: str) -> str:
        """A free-text field that may be null (read as "")."""
        return self.optional_string(name) or ""

    def integer(self, name: str) -> int:
        value: int = self._get(name, int)
        return value

    def flag(self, name: str) -> bool:
        value: bool = self._get(name, bool)
        return value

    def time(self, name: str) -> datetime:
        raw = self.string(name)
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            raise ShapeError(f"{self._what}.{name}: not an RFC 3339 time: {raw!r}") from None
        # The contract says UTC; a time without an offset is taken to mean it.
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)

    def raw(self, name: str) -> object:
        """A nested value, for the nested shape's own parser to check."""
        return self._data.get(name)

    def array(self, name: str) -> list[object]:
        value: list[object] = self._get(name, list)
        return value


@dataclass(frozen=True)
class UserSummary:
    """The author of a post, as embedded in it."""

    id: str
    handle: str
    display_name: str

    @classmethod
    def from_json(cls, data: object) -> UserSummary:
        o = _Object(data, "user_summary")
        return cls(
            id=o.string("id"), handle=o.string("handle"), display_name=o.text("display_name")
        )


@dataclass(frozen=True)
class User:
    id: str
    handle: str
    display_name: str
    bio: str
    followers_count: int
    following_count: int
    posts_count: int
    created_at: datetime

    @classmethod
    def from_json(cls, data: object) -> User:
        o = _Object(data, "user")
        return cls(
            id=o.string("id"),
            handle=o.string("handle"),
            display_name=o.text("display_name"),
            bio=o.text("bio"),
            followers_count=o.integer("followers_count"),
            following_count=o.integer("following_count"),
            posts_count=o.integer("posts_count"),
            created_at=o.time("created_at"),
        )


@dataclass(frozen=True)
class Session:
    """What signup and login return: the account and its bearer token."""

    user: User
    token: str = field(repr=False)  # kept out of reprs so it does not end up in logs

    @classmethod
    def from_json(cls, data: object) -> Session:
        o = _Object(data, "session")
        return cls(user=User.from_json(o.raw("user")), token=o.string("token"))


@dataclass(frozen=True)
class LegacyAssertion:
    """The legacy identity provider's word that the caller owns a legacy account: what links
    it at signup, or logs its account in (single use, minutes long)."""

    legacy_id: str
    assertion: str = field(repr=False)
    expires_at: str = ""

    @classmethod
    def from_json(cls, data: object) -> LegacyAssertion:
        o = _Object(data, "legacy_assertion")
        return cls(
            legacy_id=o.string("legacy_id"),
            assertion=o.string("assertion"),
            expires_at=o.string("expires_at"),
        )


@dataclass(frozen=True)
class Post:
    id: str
    author: UserSummary
    text: str
    reply_to: str | None
    created_at: datetime
    like_count: int
    reply_count: int
    liked_by_me: bool

    @classmethod
    def from_json(cls, data: object) -> Post:
        o = _Object(data, "post")
        return cls(
            id=o.string("id"),
            author=UserSummary.from_json(o.raw("author")),
            text=o.string("text"),
            reply_to=o.optional_string("reply_to"),
            created_at=o.time("created_at"),
            like_count=o.integer("like_count"),
            reply_count=o.integer("reply_count"),
            liked_by_me=o.flag("liked_by_me"),
        )


@dataclass(frozen=True)
class Import:
    """Progress of copying the legacy follow graph: ``done`` of ``total`` followees handled,
    ``pending`` of them not on the app yet (followed automatically when they join)."""

    id: str
    state: str  # queued | running | done | failed
    total: int
    done: int
    pending: int

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    @classmethod
    def from_json(cls, data: object) -> Import:
        o = _Object(data, "import")
        return cls(
            id=o.string("id"),
            state=o.string("state"),
            total=o.integer("total"),
            done=o.integer("done"),
            pending=o.integer("pending"),
        )


@dataclass(frozen=True)
class Notification:
    id: str
    type: str  # follow | like | reply
    actor: User
    post_id: str | None
    created_at: datetime

    @classmethod
    def from_json(cls, data: object) -> Notification:
        o = _Object(data, "notification")
        return cls(
            id=o.string("id"),
            type=o.string("type"),
            actor=User.from_json(o.raw("actor")),
            post_id=o.optional_string("post_id"),
            created_at=o.time("created_at"),
        )


@dataclass(frozen=True)
class LegacyAccount:
    """An account of the simulated legacy ("Instagram") network."""

    legacy_id: str
    handle: str
    following_count: int

    @classmethod
    def from_json(cls, data: object) -> LegacyAccount:
        o = _Object(data, "legacy_account")
        return cls(
            legacy_id=o.string("legacy_id"),
            handle=o.string("handle"),
            following_count=o.integer("following_count"),
        )


@dataclass(frozen=True)
class LegacyFollowing:
    """Someone a legacy account follows there, and whether they have joined the app."""

    legacy_id: str
    handle: str
    on_app: bool

    @classmethod
    def from_json(cls, data: object) -> LegacyFollowing:
        o = _Object(data, "legacy_following")
        return cls(
            legacy_id=o.string("legacy_id"), handle=o.string("handle"), on_app=o.flag("on_app")
        )


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list; pass ``next_cursor`` back to get the next (None: this was the last)."""

    items: tuple[T, ...]
    next_cursor: str | None

    @classmethod
    def from_json(cls, data: object, item: Callable[[object], T]) -> Page[T]:
        o = _Object(data, "page")
        return cls(
            items=tuple(item(raw) for raw in o.array("items")),
            # "" is read as null too: an empty cursor cannot lead anywhere
            next_cursor=o.optional_string("next_cursor") or None,
        )
