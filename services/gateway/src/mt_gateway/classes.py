"""Each route's criticality class: under overload, who is refused first (see
:mod:`mt_core.criticality` for what the classes mean). Set here, per route — never taken from
a client's header; every route of the table in :mod:`mt_gateway.api` must have one, or the
gateway does not start. Health checks, metrics and the API document are outside admission."""

from __future__ import annotations

from mt_core.criticality import Criticality

C, D, S = Criticality.CRITICAL, Criticality.DEFAULT, Criticality.SHEDDABLE

# The class is what a refusal costs the user, given what the app can hide: a new user at the
# door or a login cannot be retried behind the user's back (nothing else works until it
# does), and a logout must take effect; a post (sent with its Idempotency-Key), a like, a
# follow or an edit the app sends again by itself after Retry-After; a read it skips, or
# serves from what it already shows.
ROUTE_CLASSES: dict[tuple[str, str], Criticality] = {
    # Identity: the way in, and out.
    ("POST", "/v1/accounts"): C,
    ("POST", "/v1/sessions"): C,
    ("POST", "/v1/legacy/assertions"): C,
    ("DELETE", "/v1/sessions/current"): C,
    # A user's own writes, which the app retries unseen.
    ("POST", "/v1/posts"): D,
    ("DELETE", "/v1/posts/{id}"): D,
    ("PATCH", "/v1/me"): D,
    ("POST", "/v1/me/imports"): D,
    ("GET", "/v1/me"): D,
    ("PUT", "/v1/me/following/{handle}"): D,
    ("DELETE", "/v1/me/following/{handle}"): D,
    ("PUT", "/v1/posts/{id}/like"): D,
    ("DELETE", "/v1/posts/{id}/like"): D,
    # Reads the app can do without for a moment, or retry unseen.
    ("GET", "/v1/feed"): S,
    ("GET", "/v1/posts/{id}"): S,
    ("GET", "/v1/posts/{id}/replies"): S,
    ("GET", "/v1/users/{handle}"): S,
    ("GET", "/v1/users/{handle}/posts"): S,
    ("GET", "/v1/users/{handle}/followers"): S,
    ("GET", "/v1/users/{handle}/following"): S,
    ("GET", "/v1/me/following/{handle}"): S,
    ("GET", "/v1/search/users"): S,
    ("GET", "/v1/notifications"): S,
    ("GET", "/v1/me/imports/{id}"): S,
    ("GET", "/v1/legacy/accounts/{legacy_id}"): S,
    ("GET", "/v1/legacy/accounts/{legacy_id}/following"): S,
}


def class_of(method: str, path: str) -> Criticality:
    try:
        return ROUTE_CLASSES[method, path]
    except KeyError:
        missing = f"{method} {path} has no criticality class in mt_gateway.classes"
        raise LookupError(missing) from None
