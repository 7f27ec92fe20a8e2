"""Schemathesis against /openapi.json, anonymous and authenticated: generated inputs (valid,
malformed, odd unicode, wrong types, huge values) must never produce a server error or a
response the schema does not describe.

The CLI is driven as a subprocess (its own event loop and Hypothesis settings stay out of
pytest's), with its JSON report read back for the number of cases it ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.api import BASE, Api

pytestmark = pytest.mark.e2e

ST = str(Path(sys.executable).parent / "st")
EXAMPLES = int(os.environ.get("MT_FUZZ_EXAMPLES", "5"))  # per operation, in each phase
# What the API promises for any input: no 5xx but a 503 (load shedding), and every response,
# status and body, as the schema documents it.
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "response_schema_conformance",
        "content_type_conformance",
    ]
)


def _fuzz(folder: Path, *headers: str) -> int:
    """One schemathesis run; the number of cases it ran."""
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / "report.ndjson"
    command = [
        ST,
        "run",
        f"{BASE}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        "2023",
        "--workers",  # one: with threads, its coverage phase trips over a CPython AST bug
        "1",
        "--request-timeout",
        "30",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        *(part for header in headers for part in ("-H", header)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    cases = 0
    for line in report.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        if finished:
            cases += len(finished["recorder"].get("cases", {}))
    return cases


@pytest.mark.timeout(1200)
async def test_fuzz__no_server_errors_and_no_schema_violations(api: Api, tmp_path: Path) -> None:
    _, token = await api.signup("fuzz")
    anonymous = _fuzz(tmp_path / "anonymous")
    authenticated = _fuzz(tmp_path / "authenticated", f"Authorization: Bearer {token}")
    await _forget_our_address()
    print(f"fuzz: {anonymous + authenticated} cases ({anonymous} anonymous)")
    assert anonymous + authenticated >= 1000


async def _forget_our_address() -> None:
    """The fuzzer sends thousands of requests a minute from 127.0.0.1, every test's address:
    its per-address counts would refuse the tests after it (429) for a minute. It stands for
    another client, so they go with it."""
    redis = Redis.from_url(os.environ.get("MT_REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        keys = [key async for key in redis.scan_iter("rl:ip:*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()
