"""The web client's files (``web/dist``, built by ``make web``): the app's pages at the root,
its hashed assets, and the headers that keep them safe and cached.

Every file is read once at start and kept in memory with its gzip form and ETag (the whole
build is ~2 MB, Swagger UI most of it); a path from the URL is only ever looked up, never
joined onto the disk.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.Response]]

# The app runs only our own script and style; user text is only ever text (no HTML from users
# reaches the DOM), and Trusted Types make an accidental innerHTML a violation, not a hole.
APP_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'; require-trusted-types-for 'script'; "
    "trusted-types 'none'"
)
# The control room draws with uPlot (canvas; it sets styles through the CSSOM, which CSP
# allows): the same policy without Trusted Types, which uPlot was not written for.
CONTROL_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI injects inline styles and data: images (its icons); its script is still ours.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
IMMUTABLE = "public, max-age=31536000, immutable"  # names carry their content's hash
REVALIDATE = "no-cache"  # pages and unhashed files: always asked again, 304 by ETag
# The app's own paths (DESIGN.md's API stays under /v1); anything else is the JSON 404.
APP_PATHS = (
    "/",
    "/signup",
    "/login",
    "/join",
    "/import",
    "/search",
    "/notifications",
    "/@{handle}",
    "/@{handle}/followers",
    "/@{handle}/following",
    "/p/{post_id}",
)
PUBLIC_FILES = ("favicon.svg", "robots.txt")
NOT_BUILT = (
    "<!doctype html><meta charset=utf-8><title>minithreads</title>"
    "<p>The web client is not built: run <code>make web</code> (or <code>make up</code>).</p>"
)


@dataclass(frozen=True)
class File:
    body: bytes
    gzipped: bytes | None  # None when gzip would not make it smaller
    content_type: str
    charset: str | None
    etag: str
    headers: dict[str, str]

    def response(self, request: web.Request) -> web.Response:
        headers = {"ETag": self.etag, "Vary": "Accept-Encoding", **self.headers}
        if self.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        body = self.body
        if self.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
            body = self.gzipped
            headers["Content-Encoding"] = "gzip"
        return web.Response(
            body=body, content_type=self.content_type, charset=self.charset, headers=headers
        )


def load(path: Path, headers: dict[str, str]) -> File:
    body = path.read_bytes()
    squeezed = gzip.compress(body, 9, mtime=0)
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    textual = content_type.startswith("text/") or content_type.endswith(("javascript", "+xml"))
    return File(
        body=body,
        gzipped=squeezed if len(squeezed) < len(body) else None,
        content_type=content_type,
        charset="utf-8" if textual else None,
        etag=f'"{hashlib.sha256(body).hexdigest()[:20]}"',
        headers=headers,
    )


# Each page: its file in the build, and its policy.
PAGES = {
    "app": ("index.html", APP_CSP),
    "control": ("control/index.html", CONTROL_CSP),
    "docs": ("docs/index.html", DOCS_CSP),
}


@dataclass(frozen=True)
class Site:
    pages: dict[str, File]
    assets: dict[str, File]
    public: dict[str, File]

    @classmethod
    def read(cls, root: Path) -> Site:
        if not (root / "index.html").is_file():
            return cls({}, {}, {})
        pages = {
            name: load(
                root / file,
                {"Cache-Control": REVALIDATE, "Content-Security-Policy": csp, **SECURITY_HEADERS},
            )
            for name, (file, csp) in PAGES.items()
            if (root / file).is_file()
        }
        assets_dir = root / "assets"
        assets = {
            p.name: load(p, {"Cache-Control": IMMUTABLE, **SECURITY_HEADERS})
            for p in (assets_dir.iterdir() if assets_dir.is_dir() else ())
            if p.is_file()
        }
        public = {
            name: load(root / name, {"Cache-Control": REVALIDATE, **SECURITY_HEADERS})
            for name in PUBLIC_FILES
            if (root / name).is_file()
        }
        return cls(pages, assets, public)


def routes(root: Path) -> list[web.RouteDef]:
    site = Site.read(root)

    def page(name: str) -> Handler:
        async def serve(request: web.Request) -> web.Response:
            found = site.pages.get(name)
            if found is None:
                return web.Response(
                    status=503, text=NOT_BUILT, content_type="text/html", headers=SECURITY_HEADERS
                )
            return found.response(request)

        return serve

    async def asset(request: web.Request) -> web.Response:
        found = site.assets.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(reason="no such file")
        return found.response(request)

    def public(name: str) -> web.RouteDef:
        async def serve(request: web.Request) -> web.Response:
            found = site.public.get(name)
            if found is None:
                raise web.HTTPNotFound(reason="no such file")
            return found.response(request)

        return web.get(f"/{name}", serve)

    return [
        *(web.get(path, page("app")) for path in APP_PATHS),
        web.get("/control", page("control")),
        web.get("/docs", page("docs")),
        web.get("/assets/{name}", asset),
        *(public(name) for name in PUBLIC_FILES),
    ]
