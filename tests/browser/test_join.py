"""The one-tap way in: the legacy account's login, then its follows copied, with progress."""

from __future__ import annotations

import random
import re

import pytest
from playwright.async_api import expect

from tests.browser.conftest import PhoneFactory
from tests.legacy import GRAPH, legacy_credential

pytestmark = pytest.mark.browser

IMPORT_S = 90  # the import is async work (Kafka, workers); small accounts take seconds


def _small_account() -> str:
    """A legacy account following a few dozen at most (a quick import); any run may have
    joined it already, which the join form turns into a login."""
    rng = random.Random()
    while True:
        n = rng.randint(100_000, GRAPH.size)
        if 3 <= GRAPH.out_degree(n) <= 30:
            return str(n)


async def test_legacy_one_tap__joins_and_imports_with_progress(phones: PhoneFactory) -> None:
    legacy_id = _small_account()
    phone = await phones()
    page = phone.page
    await page.goto("/join")
    await page.get_by_label("Legacy account id").fill(legacy_id)
    await page.get_by_label("Legacy password").fill(legacy_credential(legacy_id))
    await page.get_by_role("button", name="Continue").click()
    await expect(page.get_by_role("heading", name="Follow the same people")).to_be_visible()
    following = GRAPH.out_degree(int(legacy_id))
    # (a sheddable read: under load it may ride out a 503's Retry-After or two)
    await expect(page.get_by_text(f"You follow {following} accounts")).to_be_visible(timeout=30_000)
    await page.get_by_role("button", name="Follow them here too").click()
    status = page.get_by_role("status")
    await expect(status).to_have_attribute("data-import-state", "done", timeout=IMPORT_S * 1000)
    done = re.compile(rf"Done\. \d+ of {following} followed")
    await expect(status).to_have_text(done)
    await expect(page.get_by_role("progressbar", name="Import progress")).to_be_visible()


async def test_legacy_one_tap__a_wrong_credential_is_a_message(phones: PhoneFactory) -> None:
    phone = await phones()
    await phone.page.goto("/join")
    await phone.page.get_by_label("Legacy account id").fill(_small_account())
    await phone.page.get_by_label("Legacy password").fill("not it")
    await phone.page.get_by_role("button", name="Continue").click()
    await expect(phone.page.get_by_role("alert").filter(has_text="wrong")).to_be_visible()
