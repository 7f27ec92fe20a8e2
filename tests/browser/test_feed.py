"""A long feed read by scrolling: every post once, in order, none missing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from playwright.async_api import Response, expect

from tests.api import Api, eventually
from tests.browser.conftest import PhoneFactory

pytestmark = pytest.mark.browser

POSTS = 70  # past three pages of 20


async def test_long_feed__scrolls_past_first_pages_without_repeat_or_gap(
    api: Api, phones: PhoneFactory
) -> None:
    author, author_token = await api.signup("long")
    reader, reader_token = await api.signup("reader")
    await api.call("PUT", f"/v1/me/following/{author['handle']}", token=reader_token)
    for n in range(POSTS):
        await api.post(author_token, f"post number {n} of the long feed")

    async def all_there() -> bool:
        return len(await api.all_pages("/v1/feed", token=reader_token, limit=100)) == POSTS

    await eventually(all_there, timeout_s=60, what=f"{POSTS} posts in the reader's feed")
    expected = [p["id"] for p in await api.all_pages("/v1/feed", token=reader_token, limit=20)]

    phone = await phones()
    await phone.sign_in(reader, reader_token)
    pages: list[list[str]] = []
    urls: list[str] = []

    async def record(response: Response) -> None:
        if "/v1/feed" in response.url and response.ok:
            urls.append(response.url.split("/v1/feed", 1)[1][:60])
            pages.append([p["id"] for p in json.loads(await response.body())["items"]])

    phone.page.on("response", record)
    await phone.page.goto("/")
    done = phone.page.locator("[data-list-done]")
    for _ in range(20):  # scroll to the bottom until the list says it has ended
        if await done.count():
            break
        await phone.page.mouse.wheel(0, 20_000)
        await phone.page.wait_for_timeout(300)
    await expect(done).to_have_text("You're all caught up.")
    shown = await phone.page.locator("[data-feed] article[data-post-id]").evaluate_all(
        "els => els.map(e => e.dataset.postId)"
    )
    assert shown == expected, _diff(shown, expected)
    scrolled = [ids for ids in pages]
    assert len(scrolled) >= 4, f"the feed came in {len(scrolled)} requests"
    first_pass = _without_polls(scrolled)
    assert len(first_pass) == len(set(first_pass)) == POSTS, f"feed reads: {urls}"


def _without_polls(pages: list[list[str]]) -> list[str]:
    """The pages read by scrolling: a poll re-reads the first page, which is not a repeat."""
    first = pages[0]
    return [i for n, ids in enumerate(pages) if n == 0 or ids != first for i in ids]


def _diff(shown: list[Any], expected: list[Any]) -> str:
    missing = [i for i in expected if i not in shown]
    extra = [i for i in shown if i not in expected]
    return f"{len(shown)} shown vs {len(expected)}: missing {missing[:3]}, extra {extra[:3]}"
