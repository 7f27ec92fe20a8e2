"""Every error the API can give is a message in the page, never a blank screen; polling backs
off when told to."""

from __future__ import annotations

import itertools
import json
import re
import time

import pytest
from playwright.async_api import Request, Route, expect

from tests.api import Api
from tests.browser.conftest import PhoneFactory

pytestmark = pytest.mark.browser

LOGIN_LIMIT = 10  # per handle per minute (gateway settings)


async def test_rate_limited_login__is_a_message_with_its_wait(
    api: Api, phones: PhoneFactory
) -> None:
    user, _ = await api.signup("limited")
    phone = await phones()
    await phone.page.goto("/login")
    await phone.page.get_by_label("Handle").fill(user["handle"])
    await phone.page.get_by_label("Password").fill("not the password")
    alert = phone.page.locator("#welcome-error")
    for _ in range(LOGIN_LIMIT):
        await phone.page.get_by_role("button", name="Log in").click()
        await expect(alert).to_have_text("wrong handle or password")
        await phone.page.evaluate("document.getElementById('welcome-error').remove()")
    await phone.page.get_by_role("button", name="Log in").click()
    await expect(alert).to_have_text(re.compile(r"Too many attempts\. Try again in \d+ s\."))
    await expect(phone.page.get_by_role("heading", name="Log in")).to_be_visible()


async def test_shed_feed__says_so_and_polls_after_retry_after(
    api: Api, phones: PhoneFactory
) -> None:
    user, token = await api.signup("shed")
    phone = await phones()
    await phone.sign_in(user, token)
    polls: list[float] = []

    async def shed(route: Route, request: Request) -> None:
        # Timed here, as the request is intercepted: a page.evaluate() would wait its turn
        # behind the page's own work and shift the times it reports.
        polls.append(time.monotonic() * 1000)
        body = {"error": {"code": "overloaded", "message": "the server is overloaded"}}
        await route.fulfill(
            status=503,
            headers={"Retry-After": "3"},
            content_type="application/json",
            body=json.dumps(body),
        )

    await phone.page.route("**/v1/feed*", shed)
    await phone.page.goto("/")
    await expect(phone.page.get_by_text("We're busy right now. Try again in 3 s.")).to_be_visible()
    await phone.page.wait_for_timeout(7_000)
    # The first read, a poll a second later, then polls at most every Retry-After (3 s) and
    # backing off: not one a second.
    gaps = [b - a for a, b in itertools.pairwise(polls[1:])]  # from the first poll on
    assert 3 <= len(polls) <= 4, f"{len(polls)} requests in ~7 s: {polls}"
    assert all(gap >= 3_000 for gap in gaps), gaps
    await phone.page.unroute("**/v1/feed*")
    await phone.page.get_by_role("button", name="Try again").click()
    await expect(phone.page.locator("[data-list-done]")).to_be_visible()


async def test_offline__is_a_message_not_a_blank_page(api: Api, phones: PhoneFactory) -> None:
    user, token = await api.signup("offline")
    phone = await phones()
    await phone.sign_in(user, token)
    await phone.page.goto("/")
    await expect(phone.page.get_by_role("heading", name="Home")).to_be_visible()
    await phone.context.set_offline(True)
    await expect(phone.page.get_by_role("alert").filter(has_text="You're offline")).to_be_visible()
    await phone.page.get_by_label("What's new?").fill("written offline")
    await phone.page.get_by_role("button", name="Post", exact=True).click()
    await expect(phone.page.get_by_role("alert").filter(has_text="offline")).to_be_visible()
    await phone.context.set_offline(False)
    await phone.page.get_by_role("button", name="Post", exact=True).click()
    await expect(
        phone.page.locator("article.post").filter(has_text="written offline")
    ).to_be_visible()
