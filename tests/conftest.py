"""Fixtures shared by every test layer; the `stack` fixture gives integration tests the real
local stack (Kafka, Redis, Zipkin and our services), starting it if it is not already up."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from mt_cli.manifest import Manifest, load

from tests.api import Api

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "minithreads")


def minithreads(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real CLI, as an operator would."""
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


def pid_of(name: str) -> int:
    """The pid of one of the stack's processes (it must be running)."""
    rows = json.loads(minithreads("ps", "--json", timeout_s=60).stdout)
    pid = next(r["pid"] for r in rows if r["name"] == name)
    assert pid, f"{name} is not running"
    return int(pid)


def restart(name: str) -> None:
    """Start one of the stack's processes again (after a kill)."""
    result = minithreads("up", name, "--no-install", timeout_s=180)
    assert result.returncode == 0, result.stdout + result.stderr


def _all_healthy() -> bool:
    result = minithreads("ps", "--json", timeout_s=60)
    return result.returncode == 0 and all(
        row["health"] == "healthy" for row in json.loads(result.stdout)
    )


@pytest.fixture(scope="session")
def stack() -> Iterator[Manifest]:
    """The running stack. Started here (and stopped afterwards) unless it already runs; if it
    cannot start, every test that needs it fails with the launcher's explanation."""
    manifest = load(REPO)
    if _all_healthy():
        yield manifest
        return
    result = minithreads("up")
    if result.returncode != 0:
        pytest.fail(f"the stack did not start:\n{result.stdout}\n{result.stderr}", pytrace=False)
    yield manifest
    result = minithreads("down")
    assert result.returncode == 0, f"`minithreads down` failed:\n{result.stdout}{result.stderr}"


@pytest.fixture
async def api(stack: Manifest) -> AsyncIterator[Api]:
    """A client of the running stack's REST API (tests/api.py), for e2e and chaos tests."""
    async with aiohttp.ClientSession() as http:
        yield Api(http)
