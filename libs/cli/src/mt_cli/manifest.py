"""The stack manifest (``infra/stack.toml``): which processes make up minithreads, how to start
them, how to tell they are healthy, and in which order."""

from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


class ManifestError(Exception):
    """The manifest is malformed: unknown dependency, cycle, duplicate name."""


@dataclass(frozen=True)
class Process:
    name: str
    role: str
    port: int
    command: tuple[str, ...]
    health: str
    env: dict[str, str] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    # Started along with this one (they depend on it): `minithreads up kv` means the KV
    # service, its replicas included, not a shard manager with nothing to manage.
    brings: tuple[str, ...] = ()
    start_timeout_s: float = 30.0
    stop_timeout_s: float = 10.0
    # Its CPU priority (nice, -20..19) where processes share a box: the edge refuses overload
    # only as fast as it is scheduled, so it goes before what it protects.
    nice: int = 0


@dataclass(frozen=True)
class Manifest:
    repo: Path
    home: Path
    env: dict[str, str]
    processes: dict[str, Process]

    def levels(self, names: set[str] | None = None) -> list[list[Process]]:
        """Processes grouped so each group depends only on earlier groups (start order)."""
        wanted = set(self.processes) if names is None else names
        done: set[str] = set()
        levels: list[list[Process]] = []
        while len(done) < len(wanted):
            ready = [
                p
                for name, p in self.processes.items()
                if name in wanted and name not in done and set(p.depends_on) & wanted <= done
            ]
            if not ready:
                raise ManifestError(f"dependency cycle among {sorted(wanted - done)}")
            levels.append(ready)
            done.update(p.name for p in ready)
        return levels

    def closure(self, names: list[str]) -> set[str]:
        """``names`` and everything they depend on, transitively."""
        out: set[str] = set()
        todo = list(names)
        while todo:
            name = todo.pop()
            if name not in self.processes:
                raise ManifestError(f"unknown process {name!r}")
            if name not in out:
                out.add(name)
                todo.extend(self.processes[name].depends_on)
                todo.extend(self.processes[name].brings)
        return out


def find_repo(start: Path | None = None) -> Path:
    """The checkout: ``$MT_REPO``, else the nearest parent holding ``infra/stack.toml``."""
    if env := os.environ.get("MT_REPO"):
        return Path(env).resolve()
    for base in (Path(__file__).resolve(), (start or Path.cwd()).resolve()):
        for parent in (base, *base.parents):
            if (parent / "infra" / "stack.toml").is_file():
                return parent
    raise ManifestError("cannot find the minithreads checkout (infra/stack.toml); set MT_REPO")


def load(repo: Path | None = None, home: Path | None = None) -> Manifest:
    """The manifest of ``repo`` (default: this checkout); runtime files under ``home``
    (default: ``$MT_HOME``, else ``<repo>/.local``)."""
    repo = repo or find_repo()
    home = (home or Path(os.environ.get("MT_HOME", repo / ".local"))).resolve()
    raw = tomllib.loads((repo / "infra" / "stack.toml").read_text())
    subs = {"repo": str(repo), "home": str(home), "python": sys.executable}

    def expand(text: str) -> str:
        return text.format(**subs)

    processes: dict[str, Process] = {}
    for entry in raw.get("process", []):
        proc = Process(
            name=entry["name"],
            role=entry["role"],
            port=int(entry["port"]),
            command=tuple(expand(part) for part in entry["command"]),
            health=entry["health"],
            env={k: expand(str(v)) for k, v in entry.get("env", {}).items()},
            depends_on=tuple(entry.get("depends_on", ())),
            brings=tuple(entry.get("brings", ())),
            start_timeout_s=float(entry.get("start_timeout_s", 30)),
            stop_timeout_s=float(entry.get("stop_timeout_s", 10)),
            nice=int(entry.get("nice", 0)),
        )
        if proc.name in processes:
            raise ManifestError(f"duplicate process {proc.name!r}")
        processes[proc.name] = proc
    for proc in processes.values():
        unknown = set(proc.depends_on) - set(processes)
        if unknown:
            raise ManifestError(f"{proc.name} depends on unknown {sorted(unknown)}")
        unknown = set(proc.brings) - set(processes)
        if unknown:
            raise ManifestError(f"{proc.name} brings unknown {sorted(unknown)}")
    env = {k: expand(str(v)) for k, v in raw.get("env", {}).items()}
    manifest = Manifest(repo=repo, home=home, env=env, processes=processes)
    manifest.levels()  # fail early on cycles
    return manifest
