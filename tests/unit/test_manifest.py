"""The stack manifest: start order, dependency closure and malformed manifests."""

from __future__ import annotations

from pathlib import Path

import pytest
from mt_cli.manifest import ManifestError, load

REPO = Path(__file__).resolve().parents[2]

SERVICES = {"gateway", "users", "graph", "posts", "feed", "kv"}


def _write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "infra").mkdir()
    (tmp_path / "infra" / "stack.toml").write_text(body)
    return tmp_path


def _proc(name: str, deps: list[str], port: int) -> str:
    return (
        f'[[process]]\nname = "{name}"\nrole = "service"\nport = {port}\n'
        f'command = ["true"]\nhealth = "tcp"\ndepends_on = {deps!r}\n'.replace("'", '"')
    )


def test_manifest__names_every_service_and_the_infrastructure() -> None:
    manifest = load(REPO)
    assert SERVICES | {"kafka", "redis", "zipkin"} <= set(manifest.processes)
    assert len({p.port for p in manifest.processes.values()}) == len(manifest.processes)


def test_levels__start_dependencies_first() -> None:
    manifest = load(REPO)
    seen: set[str] = set()
    for level in manifest.levels():
        for proc in level:
            assert set(proc.depends_on) <= seen, f"{proc.name} starts before {proc.depends_on}"
        seen |= {p.name for p in level}
    assert seen == set(manifest.processes)
    assert manifest.levels()[-1][0].name == "gateway"


def test_closure__includes_transitive_dependencies() -> None:
    manifest = load(REPO)
    assert manifest.closure(["users"]) == {"users", "kv", "kv-1", "kv-2", "kv-3", "kafka"}
    assert manifest.closure(["gateway"]) >= SERVICES
    # The shard manager brings its replicas: `minithreads up kv` is the whole KV service.
    assert manifest.closure(["kv"]) == {"kv", "kv-1", "kv-2", "kv-3"}


def test_load__rejects_a_cycle(tmp_path: Path) -> None:
    repo = _write(tmp_path, _proc("a", ["b"], 1) + _proc("b", ["a"], 2))
    with pytest.raises(ManifestError, match="cycle"):
        load(repo)


def test_load__rejects_an_unknown_dependency(tmp_path: Path) -> None:
    repo = _write(tmp_path, _proc("a", ["nope"], 1))
    with pytest.raises(ManifestError, match="unknown"):
        load(repo)


def test_load__rejects_duplicate_names(tmp_path: Path) -> None:
    repo = _write(tmp_path, _proc("a", [], 1) + _proc("a", [], 2))
    with pytest.raises(ManifestError, match="duplicate"):
        load(repo)


def test_load__expands_placeholders(tmp_path: Path) -> None:
    body = _proc("a", [], 1).replace('["true"]', '["{python}", "{repo}/x"]')
    manifest = load(_write(tmp_path, body))
    command = manifest.processes["a"].command
    assert command[1] == f"{tmp_path}/x"
    assert "{" not in command[0]


def test_manifest__the_edge_is_scheduled_before_what_it_protects() -> None:
    processes = load(REPO).processes
    assert processes["gateway"].nice < 0
    assert all(p.nice == 0 for name, p in processes.items() if name != "gateway")
