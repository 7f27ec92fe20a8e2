"""Pages of lists and sizes of batches: the limit rules and opaque cursors every RPC shares.

A cursor is the url-safe base64 of whatever position the service needs (usually the last
key returned). Clients must treat it as opaque; a malformed one is a clear InvalidArgument.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sized

from mt_core.errors import InvalidArgument

DEFAULT_LIMIT = 20
MAX_INTERNAL_LIMIT = 1000


def limit_of(requested: int) -> int:
    """0 means the default; services accept up to 1000 for internal callers (common.proto)."""
    if requested < 0:
        raise InvalidArgument("limit must not be negative", code="invalid_limit")
    return min(requested or DEFAULT_LIMIT, MAX_INTERNAL_LIMIT)


def check_batch(items: Sized, what: str = "ids", code: str = "too_many_ids") -> None:
    """A batch RPC takes at most 1000 items (common.proto); more is a clear InvalidArgument."""
    if len(items) > MAX_INTERNAL_LIMIT:
        raise InvalidArgument(f"at most {MAX_INTERNAL_LIMIT} {what} per call", code=code)


def encode_cursor(position: bytes) -> str:
    return base64.urlsafe_b64encode(position).decode().rstrip("=")


def decode_cursor(cursor: str) -> bytes | None:
    """The position in ``cursor``; None for the first page."""
    if not cursor:
        return None
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise InvalidArgument("malformed cursor", code="invalid_cursor") from None
