"""The control room in a browser: the operator's link opens live charts and the KV's shards;
anything else gets the token form."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from mt_core.operator import ensure_token
from playwright.async_api import expect

from tests.api import Api
from tests.browser.conftest import PhoneFactory
from tests.browser.test_a11y import serious_violations

pytestmark = pytest.mark.browser

HOME = Path(os.environ.get("MT_HOME", Path(__file__).resolve().parents[2] / ".local"))
DESKTOP = {"viewport": {"width": 1280, "height": 900}, "is_mobile": False, "has_touch": False}


async def test_control_room__shows_live_charts_and_every_shards_primary(
    api: Api, phones: PhoneFactory
) -> None:
    for _ in range(3):
        await api.signup("ctl")  # something for the charts
    screen = await phones(**DESKTOP)
    page = screen.page
    await page.goto(f"/control#op={ensure_token(HOME)}")
    await expect(page.locator("body[data-updated]")).to_be_attached()
    assert "#op=" not in page.url  # the token left the address bar (and history)
    await expect(page.get_by_role("status")).to_contain_text("Live")
    await expect(page.locator("#chart-requests canvas").first).to_be_visible()
    # At least one route's rate (Prometheus needs two scrapes of it: up to 10 s on a new stack).
    await expect(page.locator("#chart-requests")).to_have_attribute(
        "data-series", re.compile(r"^[1-9]\d*$")
    )
    rows = page.locator("#shards tbody tr")
    await expect(rows.nth(15)).to_be_attached()  # the stack's 16 shards (more after a split)
    primaries = await rows.locator("td:nth-child(3)").all_text_contents()
    assert all(p.startswith("kv-") for p in primaries), primaries
    await expect(page.get_by_role("link", name="gateway")).to_have_attribute(
        "href", "http://127.0.0.1:9411/zipkin/?serviceName=gateway&lookback=900000"
    )


async def test_control_room__a_users_token_gets_the_token_form(
    api: Api, phones: PhoneFactory
) -> None:
    _, token = await api.signup("ctlusr")
    screen = await phones(**DESKTOP)
    await screen.page.goto(f"/control#op={token}")
    await expect(screen.page.get_by_label("Operator token", exact=False)).to_be_visible()
    await expect(screen.page.get_by_role("alert")).to_have_text(
        "That token does not open the control room."
    )
    await expect(screen.page.locator("#room")).to_be_hidden()


async def test_control_room__has_no_serious_axe_violation(phones: PhoneFactory) -> None:
    screen = await phones(bypass_csp=True, **DESKTOP)
    await screen.page.goto(f"/control#op={ensure_token(HOME)}")
    await expect(screen.page.locator("body[data-updated]")).to_be_attached()
    assert await serious_violations(screen.page) == []
