"""How much a request matters when there is not room for everything (Google SRE's criticality).

Every request carries one class, from the edge to the last hop, so that under overload each
process refuses the least important work first:

* ``CRITICAL`` — identity: signing up, logging in or out. A refusal here cannot be hidden
  from the user (nothing else works until it succeeds; a logout must take effect), and the
  launch is counted in signups.
* ``DEFAULT`` — the user's own writes, which the app sends again by itself after Retry-After
  (a post with its Idempotency-Key, likes, follows, edits, an import), and their own profile.
* ``SHEDDABLE`` — reads the app can do without for a moment or retry unseen: a feed refresh
  (the device shows the timeline it has), post and profile pages, lists, search,
  notifications, legacy lookups, import progress.
* ``ASYNC`` — the async platform's work (fan-out, imports, joins): lowest of all; it is what
  can wait, and it is made to wait.

The gateway sets the class per route (never from a client's header); it travels between
services in gRPC metadata, beside the deadline, and is restored on the server side into a
context variable, so outbound calls inherit it (:mod:`mt_core.rpc.client`,
:mod:`mt_core.rpc.server`).
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
from collections.abc import Iterator

METADATA_KEY = "mt-criticality"


class Criticality(enum.IntEnum):
    ASYNC = 0
    SHEDDABLE = 1
    DEFAULT = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | None) -> Criticality:
        """The class named by ``value`` (metadata from another process); DEFAULT if unknown."""
        if value:
            try:
                return cls[value.upper()]
            except KeyError:
                pass
        return cls.DEFAULT


_current: contextvars.ContextVar[Criticality] = contextvars.ContextVar(
    "mt_criticality", default=Criticality.DEFAULT
)


def current() -> Criticality:
    return _current.get()


def set_current(value: Criticality) -> contextvars.Token[Criticality]:
    return _current.set(value)


def reset(token: contextvars.Token[Criticality]) -> None:
    _current.reset(token)


@contextlib.contextmanager
def scope(value: Criticality) -> Iterator[None]:
    """Run the block (and every call it makes) as ``value``."""
    token = _current.set(value)
    try:
        yield
    finally:
        _current.reset(token)
