"""What Prometheus scrapes: one file_sd target file per running process that serves metrics,
written when the launcher starts it and removed when it stops (infra/bin/prometheus-run
watches the folder), so a KV replica added at run time is scraped too."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from mt_cli.manifest import Manifest, Process


def folder(manifest: Manifest) -> Path:
    return manifest.home / "run" / "prom-targets"


def address(proc: Process) -> str | None:
    """host:port of the process's /metrics; None if it serves none."""
    if proc.role == "gateway":
        return f"127.0.0.1:{proc.port}"  # on its HTTP port
    port = proc.env.get("MT_METRICS_PORT")
    return f"127.0.0.1:{port}" if port else None


def job_of(proc: Process) -> str:
    return "kv" if proc.role.startswith("kv-") else proc.name


def write(manifest: Manifest, proc: Process) -> None:
    target = address(proc)
    if target is None:
        return
    entry = [{"targets": [target], "labels": {"job": job_of(proc), "process": proc.name}}]
    path = folder(manifest) / f"{proc.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")  # Prometheus reads *.json: never half a file
    tmp.write_text(json.dumps(entry))
    tmp.replace(path)


def remove(manifest: Manifest, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (folder(manifest) / f"{name}.json").unlink()
