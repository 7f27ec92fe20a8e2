"""Two people in two browsers: follow, post, see it arrive, like it, hear about it."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from playwright.async_api import Route, expect

from tests.browser.conftest import PhoneFactory
from tests.browser.ui import open_tab, post_with, sign_up, write_post

pytestmark = pytest.mark.browser

LIVE_S = 30  # a new post reaches a follower's open feed (fan-out, then a poll)


async def test_two_users__follow_post_like_live(phones: PhoneFactory) -> None:
    author, follower = await phones(), await phones()
    author_handle = await sign_up(author.page, "author")
    fan_handle = await sign_up(follower.page, "fan")

    # The follower finds the author and follows.
    await open_tab(follower.page, "Search")
    await follower.page.get_by_label("Handle starts with").fill(author_handle)
    await follower.page.get_by_role("button", name="Search").click()
    await follower.page.get_by_role("link", name=f"@{author_handle}").click()
    follow = follower.page.get_by_role("button", name="Follow")
    await follow.click()
    await expect(follower.page.get_by_role("button", name="Following")).to_have_attribute(
        "aria-pressed", "true"
    )
    await open_tab(follower.page, "Home")
    await follower.page.evaluate("window.mtSamePage = true")  # gone if the page reloads

    text = f"hello from the author {secrets.token_hex(3)}"
    mine = await write_post(author.page, text)
    await expect(mine).to_be_visible()

    # It arrives in the follower's open feed, no reload.
    theirs = post_with(follower.page, text)
    await expect(theirs).to_be_visible(timeout=LIVE_S * 1000)
    assert await follower.page.evaluate("window.mtSamePage === true")

    # The like shows at once, before the server has answered.
    async def slow(route: Route) -> None:
        await asyncio.sleep(1.0)
        await route.continue_()

    await follower.page.route("**/v1/posts/*/like", slow)
    like = theirs.get_by_role("button", name="Like")
    await like.click()
    await expect(theirs.locator("button.like")).to_have_attribute(
        "aria-pressed", "true", timeout=500
    )
    await expect(theirs.locator("[data-like-count]")).to_have_text("1", timeout=500)
    await expect(theirs.locator("button.like")).to_be_enabled(timeout=10_000)  # answered

    # The author sees the count in their open feed, then the notifications.
    await expect(mine.locator("[data-like-count]")).to_have_text("1", timeout=LIVE_S * 1000)
    await open_tab(author.page, "Notifications")
    notes = author.page.locator("li.notification").filter(has_text=f"@{fan_handle}")
    await expect(notes.filter(has_text="liked your post")).to_have_count(1, timeout=LIVE_S * 1000)
    await expect(notes.filter(has_text="followed you")).to_have_count(1, timeout=LIVE_S * 1000)
