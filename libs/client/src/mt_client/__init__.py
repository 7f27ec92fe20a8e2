"""The typed async SDK of the minithreads REST API v1 (see :mod:`mt_client.client`).

async with Client("http://127.0.0.1:8080") as client:
    await client.signup("ada", password="correct horse")
    await client.post("hello")
    async for post in client.iter_feed():
        print(post.author.handle, post.text)
"""

from mt_client.client import Client, walk
from mt_client.errors import (
    ApiError,
    BadRequest,
    BadResponse,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
)
from mt_client.models import (
    Import,
    LegacyAccount,
    LegacyAssertion,
    LegacyFollowing,
    Notification,
    Page,
    Post,
    Session,
    User,
    UserSummary,
)
from mt_client.retry import Backoff, RetryBudget

__all__ = [
    "ApiError",
    "Backoff",
    "BadRequest",
    "BadResponse",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "Import",
    "LegacyAccount",
    "LegacyAssertion",
    "LegacyFollowing",
    "NotFound",
    "Notification",
    "Page",
    "PayloadTooLarge",
    "Post",
    "RateLimited",
    "RetryBudget",
    "ServerError",
    "Session",
    "Unauthorized",
    "Unavailable",
    "User",
    "UserSummary",
    "walk",
]
