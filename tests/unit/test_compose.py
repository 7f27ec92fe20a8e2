"""docker-compose.yml is valid Compose and runs the same stack as the launcher's manifest.

No Docker engine runs here, so the file is checked with the Compose Specification's own loader
(compose-go, built from `infra/compose-check`), as `docker compose config` would.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from mt_cli import promtargets
from mt_cli.manifest import load

REPO = Path(__file__).resolve().parents[2]


def _compose_check(path: Path) -> subprocess.CompletedProcess[str]:
    build = subprocess.run(
        [str(REPO / "infra" / "compose-check" / "build.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert build.returncode == 0, f"compose-check did not build:\n{build.stderr}"
    binary = build.stdout.strip().splitlines()[-1]
    return subprocess.run(
        [binary, "-f", str(path)], capture_output=True, text=True, check=False, timeout=60
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    result = _compose_check(REPO / "docker-compose.yml")
    assert result.returncode == 0, f"docker-compose.yml is invalid: {result.stderr}"
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


OBSERVABILITY = {"grafana"}  # compose only: locally the control room (/control) shows the metrics


def test_compose__names_the_same_services_as_the_manifest(compose: dict[str, Any]) -> None:
    assert set(compose) == set(load(REPO).processes) | OBSERVABILITY


def test_compose__has_the_manifests_dependencies(compose: dict[str, Any]) -> None:
    manifest = load(REPO)
    for name, proc in manifest.processes.items():
        assert set(compose[name]["depends_on"]) == set(proc.depends_on), name
        assert set(compose[name]["depends_on"].values()) <= {"service_healthy"}, name


def test_compose__health_checks_every_service(compose: dict[str, Any]) -> None:
    assert [name for name, svc in compose.items() if not svc["healthcheck"]] == []


def test_compose__uses_official_images_and_one_project_image(compose: dict[str, Any]) -> None:
    assert compose["kafka"]["image"].startswith("apache/kafka:4.")
    assert compose["redis"]["image"].startswith("redis:")
    assert compose["zipkin"]["image"].startswith("openzipkin/zipkin:")
    built = {name for name, svc in compose.items() if svc["build"]}
    assert built == {"gateway", "users", "graph", "posts", "feed", "workers"} | {
        "kv",
        "kv-1",
        "kv-2",
        "kv-3",
    }
    assert len({compose[name]["image"] for name in built}) == 1


def test_compose_check__rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  a:\n    image: x\n    depends_on: [ghost]\n")
    result = _compose_check(bad)
    assert result.returncode == 1
    assert "ghost" in result.stderr


def _metrics_targets() -> set[str]:
    """host:port of every process that serves metrics, from the manifest."""
    manifest = load(REPO)
    targets = {"gateway:8080"}
    for name, proc in manifest.processes.items():
        port = proc.env.get("MT_METRICS_PORT")
        if port:
            targets.add(f"{name}:{port}")
    return targets


def test_prometheus__scrapes_every_process_that_serves_metrics() -> None:
    config = yaml.safe_load((REPO / "infra" / "prometheus" / "prometheus.yml").read_text())
    scraped = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert scraped == _metrics_targets()


def test_grafana_dashboard__queries_metrics_that_the_code_exports() -> None:
    dashboard = json.loads(
        (REPO / "infra" / "grafana" / "dashboards" / "minithreads.json").read_text()
    )
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {
        m for e in exprs for m in re.findall(r"\b((?:gateway|rpc|kv|jobs|counters)_[a-z_]+)", e)
    }
    assert len(used) >= 10
    source = "\n".join(p.read_text() for p in REPO.glob("*/*/src/**/*.py"))
    for metric in used:
        base = re.sub(r"_(bucket|total|count|sum)$", "", metric)
        # jobs_* gauges are declared as f"jobs_{name}" from a table of names.
        declared = any(f'"{name}"' in source for name in (base, metric))
        declared = declared or f'"{base.removeprefix("jobs_")}":' in source
        assert declared, metric


def test_local_prometheus__scrapes_what_compose_prometheus_scrapes(tmp_path: Path) -> None:
    """`make up`'s Prometheus gets a target file per process the launcher starts (file_sd):
    the same processes and ports as the compose one's static list."""
    manifest = load(REPO)
    manifest = dataclasses.replace(manifest, home=tmp_path)
    for proc in manifest.processes.values():
        promtargets.write(manifest, proc)
    written = {
        target.replace("127.0.0.1", path.stem)
        for path in promtargets.folder(manifest).glob("*.json")
        for entry in json.loads(path.read_text())
        for target in entry["targets"]
    }
    assert written == _metrics_targets()
    promtargets.remove(manifest, "kv-1")
    assert not (promtargets.folder(manifest) / "kv-1.json").exists()
