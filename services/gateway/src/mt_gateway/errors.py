"""The ONE table from our errors to HTTP statuses, and the error body of the REST contract.

Every error a client sees is ``{"error": {"code": ..., "message": ...}}``; 429 and 503 carry
``Retry-After``. Nothing else — no traceback, no internal detail — ever reaches a client.
"""

from __future__ import annotations

import math

from aiohttp import web
from mt_core import errors as e

HTTP_STATUS: dict[type[e.MinithreadsError], int] = {
    e.InvalidArgument: 400,
    e.TooLarge: 413,
    e.Unauthenticated: 401,
    e.PermissionDenied: 403,
    e.NotFound: 404,
    e.AlreadyExists: 409,
    e.FailedPrecondition: 409,
    e.Aborted: 409,
    e.RateLimited: 429,
    e.Overloaded: 503,
    e.Unavailable: 503,
    e.DeadlineExceeded: 503,
    e.Internal: 500,
    e.MinithreadsError: 500,
}


def http_status_of(error: e.MinithreadsError) -> int:
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def error_response(
    status: int, code: str, message: str, retry_after_s: float | None = None
) -> web.Response:
    headers = {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def response_for(error: e.MinithreadsError) -> web.Response:
    status = http_status_of(error)
    message = error.message if status < 500 or status == 503 else "internal error"
    retry_after = error.retry_after_s if isinstance(error, e.RateLimited) else None
    if isinstance(error, e.Unavailable | e.DeadlineExceeded):
        retry_after = 1.0
    return error_response(status, error.code, message, retry_after)
