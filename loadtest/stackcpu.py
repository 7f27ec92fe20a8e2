"""CPU time of every process of the local stack, from ``/proc``: who spent the box, and how much.

Each process the launcher started leads a process group of its own (Kafka's JVM and Redis run
under wrapper scripts), so a snapshot sums ``utime + stime`` over every member of each group.
The difference of two snapshots over the wall time between them is each process's share of
the box: ``busy_ms_per_s``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
CLI = str(Path(sys.executable).parent / "minithreads")


def stack_pids(cli: str = CLI, env: dict[str, str] | None = None) -> dict[str, int]:
    """name -> pid of each running process of the stack (``minithreads ps``; ``cli`` and
    ``env`` pick another checkout's command and its ``MT_HOME``)."""
    rows = json.loads(
        subprocess.run(
            [cli, "ps", "--json"], capture_output=True, text=True, check=True, env=env
        ).stdout
    )
    return {r["name"]: int(r["pid"]) for r in rows if r.get("pid")}


def _stat(pid: str) -> tuple[int, float] | None:
    """(process group, CPU seconds) of one process; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[2]), (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass(frozen=True)
class Snapshot:
    at: float  # monotonic
    cpu_s: dict[str, float]  # per stack process, its whole group
    box_busy_s: float  # every CPU of the machine, from /proc/stat

    def minus(self, before: Snapshot) -> dict[str, float]:
        """ms of CPU per second of wall time per process, between ``before`` and this."""
        wall = max(1e-9, self.at - before.at)
        return {
            name: round((cpu - before.cpu_s.get(name, cpu)) / wall * 1000, 1)
            for name, cpu in sorted(self.cpu_s.items(), key=lambda kv: -kv[1])
        }

    def box_busy_ms_per_s(self, before: Snapshot) -> float:
        return round((self.box_busy_s - before.box_busy_s) / max(1e-9, self.at - before.at) * 1000)


def _box_busy_s() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def snapshot(pids: dict[str, int]) -> Snapshot:
    groups = {pid: name for name, pid in pids.items()}
    totals = dict.fromkeys(pids, 0.0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(entry)
        if stat is None:
            continue
        name = groups.get(stat[0]) or groups.get(int(entry))
        if name is not None:
            totals[name] += stat[1]
    return Snapshot(time.monotonic(), totals, _box_busy_s())
