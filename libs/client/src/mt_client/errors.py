"""What can go wrong talking to the REST API, as exceptions a caller can act on.

Every failure is an :class:`ApiError` carrying the contract's error ``code`` and ``message``
(``{"error": {"code", "message"}}``), the HTTP status (0 when no response arrived) and the
server's ``Retry-After``. Subclasses name the statuses of the contract so callers can catch
``NotFound`` or ``Conflict`` instead of comparing numbers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


class ApiError(Exception):
    """An error answer of the API (or no answer at all, for :class:`ConnectionFailed`)."""

    def __init__(
        self, status: int, code: str, message: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def retriable(self) -> bool:
        """Trying again later may succeed: the server was rate limiting or shedding load."""
        return self.status in (429, 503)

    @property
    def refused(self) -> bool:
        """Turned away before any work was done (the contract: a 429, or a 503 ``overloaded``
        from admission or a saturated service): sending it again cannot do anything twice,
        whatever the request."""
        return self.status == 429 or (self.status == 503 and self.code == "overloaded")

    @property
    def maybe_applied(self) -> bool:
        """The request may have taken effect although it failed. A status answer means the
        server decided; only a lost connection leaves the outcome unknown."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"


class BadRequest(ApiError):
    """400: the input broke a rule of the contract (handle, password, text length...)."""


class Unauthorized(ApiError):
    """401: no token, a bad token, or bad credentials."""


class Forbidden(ApiError):
    """403: the resource is someone else's."""


class NotFound(ApiError):
    """404: no such user, post, import or legacy account."""


class Conflict(ApiError):
    """409: e.g. ``handle_taken``, ``legacy_taken``."""


class PayloadTooLarge(ApiError):
    """413: the request body is too large."""


class RateLimited(ApiError):
    """429: slow down; ``retry_after_s`` says for how long."""


class Unavailable(ApiError):
    """503: the server is shedding load or a dependency is down; ``retry_after_s`` applies."""


class ServerError(ApiError):
    """Any other 5xx: a bug or crash on the server side; not worth retrying blindly."""


class BadResponse(ApiError):
    """The server answered something that is not the contract's shape."""


class ConnectionFailed(ApiError):
    """No response: the server was unreachable, the connection broke, or the call timed out.

    ``maybe_applied`` is False only when the connection could not even be opened (nothing was
    sent); after a broken connection or a timeout the server may have acted on the request."""

    def __init__(self, code: str, message: str, *, maybe_applied: bool) -> None:
        super().__init__(0, code, message)
        self._maybe_applied = maybe_applied

    @property
    def retriable(self) -> bool:
        return True

    @property
    def maybe_applied(self) -> bool:
        return self._maybe_applied


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
}


def error_from_response(status: int, body: str, retry_after: str | None) -> ApiError:
    """The error of an HTTP error answer: the contract's body when it has one, else a code
    derived from the status (a proxy or a crash may answer with plain text)."""
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    code, message = _contract_error(body) or (f"http_{status}", body.strip()[:200] or "no body")
    return cls(status, code, message, parse_retry_after(retry_after))


def _contract_error(body: str) -> tuple[str, str] | None:
    try:
        error = json.loads(body)["error"]
        code, message = error["code"], error["message"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    return code, message


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: either delta-seconds or an HTTP date (RFC 9110)."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unparseable: fall back to our own backoff rather than fail the call
    if when.tzinfo is None:  # "-0000" means UTC with no claim about the local zone
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
