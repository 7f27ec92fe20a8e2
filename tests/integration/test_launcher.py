"""The launcher against real (toy) processes: order, health gating, ps, down, failures.

These run tiny HTTP servers from a temporary manifest, so they need no infrastructure and
never touch the ports of the real stack.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mt_cli import launcher
from mt_cli.manifest import load
from mt_cli.ports import free_port
from mt_cli.probes import port_open

CLI = str(Path(sys.executable).parent / "minithreads")


def _http(name: str, port: int, deps: list[str], extra: str = "") -> str:
    serve = "import http.server as h; h.test(h.SimpleHTTPRequestHandler, port=%d, bind='127.0.0.1')"
    return f"""
[[process]]
name = "{name}"
role = "service"
port = {port}
command = ["{{python}}", "-c", "{extra}{serve % port}"]
health = "http:/"
depends_on = {json.dumps(deps)}
start_timeout_s = 15
stop_timeout_s = 2
"""


@pytest.fixture
def toy(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    ports = {"db": free_port(), "api": free_port(), "web": free_port()}
    manifest = (
        _http("web", ports["web"], ["api"])
        + _http("api", ports["api"], ["db"])
        # db ignores SIGTERM, so down must escalate to SIGKILL.
        + _http(
            "db", ports["db"], [], "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        )
    )
    (tmp_path / "infra").mkdir()
    (tmp_path / "infra" / "stack.toml").write_text(manifest)
    return tmp_path, ports


def _cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MT_REPO": str(repo), "MT_HOME": str(repo / ".local")}
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


async def test_up__starts_in_dependency_order_and_ps_reports_health(
    toy: tuple[Path, dict[str, int]],
) -> None:
    repo, ports = toy
    try:
        result = _cli(repo, "up", "--no-install")
        assert result.returncode == 0, result.stdout + result.stderr
        order = [line.split()[0] for line in result.stdout.splitlines() if "healthy in" in line]
        assert order == ["db", "api", "web"]
        rows = json.loads(_cli(repo, "ps", "--json").stdout)
        assert {r["name"]: r["health"] for r in rows} == dict.fromkeys(ports, "healthy")
        assert all(isinstance(r["pid"], int) and r["role"] == "service" for r in rows)
        assert {r["name"]: r["port"] for r in rows} == ports
        again = _cli(repo, "up", "--no-install")  # idempotent: nothing new started
        assert again.returncode == 0
        assert again.stdout.count("already running") == 3
    finally:
        down = _cli(repo, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "db        did not stop" in down.stdout  # SIGTERM ignored -> SIGKILL
    for port in ports.values():
        assert not await port_open(port)
    rows = json.loads(_cli(repo, "ps", "--json").stdout)
    assert {r["health"] for r in rows} == {"stopped"}


async def test_up__fails_loudly_with_the_log_of_a_crashing_process(tmp_path: Path) -> None:
    (tmp_path / "infra").mkdir()
    (tmp_path / "infra" / "stack.toml").write_text(
        f"""
[[process]]
name = "crashy"
role = "service"
port = {free_port()}
command = ["{{python}}", "-c", "import sys; print('cannot open the frobnicator'); sys.exit(3)"]
health = "tcp"
"""
    )
    result = _cli(tmp_path, "up", "--no-install")
    assert result.returncode == 1
    assert "crashy exited during start-up" in result.stdout
    assert "cannot open the frobnicator" in result.stdout


async def test_up__refuses_a_port_taken_by_a_foreign_process(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        (tmp_path / "infra").mkdir()
        (tmp_path / "infra" / "stack.toml").write_text(_http("web", port, []))
        result = _cli(tmp_path, "up", "--no-install")
    assert result.returncode == 1
    assert f"port {port} (web) is taken" in result.stdout


async def test_logs__shows_a_process_log(toy: tuple[Path, dict[str, int]]) -> None:
    repo, _ = toy
    manifest = load(repo, home=repo / ".local")  # never the real stack's $MT_HOME
    try:
        assert _cli(repo, "up", "--no-install", "db").returncode == 0
        log = _cli(repo, "logs", "db")
        assert log.returncode == 0
        assert "starting db" in log.stdout
        assert _cli(repo, "logs", "nope").returncode == 2
    finally:
        await launcher.down(manifest, None, lambda _: None)
