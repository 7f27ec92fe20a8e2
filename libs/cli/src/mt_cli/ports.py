"""Free TCP ports for processes started by tests and benchmarks.

A port the OS hands out for ``bind(0)`` comes from the ephemeral range, the same range every
outgoing connection takes its local port from: between choosing it and the server binding it,
someone's connection can take it. Ports below that range are never taken that way.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable
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


_RESERVED_FILE = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")


def reserve(ports: Iterable[int], reserved_file: Path = _RESERVED_FILE) -> bool:
    """Keep ``ports`` (a stack's fixed ports, some inside the ephemeral range) from being
    handed to outgoing connections, which would make the server's bind fail: Linux's reserved
    ports, added to what is reserved already. Best effort: False where it cannot be written
    (not root, not Linux)."""
    ephemeral = range(_ephemeral_start(), 65_536)
    wanted = sorted({p for p in ports if p in ephemeral})
    if not wanted:
        return True
    try:
        held = reserved_file.read_text().strip()
        reserved_file.write_text(",".join([*([held] if held else []), *map(str, wanted)]))
    except OSError:
        return False
    return True
