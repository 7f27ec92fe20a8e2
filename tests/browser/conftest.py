"""Browser tests: the web client in real headless Chromium (Debian's, driven by Playwright's
Python package) against the real stack. Each page records what must never happen — an
uncaught error, a dialog (an alert() would mean injected script ran), a Content-Security-Policy
violation — and the test fails if any did."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from mt_cli.manifest import Manifest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.api import BASE

CHROMIUM = os.environ.get("MT_CHROMIUM", "/usr/bin/chromium")
# Headless on a shared box: no GPU, no sandbox (root in a container), nothing phoning home.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
TIMEOUT_MS = 30_000
# Lists poll every second here (10-15 s in use): tests wait on what a user would see.
FAST_POLLING = "localStorage.setItem('mt.pollMs', '1000');"
WATCH_CSP = """
document.addEventListener('securitypolicyviolation', (e) => {
  window.mtViolation(`${e.violatedDirective} ${e.blockedURI}`);
});
"""


@dataclass
class Trouble:
    """What went wrong in a context's pages that no test expects."""

    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def check(self) -> None:
        assert not self.errors, f"uncaught errors in the page: {self.errors}"
        assert not self.dialogs, f"dialogs opened (injected script?): {self.dialogs}"
        assert not self.violations, f"Content-Security-Policy violations: {self.violations}"


@dataclass
class Phone:
    context: BrowserContext
    page: Page
    trouble: Trouble

    async def sign_in(self, user: dict[str, Any], token: str) -> None:
        """Open the app already signed in (as after an earlier visit): set-up, not the test."""
        session = json.dumps({"token": token, "user": user})
        await self.context.add_init_script(f"localStorage.setItem('mt.session', {session!r});")


@pytest.fixture(scope="session")
async def browser(stack: Manifest) -> AsyncIterator[Browser]:
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 (once per session)
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make install`", pytrace=False)
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        await chromium.close()


PhoneFactory = Callable[..., Awaitable[Phone]]


@pytest.fixture
async def phones(browser: Browser) -> AsyncIterator[PhoneFactory]:
    """Fresh phone-sized browser contexts (each its own storage: one user each)."""
    made: list[Phone] = []

    async def new(**options: Any) -> Phone:
        context = await browser.new_context(base_url=BASE, **{**PHONE, **options})
        context.set_default_timeout(TIMEOUT_MS)
        trouble = Trouble()
        await context.expose_function("mtViolation", lambda what: trouble.violations.append(what))
        await context.add_init_script(FAST_POLLING + WATCH_CSP)
        page = await context.new_page()
        page.on("pageerror", lambda err: trouble.errors.append(str(err)))
        page.on("dialog", lambda d: _dismiss(d, trouble))
        phone = Phone(context, page, trouble)
        made.append(phone)
        return phone

    yield new
    for phone in made:
        await phone.context.close()
    for phone in made:
        phone.trouble.check()


async def _dismiss(dialog: Any, trouble: Trouble) -> None:
    trouble.dialogs.append(f"{dialog.type}: {dialog.message}")
    await dialog.dismiss()
