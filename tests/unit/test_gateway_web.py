"""The gateway's web client files: pages, assets, headers, and nothing else from the disk."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from mt_gateway import web as site
from mt_gateway.middleware import errors_middleware

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><script src=/assets/app-1.js></script>")
    (tmp_path / "assets" / "app-1.js").write_text("console.log('app');" * 50)
    (tmp_path / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (tmp_path / "secret.txt").write_text("not served")
    return tmp_path


async def _client(root: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(middlewares=[errors_middleware])
    app.add_routes(site.routes(root))
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.fixture
async def client(dist: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async for c in _client(dist):
        yield c


async def test_app_paths__serve_the_page_with_its_csp(
    client: TestClient[web.Request, web.Application],
) -> None:
    for path in ("/", "/login", "/@someone", "/@someone/followers", "/p/0123", "/notifications"):
        reply = await client.get(path)
        assert reply.status == 200, path
        assert reply.headers["Content-Security-Policy"] == site.APP_CSP
        assert reply.headers["Cache-Control"] == "no-cache"
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert "<script src=/assets/app-1.js>" in await reply.text()


async def test_assets__are_immutable_gzipped_and_revalidated_by_etag(
    client: TestClient[web.Request, web.Application],
) -> None:
    reply = await client.get("/assets/app-1.js", headers={"Accept-Encoding": "gzip"})
    assert reply.status == 200
    assert reply.headers["Cache-Control"] == site.IMMUTABLE
    assert reply.headers["Content-Encoding"] == "gzip"
    assert reply.content_type == "text/javascript"
    again = await client.get("/assets/app-1.js", headers={"If-None-Match": reply.headers["ETag"]})
    assert again.status == 304
    assert (await client.get("/favicon.svg")).content_type == "image/svg+xml"


async def test_only_built_files_are_served_and_other_paths_are_the_json_404(
    client: TestClient[web.Request, web.Application],
) -> None:
    for path in ("/assets/../secret.txt", "/assets/..%2Fsecret.txt", "/secret.txt", "/x/y"):
        reply = await client.get(path)
        assert reply.status == 404, path
        assert (await reply.json())["error"]["code"] == "not_found"


async def test_no_build__is_a_page_saying_how_to_build_it(tmp_path: Path) -> None:
    async for client in _client(tmp_path / "missing"):
        reply = await client.get("/")
        assert reply.status == 503
        assert "make web" in await reply.text()


def test_web_sources__never_put_strings_into_html() -> None:
    """Users' text reaches the page as text only: nothing in the app writes HTML."""
    sinks = (
        "innerHTML",
        "outerHTML",
        "dangerouslySetInnerHTML",
        "insertAdjacentHTML",
        "document.write",
    )
    found = [
        f"{path.relative_to(REPO)}: {sink}"
        for path in (REPO / "web" / "src").rglob("*.ts*")
        for sink in sinks
        if sink in path.read_text()
    ]
    assert not found
