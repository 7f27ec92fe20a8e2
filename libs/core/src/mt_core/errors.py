"""The errors every minithreads component raises: a base class and one class per condition.

Each carries a machine ``code`` (snake_case, shown to REST clients) and a human ``message``.
``retriable`` says whether the same request may succeed if simply tried again. Transport
mappings live in one table each: gRPC in :mod:`mt_core.rpc.status`, HTTP in the gateway.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar


class MinithreadsError(Exception):
    """Base of every error we raise on purpose."""

    default_code: ClassVar[str] = "internal"
    retriable: ClassVar[bool] = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class InvalidArgument(MinithreadsError):
    default_code = "invalid_argument"


class TooLarge(InvalidArgument):
    default_code = "too_large"


class Unauthenticated(MinithreadsError):
    default_code = "unauthenticated"


class PermissionDenied(MinithreadsError):
    default_code = "forbidden"


class NotFound(MinithreadsError):
    default_code = "not_found"


class AlreadyExists(MinithreadsError):
    default_code = "conflict"


class FailedPrecondition(MinithreadsError):
    """The request is valid but the state does not allow it (e.g. a conditional write lost)."""

    default_code = "failed_precondition"


class Aborted(MinithreadsError):
    """A concurrent change won (OCC conflict, stale epoch): retry from a fresh read."""

    default_code = "aborted"
    retriable = True


class RateLimited(MinithreadsError):
    default_code = "rate_limited"
    retriable = True

    def __init__(self, message: str, *, retry_after_s: float = 1.0, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Overloaded(RateLimited):
    """Load shedding: too much work in flight."""

    default_code = "overloaded"


class Unavailable(MinithreadsError):
    """A dependency cannot be reached right now."""

    default_code = "unavailable"
    retriable = True


class DeadlineExceeded(MinithreadsError):
    default_code = "deadline_exceeded"
    retriable = True


class Internal(MinithreadsError):
    """A bug or an unexpected failure; its message never carries internals to a client."""

    default_code = "internal"


ERROR_CLASSES: dict[str, type[MinithreadsError]] = {
    cls.__name__: cls
    for cls in (
        MinithreadsError,
        InvalidArgument,
        TooLarge,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        RateLimited,
        Overloaded,
        Unavailable,
        DeadlineExceeded,
        Internal,
    )
}

E = TypeVar("E", bound=type[MinithreadsError])


def known(cls: E) -> E:
    """Register an error class defined elsewhere (the KV's contract), so that it crosses gRPC
    as itself: a server names its class, and the client rebuilds it by that name."""
    held = ERROR_CLASSES.setdefault(cls.__name__, cls)
    if held is not cls:
        raise TypeError(f"two error classes named {cls.__name__}")
    return cls
