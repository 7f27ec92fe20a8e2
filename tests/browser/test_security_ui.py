"""What users write is shown as text, never run; the app's files carry their headers."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from tests.api import BASE, Api, eventually
from tests.browser.conftest import PhoneFactory
from tests.browser.ui import post_with, sign_up, write_post

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"


async def test_user_html__is_shown_as_text_and_runs_nothing(api: Api, phones: PhoneFactory) -> None:
    writer, reader = await phones(), await phones()
    handle = await sign_up(writer.page, "xss")
    await writer.page.goto(f"/@{handle}")
    await writer.page.get_by_role("button", name="Edit profile").click()
    await writer.page.get_by_label("Name").fill("<b>bold</b>")
    await writer.page.get_by_label("Bio").fill("<script>alert(2)</script>")
    await writer.page.get_by_role("button", name="Save").click()
    # Saved (the form closes on the answer): leaving earlier would cut the PATCH short.
    await expect(writer.page.get_by_role("button", name="Edit profile")).to_be_visible()
    await expect(writer.page.get_by_role("heading", level=1)).to_contain_text("<b>bold</b>")
    await writer.page.goto("/")
    posted = await write_post(writer.page, XSS)
    await expect(posted.locator(".text")).to_have_text(XSS)

    async def renamed() -> bool:  # others may see a profile's edit a moment late
        reply = await api.call("GET", f"/v1/users/{handle}")
        return bool(reply.body["display_name"] == "<b>bold</b>")

    await eventually(renamed, timeout_s=30, what="the new display name, for others")
    _, token = await api.signup("xssreader")
    await api.call("PUT", f"/v1/me/following/{handle}", token=token)
    me = (await api.call("GET", "/v1/me", token=token)).body
    await reader.sign_in(me, token)
    await reader.page.goto(f"/@{handle}")
    await expect(reader.page.get_by_role("heading", level=1)).to_contain_text("<b>bold</b>")
    await expect(reader.page.get_by_text("<script>alert(2)</script>")).to_be_visible()
    seen = post_with(reader.page, XSS)
    await expect(seen.locator(".text")).to_have_text(XSS)
    for page in (writer.page, reader.page):
        assert await page.locator("main img, main b, main script").count() == 0
    # (no dialog and no CSP violation: the fixture checks both)


async def test_app_files__carry_csp_and_cache_headers(api: Api) -> None:
    page = await api.http.get(f"{BASE}/@someone")
    html = await page.text()
    assert page.status == 200
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["Cache-Control"] == "no-cache"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    asset = re.search(r'src="(/assets/[^"]+\.js)"', html)
    assert asset, html
    script = await api.http.get(f"{BASE}{asset[1]}", headers={"Accept-Encoding": "gzip"})
    assert script.status == 200
    assert script.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert script.headers["Content-Encoding"] == "gzip"
    again = await api.http.get(
        f"{BASE}{asset[1]}", headers={"If-None-Match": script.headers["ETag"]}
    )
    assert again.status == 304
    assert (await api.http.get(f"{BASE}/assets/..%2Findex.html")).status == 404
    assert (await api.call("GET", "/v1/nope")).code == "not_found"  # the API's 404, as before
