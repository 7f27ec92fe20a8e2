"""aiohttp middleware turning every failure into the contract's error body."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from mt_core.errors import MinithreadsError

from mt_gateway.errors import error_response, response_for

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's own HTTP errors (unknown path, wrong method, body too large) by status.
_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    400: "invalid_argument",
}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MinithreadsError as err:
        return response_for(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason)
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return error_response(500, "internal", "internal error")
