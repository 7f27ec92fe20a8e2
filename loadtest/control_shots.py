"""``make surge-shots``: the control room watched through a launch surge with a failover.

    SURGE_DURATION_S=180 make surge-shots

Starts the local stack if it is not running (per-IP limits raised, as ``make surge`` does),
opens the control room in headless Chromium (1280x1000, the operator's link), runs
``loadtest/surge.py`` and, at 45% of the surge, ``kill -9``s the primary of shard 0 (the
replica is started again 10 s later). Screenshots: 20 s after the kill (``mid-surge.png``,
the failover a red line on every chart) and once the surge's backlog drained (``drained.png``),
into the surge's report folder and ``docs/control-room/``. Progress on stderr; Ctrl-C stops the
surge and the browser (the stack stays up: ``make down``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from playwright.async_api import Page, async_playwright
from surge import SURGE_STACK_ENV

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
DOCS = REPO / "docs" / "control-room"
CHROMIUM = os.environ.get("MT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
KILL_AT = 0.45  # of the surge's duration
RESTART_AFTER_S = 10.0
SHOT_AFTER_KILL_S = 20.0


def say(line: str) -> None:
    print(f"surge-shots: {line}", file=sys.stderr, flush=True)


def minithreads(*args: str) -> str:
    return subprocess.run(
        [str(BIN / "minithreads"), *args], capture_output=True, text=True, check=True
    ).stdout


def ensure_stack() -> None:
    rows = json.loads(minithreads("ps", "--json"))
    if all(r["health"] == "healthy" for r in rows):
        say("the stack is running (its own limits apply; `make down` first for the surge's)")
        return
    say("starting the stack with the per-IP limits raised (left running; `make down`)...")
    subprocess.run(
        [str(BIN / "minithreads"), "up", "--no-install"],
        env={**os.environ, **SURGE_STACK_ENV},
        stdout=sys.stderr,
        check=True,
    )


def primary_of_shard0() -> tuple[str, int]:
    status = json.loads(minithreads("kv", "status", "--json"))
    name = next(s["primary"] for s in status["shards"] if s["id"] == 0)
    pid = next(r["pid"] for r in status["replicas"] if r["id"] == name)
    return name, int(pid)


def newest_report() -> Path | None:
    folders = [p for p in (HERE / "reports").glob("*Z") if p.is_dir()]
    return max(folders, key=lambda p: p.stat().st_mtime) if folders else None


async def shoot(page: Page, name: str, folders: list[Path]) -> None:
    await page.wait_for_timeout(2500)  # one refresh past the moment
    first = folders[0] / name
    await page.screenshot(path=str(first), full_page=True)
    for folder in folders[1:]:
        shutil.copy(first, folder / name)
    say(f"screenshot {name} -> {', '.join(str(f / name) for f in folders)}")


async def failover_when_due(duration_s: float, started: float) -> float:
    await asyncio.sleep(max(0.0, started + KILL_AT * duration_s - time.monotonic()))
    name, pid = primary_of_shard0()
    say(f"kill -9 {name} (pid {pid}), the primary of shard 0")
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    await asyncio.sleep(RESTART_AFTER_S)
    say(f"starting {name} again")
    await asyncio.to_thread(minithreads, "up", name, "--no-install")
    return killed


async def run() -> int:
    ensure_stack()
    duration_s = float(os.environ.get("SURGE_DURATION_S", "180"))
    url = minithreads("operator", "url").strip()
    DOCS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 1000})
        await page.goto(url)
        await page.select_option("#minutes", "5")
        await page.locator("body[data-updated]").wait_for(state="attached")
        say(f"control room open; surge of {duration_s:.0f} s starting (Ctrl-C stops it)")
        surge = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "surge.py"), stdout=subprocess.PIPE
        )
        started = time.monotonic()
        try:
            killed = await failover_when_due(duration_s, started)
            await asyncio.sleep(max(0.0, killed + SHOT_AFTER_KILL_S - time.monotonic()))
            report = newest_report()
            await shoot(page, "mid-surge.png", [DOCS, *([report] if report else [])])
            out, _ = await surge.communicate()
        finally:
            if surge.returncode is None:
                surge.send_signal(signal.SIGINT)
                await surge.wait()
        summary = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
        report = newest_report()
        say(f"surge exited {surge.returncode}; drained in {summary.get('backlog_drained_s')} s")
        await shoot(page, "drained.png", [DOCS, *([report] if report else [])])
        await browser.close()
    return surge.returncode or 0


def main() -> int:
    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        say("interrupted (the stack is still up: `make down`)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
