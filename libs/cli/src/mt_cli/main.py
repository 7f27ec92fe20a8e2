"""``minithreads``: the operator's command.

minithreads up [NAME...]       start the stack (or NAME and what it needs); returns when healthy
minithreads down [NAME...]     stop what `up` started; nothing is left listening
minithreads ps [--json]        each process: name, pid, port, role, health
minithreads logs NAME [-f]     a process's log
minithreads jobs status        the async platform per kind (class, rate limit, deferred, lag...)
minithreads jobs pause KIND    hold a kind at rate zero (its work waits in Kafka); `resume` it
minithreads legacy credential ID   the operator: a synthetic legacy account's credential
minithreads operator url       the control room's link, with the operator's credential
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mt_cli import launcher
from mt_cli.manifest import Manifest, ManifestError, load

UP = "minithreads is up ({seconds:.1f}s). Stop it with `make down` (or `minithreads down`)."
# What a person reaches, by the process that serves it: listed only for what is running.
ENDPOINTS = {
    "gateway": "Web app       http://127.0.0.1:8080/     (API explorer: /docs)\n"
    "  Control room  http://127.0.0.1:8080/control    (`minithreads operator url` opens it)\n"
    "  REST API      http://127.0.0.1:8080/v1   (health: /healthz, readiness: /readyz, "
    "metrics: /metrics)",
    "prometheus": "Prometheus    http://127.0.0.1:9090      (loopback; the control room's data)",
    "zipkin": "Tracing UI    http://127.0.0.1:9411      (Zipkin)",
    "kv": "KV            127.0.0.1:50060            (minithreads kv status)",
    "kafka": "Kafka         127.0.0.1:9092",
    "redis": "Redis         redis://127.0.0.1:6379",
}


def say(line: str) -> None:
    print(line, flush=True)


def _install(manifest: Manifest) -> None:
    """The real parts (Kafka, Redis, Zipkin...) come from the project's idempotent installer."""
    script = manifest.repo / "infra" / "install.sh"
    say("minithreads: checking the infrastructure (infra/install.sh)")
    subprocess.run([str(script)], check=True, env={**os.environ, "MT_HOME": str(manifest.home)})


def cmd_up(manifest: Manifest, args: argparse.Namespace) -> int:
    started = time.monotonic()
    if not args.no_install:
        _install(manifest)
    say("minithreads: starting (Ctrl-C stops waiting; `minithreads down` stops the stack)")
    try:
        running = asyncio.run(launcher.up(manifest, args.names or None, say))
    except launcher.LaunchError as err:
        say(f"minithreads: up failed: {err}")
        if not args.keep_on_failure:
            say("minithreads: stopping what was started")
            asyncio.run(launcher.down(manifest, None, say))
        return 1
    say("")
    say(UP.format(seconds=time.monotonic() - started))
    for name, line in ENDPOINTS.items():
        if name in running:
            say(f"  {line}")
    say(f"  Logs          minithreads logs NAME      ({launcher.run_dir(manifest) / 'logs'})")
    return 0


def cmd_down(manifest: Manifest, args: argparse.Namespace) -> int:
    say("minithreads: stopping")
    try:
        asyncio.run(launcher.down(manifest, args.names or None, say))
    except launcher.LaunchError as err:
        say(f"minithreads: {err}")
        return 1
    say("minithreads: down")
    return 0


def cmd_ps(manifest: Manifest, args: argparse.Namespace) -> int:
    rows = asyncio.run(launcher.ps(manifest))
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'NAME':<10} {'PID':>8} {'PORT':>6}  {'ROLE':<10} HEALTH")
    for row in rows:
        pid = row["pid"] if row["pid"] is not None else "-"
        name, port, role = str(row["name"]), str(row["port"]), str(row["role"])
        print(f"{name:<10} {pid!s:>8} {port:>6}  {role:<10} {row['health']}")
    return 0


def cmd_logs(manifest: Manifest, args: argparse.Namespace) -> int:
    if args.name not in manifest.processes:
        say(f"minithreads: unknown process {args.name!r}; one of {', '.join(manifest.processes)}")
        return 2
    path = launcher.log_path(manifest, args.name)
    if not path.exists():
        say(f"minithreads: no log yet for {args.name} ({path})")
        return 1
    if args.follow:
        return _follow(path, args.lines)
    print(launcher.tail(path, args.lines))
    return 0


def _follow(path: Path, lines: int) -> int:
    print(launcher.tail(path, lines), flush=True)
    with path.open(errors="replace") as handle:
        handle.seek(0, 2)
        try:
            while True:
                line = handle.readline()
                if line:
                    print(line, end="", flush=True)
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from mt_cli.probes import probe

    return 0 if asyncio.run(probe(args.kind, args.port, args.timeout_s)) else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="minithreads", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the stack and wait until it is healthy")
    p_up.add_argument("names", nargs="*", help="only these processes (and their dependencies)")
    p_up.add_argument("--no-install", action="store_true", help="skip infra/install.sh")
    p_up.add_argument(
        "--keep-on-failure", action="store_true", help="leave processes running if up fails"
    )
    p_up.set_defaults(run=cmd_up)
    p_down = sub.add_parser("down", help="stop what up started")
    p_down.add_argument("names", nargs="*", help="only these processes (and what depends on them)")
    p_down.set_defaults(run=cmd_down)
    p_ps = sub.add_parser("ps", help="list the processes and their health")
    p_ps.add_argument("--json", action="store_true", help="one JSON array")
    p_ps.set_defaults(run=cmd_ps)
    p_logs = sub.add_parser("logs", help="show a process's log")
    p_logs.add_argument("name")
    p_logs.add_argument("-f", "--follow", action="store_true")
    p_logs.add_argument("-n", "--lines", type=int, default=50)
    p_logs.set_defaults(run=cmd_logs)
    p_probe = sub.add_parser("probe", help="health-check a local process (exit 0 = healthy)")
    p_probe.add_argument("kind", help="redis, kafka, grpc, tcp or http:/PATH")
    p_probe.add_argument("port", type=int)
    p_probe.add_argument("--timeout-s", type=float, default=2.0)
    p_probe.set_defaults(run=None)
    from mt_cli import kvcmd

    p_kv = sub.add_parser("kv", help="the KV service: put, get, status, bench")
    kvcmd.add_arguments(p_kv)
    p_kv.set_defaults(run=lambda manifest, args: kvcmd.run(args, manifest.home, manifest))
    from mt_cli import jobscmd

    p_jobs = sub.add_parser("jobs", help="the async platform: status per job kind, pause, resume")
    jobscmd.add_arguments(p_jobs)
    p_jobs.set_defaults(run=lambda manifest, args: jobscmd.run(args))
    from mt_cli import clientcmd

    p_client = sub.add_parser("client", help="use the REST API as a user: signup, post, feed...")
    clientcmd.add_arguments(p_client)
    p_client.set_defaults(run=lambda manifest, args: clientcmd.run(args, manifest.home))
    p_legacy = sub.add_parser("legacy", help="the simulated legacy system, as its operator")
    legacy_sub = p_legacy.add_subparsers(dest="legacy_command", required=True)
    p_credential = legacy_sub.add_parser(
        "credential", help="a synthetic legacy account's credential (from $MT_HOME/secrets)"
    )
    p_credential.add_argument("legacy_id")
    p_credential.set_defaults(run=cmd_legacy_credential)
    p_operator = sub.add_parser("operator", help="the operator's credential for the control room")
    operator_sub = p_operator.add_subparsers(dest="operator_command", required=True)
    operator_sub.add_parser("token", help="print it").set_defaults(run=cmd_operator_token)
    operator_sub.add_parser(
        "url", help="the control room's link carrying it (in the fragment: never sent or logged)"
    ).set_defaults(run=cmd_operator_url)
    return top


def cmd_operator_token(manifest: Manifest, _: argparse.Namespace) -> int:
    from mt_core.operator import ensure_token

    print(ensure_token(manifest.home))
    return 0


def cmd_operator_url(manifest: Manifest, _: argparse.Namespace) -> int:
    from mt_core.operator import ensure_token

    print(f"http://127.0.0.1:8080/control#op={ensure_token(manifest.home)}")
    return 0


def cmd_legacy_credential(manifest: Manifest, args: argparse.Namespace) -> int:
    """What a synthetic legacy account's owner types at the legacy app: derived from the
    operator's secret (made on first use, as the stack's provider would)."""
    from mt_legacy.identity import credential, ensure_secret

    print(credential(ensure_secret(manifest.home), args.legacy_id))
    return 0


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `minithreads ps | head` ends quiet
    args = parser().parse_args(argv)
    if args.command == "probe":  # needs no checkout: it runs inside the compose image too
        sys.exit(cmd_probe(args))
    try:
        manifest = load()
    except ManifestError as err:
        say(f"minithreads: {err}")
        sys.exit(2)
    try:
        sys.exit(args.run(manifest, args))
    except KeyboardInterrupt:
        say("\nminithreads: interrupted; what already started keeps running (`minithreads down`)")
        sys.exit(130)
