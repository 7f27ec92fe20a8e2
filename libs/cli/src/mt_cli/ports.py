"""Free TCP ports for processes started by tests and benchmarks.

A port the OS hands out for ``bind(0)`` comes from the ephemeral range, the same range every
outgoing connection takes its local port from: between choosing it and the server binding it,
someone's connection can take it. Ports below that range are never taken that way.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now, outside the range outgoing connections draw from."""
    top = _ephemeral_start() - 1
    for _ in range(200):
        port = random.randint(_LOWEST, top)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_LOWEST}..{top}")
