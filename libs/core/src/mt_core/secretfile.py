"""Secrets kept in files under ``$MT_HOME/secrets``: made once, by whichever process gets
there first, readable only by their owner."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path


def ensure(path: Path) -> str:
    """The hex secret in ``path`` (32 random bytes), made on first use; safe against
    processes racing to make it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    for _ in range(50):  # a racing maker may not have written it yet
        text = path.read_text().strip()
        if text:
            return text
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty")
