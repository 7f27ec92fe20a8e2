"""What a user does in the web client, step by step, for the browser tests."""

from __future__ import annotations

import secrets

from playwright.async_api import Locator, Page, expect

PASSWORD = "correct horse"


async def sign_up(page: Page, prefix: str = "w") -> str:
    """A new account through the sign-up form; its handle."""
    handle = f"{prefix}{secrets.token_hex(5)}"
    await page.goto("/signup")
    await page.get_by_label("Handle").fill(handle)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await expect(page.get_by_role("heading", name="Home")).to_be_visible()
    return handle


async def write_post(page: Page, text: str) -> Locator:
    """A post from the home composer; the post as the feed shows it."""
    await page.get_by_label("What's new?").fill(text)
    await page.get_by_role("button", name="Post", exact=True).click()
    return post_with(page, text)


def post_with(page: Page, text: str) -> Locator:
    return page.locator("article.post").filter(has_text=text)


async def open_tab(page: Page, name: str) -> None:
    await page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()
