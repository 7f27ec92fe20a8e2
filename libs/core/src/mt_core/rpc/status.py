"""The ONE table between our errors and gRPC status codes, and the codec for both directions.

A server raising :class:`~mt_core.errors.MinithreadsError` answers with the mapped status and
the error's class and code in trailing metadata; a client turns that back into the same class,
so a ``NotFound`` raised in the users service is a ``NotFound`` in the gateway.
"""

from __future__ import annotations

import grpc

from mt_core import errors as e

GRPC_STATUS: dict[type[e.MinithreadsError], grpc.StatusCode] = {
    e.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    e.TooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    e.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    e.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    e.NotFound: grpc.StatusCode.NOT_FOUND,
    e.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    e.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    e.Aborted: grpc.StatusCode.ABORTED,
    e.RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.Unavailable: grpc.StatusCode.UNAVAILABLE,
    e.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    e.Internal: grpc.StatusCode.INTERNAL,
    e.MinithreadsError: grpc.StatusCode.INTERNAL,
}

# For errors that did not come from our servers (transport failures, foreign services).
_FROM_STATUS: dict[grpc.StatusCode, type[e.MinithreadsError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: e.InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: e.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: e.PermissionDenied,
    grpc.StatusCode.NOT_FOUND: e.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: e.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: e.FailedPrecondition,
    grpc.StatusCode.ABORTED: e.Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: e.RateLimited,
    grpc.StatusCode.UNAVAILABLE: e.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: e.DeadlineExceeded,
    grpc.StatusCode.CANCELLED: e.Unavailable,
}

CLASS_KEY = "mt-error-class"
CODE_KEY = "mt-error-code"
RETRY_AFTER_KEY = "mt-retry-after-s"


def status_of(error: e.MinithreadsError) -> grpc.StatusCode:
    """The status of the most specific class in the table (subclasses inherit their parent's)."""
    for cls in type(error).__mro__:
        if cls in GRPC_STATUS:
            return GRPC_STATUS[cls]
    return grpc.StatusCode.INTERNAL


def trailers_of(error: e.MinithreadsError) -> tuple[tuple[str, str], ...]:
    trailers = [(CLASS_KEY, type(error).__name__), (CODE_KEY, error.code)]
    if isinstance(error, e.RateLimited):
        trailers.append((RETRY_AFTER_KEY, f"{error.retry_after_s:g}"))
    return tuple(trailers)


def error_from_rpc(err: grpc.aio.AioRpcError) -> e.MinithreadsError:
    """Rebuild our error from a failed call: by the class the server named, else by status."""
    meta = {k: v for k, v in (err.trailing_metadata() or ()) if isinstance(v, str)}
    message = err.details() or err.code().name.lower()
    cls = e.ERROR_CLASSES.get(meta.get(CLASS_KEY, ""))
    if cls is None:
        cls = _FROM_STATUS.get(err.code(), e.Internal)
    code = meta.get(CODE_KEY)
    if issubclass(cls, e.RateLimited):
        return cls(message, code=code, retry_after_s=float(meta.get(RETRY_AFTER_KEY, "1")))
    return cls(message, code=code)
