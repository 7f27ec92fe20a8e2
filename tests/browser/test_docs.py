"""/docs: the API explorer renders our document, from our own files, and its calls work."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.browser.conftest import PhoneFactory

pytestmark = pytest.mark.browser

DESKTOP = {"viewport": {"width": 1280, "height": 900}, "is_mobile": False, "has_touch": False}


async def test_api_explorer__shows_every_section_and_tries_a_call(phones: PhoneFactory) -> None:
    screen = await phones(**DESKTOP)
    page = screen.page
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if "127.0.0.1:8080" not in r.url else None)
    await page.goto("/docs")
    await expect(page.get_by_text("minithreads REST API", exact=False).first).to_be_visible()
    for section in ("Accounts", "People", "Posts", "Feed", "Notifications"):
        await expect(page.locator(f"#operations-tag-{section}")).to_be_visible()
    search = page.locator("#operations-People-search_users")
    await search.locator(".opblock-summary").click()
    await search.get_by_placeholder("q").fill("a")
    await search.get_by_role("button", name="Execute").click()
    status = search.locator(".live-responses-table tbody .response-col_status").first
    await expect(status).to_have_text("200")
    assert [u for u in outside if not u.startswith("data:")] == []  # nothing from elsewhere
