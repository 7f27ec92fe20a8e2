"""The operator's credential: a bearer token that opens the control room (and the
Prometheus data behind it) at the gateway. It lives in ``$MT_HOME/secrets/operator.token``;
``minithreads operator url`` prints the link that carries it."""

from __future__ import annotations

import hmac
from pathlib import Path

from mt_core import secretfile


def token_path(home: Path) -> Path:
    return home / "secrets" / "operator.token"


def ensure_token(home: Path) -> str:
    return secretfile.ensure(token_path(home))


def is_operator(presented: str, token: str) -> bool:
    return hmac.compare_digest(presented.encode(), token.encode())  # no timing oracle
