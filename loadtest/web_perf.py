"""``make web-perf``: the web client's weight and its first screen on a slow phone.

    .venv/bin/python loadtest/web_perf.py [--runs 5]

1. The bundle: every file of ``web/dist`` per page (app, control room, API explorer), raw and
   gzipped (as the gateway serves it).
2. The first screen, in headless Chromium with Lighthouse's mobile profile (390x844, CPU
   slowed 4x, 150 ms round trips, 1.6 Mbps down / 750 kbps up), cold cache, ``--runs`` times
   each: the sign-up page signed out, and the home feed signed in (20 posts). Medians of first
   contentful paint, of the first post on screen, and the bytes that crossed the network.

Needs the running stack (``make up``). Prints a table and writes
``loadtest/reports/web-perf-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import Browser, async_playwright

REPO = Path(__file__).resolve().parent.parent
DIST = REPO / "web" / "dist"
BASE = "http://127.0.0.1:8080"
CHROMIUM = os.environ.get("MT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
# Lighthouse's mobile throttling (simulated 'slow 4G' and a mid-range phone's CPU).
NETWORK = {
    "offline": False,
    "latency": 150,
    "downloadThroughput": 1.6 * 1024 * 1024 / 8,
    "uploadThroughput": 750 * 1024 / 8,
}
CPU_SLOWDOWN = 4
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
PAGES = {"app": "index.html", "control": "control/index.html", "docs": "docs/index.html"}


def say(line: str) -> None:
    print(f"web-perf: {line}", file=sys.stderr, flush=True)


def bundle() -> dict[str, dict[str, int]]:
    """Per page: the bytes of the files its HTML loads, raw and gzipped."""
    sizes: dict[str, dict[str, int]] = {}
    for page, html in PAGES.items():
        text = (DIST / html).read_text()
        files = [DIST / html] + [
            DIST / "assets" / p.name for p in (DIST / "assets").iterdir() if p.name in text
        ]
        raw = sum(f.stat().st_size for f in files)
        packed = sum(len(gzip.compress(f.read_bytes(), 9)) for f in files)
        sizes[page] = {"files": len(files), "raw_bytes": raw, "gzip_bytes": packed}
    return sizes


async def reader_with_a_feed() -> dict[str, Any]:
    """A user following someone with 20 posts: what the feed screen shows."""
    async with aiohttp.ClientSession(base_url=BASE) as http:

        async def signup(prefix: str) -> dict[str, Any]:
            body = {"handle": f"{prefix}{secrets.token_hex(5)}", "password": "correct horse"}
            async with http.post("/v1/accounts", json=body) as reply:
                assert reply.status == 201, await reply.text()
                return dict(await reply.json())

        author, reader = await signup("perfauthor"), await signup("perfreader")
        auth = {"Authorization": f"Bearer {author['token']}"}
        for n in range(20):
            await http.post("/v1/posts", json={"text": f"post {n} for the load test"}, headers=auth)
        following = {"Authorization": f"Bearer {reader['token']}"}
        await http.put(f"/v1/me/following/{author['user']['handle']}", headers=following)
        for _ in range(60):  # the follow's backfill is async work
            async with http.get("/v1/feed", headers=following) as reply:
                if len((await reply.json())["items"]) >= 20:
                    return reader
            await asyncio.sleep(0.5)
    raise RuntimeError("the reader's feed never filled")


async def one_load(browser: Browser, path: str, session: dict[str, Any] | None) -> dict[str, float]:
    context = await browser.new_context(base_url=BASE, **PHONE)  # type: ignore[arg-type]
    if session is not None:
        stored = json.dumps({"token": session["token"], "user": session["user"]})
        await context.add_init_script(f"localStorage.setItem('mt.session', {stored!r});")
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)
    await cdp.send("Network.enable")
    await cdp.send("Network.emulateNetworkConditions", NETWORK)
    await cdp.send("Emulation.setCPUThrottlingRate", {"rate": CPU_SLOWDOWN})
    received: list[int] = []
    cdp.on("Network.loadingFinished", lambda e: received.append(int(e["encodedDataLength"])))
    started = time.perf_counter()
    await page.goto(path)
    target = "article.post" if session is not None else "form button[type=submit]"
    await page.locator(target).first.wait_for()
    shown_ms = (time.perf_counter() - started) * 1000
    fcp = await page.evaluate(
        "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? -1"
    )
    await context.close()
    return {"fcp_ms": float(fcp), "shown_ms": shown_ms, "bytes": float(sum(received))}


async def run(runs: int) -> dict[str, Any]:
    result: dict[str, Any] = {"bundle": bundle(), "runs": runs, "profile": NETWORK}
    reader = await reader_with_a_feed()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for name, path, session in (("signup", "/signup", None), ("feed", "/", reader)):
            loads = []
            for n in range(runs):
                loads.append(await one_load(browser, path, session))
                say(f"{name} {n + 1}/{runs}: {loads[-1]}")
            result[name] = {k: round(statistics.median(x[k] for x in loads), 1) for k in loads[0]}
        await browser.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    result = asyncio.run(run(args.runs))
    for page, size in result["bundle"].items():
        print(
            f"web-perf: {page:<8} {size['files']} files, {size['raw_bytes'] / 1024:7.1f} kB raw,"
            f" {size['gzip_bytes'] / 1024:6.1f} kB gzipped"
        )
    for screen in ("signup", "feed"):
        r = result[screen]
        print(
            f"web-perf: {screen:<8} first contentful paint {r['fcp_ms']:.0f} ms, on screen "
            f"{r['shown_ms']:.0f} ms, {r['bytes'] / 1024:.1f} kB over the network "
            f"(medians of {args.runs}, 4x CPU slowdown, 150 ms RTT, 1.6 Mbps)"
        )
    reports = REPO / "loadtest" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    out = reports / f"web-perf-{time.strftime('%Y%m%d-%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"web-perf: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
