"""Accessibility: axe-core (from the web client's npm lock) finds nothing serious on any
screen, and a post can be written with the keyboard alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.api import Api
from tests.browser.conftest import PhoneFactory

pytestmark = pytest.mark.browser

AXE = Path(__file__).resolve().parents[2] / "web" / "node_modules" / "axe-core" / "axe.min.js"
SERIOUS = {"serious", "critical"}


async def serious_violations(page: Page) -> list[str]:
    await page.evaluate(AXE.read_text())
    found: list[dict[str, Any]] = await page.evaluate(
        "async () => (await axe.run(document)).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length}))"
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']} x{v['nodes']}"
        for v in found
        if v["impact"] in SERIOUS
    ]


async def test_every_screen__has_no_serious_axe_violation(api: Api, phones: PhoneFactory) -> None:
    author, author_token = await api.signup("a11y")
    post = await api.post(author_token, "an accessible post")
    reader, token = await api.signup("a11yreader")
    await api.call("PUT", f"/v1/me/following/{author['handle']}", token=token)
    await api.call("PUT", f"/v1/posts/{post['id']}/like", token=token)
    # axe's own script is injected: the app's CSP would (rightly) stop it.
    visitor = await phones(bypass_csp=True)
    screens: dict[str, list[str]] = {}
    for path in ("/signup", "/login", "/join", f"/@{author['handle']}"):
        await visitor.page.goto(path)
        await expect(visitor.page.locator("main h1")).to_be_visible()
        screens[f"signed out {path}"] = await serious_violations(visitor.page)
    user = await phones(bypass_csp=True)
    await user.sign_in(reader, token)
    for path in (
        "/",
        "/search",
        "/notifications",
        f"/@{author['handle']}",
        f"/p/{post['id']}",
        f"/@{author['handle']}/followers",
    ):
        await user.page.goto(path)
        await expect(user.page.locator("main h1")).to_be_visible()
        await user.page.wait_for_load_state("networkidle")
        screens[path] = await serious_violations(user.page)
    assert all(not v for v in screens.values()), {k: v for k, v in screens.items() if v}


async def test_post__can_be_written_with_the_keyboard_alone(api: Api, phones: PhoneFactory) -> None:
    user, token = await api.signup("keys")
    phone = await phones(is_mobile=False, has_touch=False)
    await phone.sign_in(user, token)
    await phone.page.goto("/")
    await expect(phone.page.get_by_role("heading", name="Home")).to_be_visible()
    box = phone.page.get_by_label("What's new?")
    for _ in range(10):
        if await box.evaluate("el => el === document.activeElement"):
            break
        await phone.page.keyboard.press("Tab")
    await expect(box).to_be_focused()
    await phone.page.keyboard.type("typed without a mouse")
    await phone.page.keyboard.press("Tab")
    await expect(phone.page.get_by_role("button", name="Post", exact=True)).to_be_focused()
    await phone.page.keyboard.press("Enter")
    await expect(
        phone.page.locator("article.post").filter(has_text="typed without a mouse")
    ).to_be_visible()
