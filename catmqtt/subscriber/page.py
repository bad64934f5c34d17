"""This module holds the subscriber's web page: the static files it is made of
(``static/``, shipped as package data), how they are answered, and the headers
every answer of the subscriber carries so that a browser runs nothing a
publisher sent (a strict Content-Security-Policy, ``nosniff``).

The page is plain HTML, CSS and JavaScript modules: no build step, nothing
fetched from elsewhere. It reads the REST API with relative URLs only, so it
works behind a reverse proxy under a path prefix.

Threads: the HTTP threads read the files, which are loaded once (`_files`)
and never changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from flask import Flask, Response, request

from ..errors import NotFound

# Only what the page's own files do: no inline script or style, no plugin, no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self';"
    " frame-ancestors 'none'"
)
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Served at / and /auth/login: their relative URLs are written for those addresses.
PAGES = ("index.html", "login.html")


@dataclass(frozen=True)
class StaticFile:
    """A file of the page: its bytes, media type and etag."""

    data: bytes
    mimetype: str
    etag: str


@cache
def _files() -> dict[str, StaticFile]:
    """Return the page's files by name: those of ``static/`` with a known media type.

    A name asked for is looked up here, never joined to a path, so nothing
    outside ``static/`` can be reached.
    """
    found = {}
    for entry in (resources.files(__package__) / "static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in MEDIA_TYPES:
            data = entry.read_bytes()
            found[entry.name] = StaticFile(data, MEDIA_TYPES[suffix], hashlib.sha256(data).hexdigest()[:32])
    return found


def static_response(name: str) -> Response:
    """Answer file `name` of the page (revalidated by its etag on every use), or raise NotFound."""
    found = _files().get(name)
    if found is None or name in PAGES:
        raise NotFound(f"no such file of the web page: {name[:100]!r}")
    response = Response(found.data, mimetype=found.mimetype)
    response.set_etag(found.etag)
    # A new catmqtt serves new files: browsers ask each time whether theirs are current.
    response.headers["Cache-Control"] = "no-cache"
    return response.make_conditional(request)


def page_response(name: str) -> Response:
    """Answer page `name` (of `PAGES`), which is served at its own address, not under ``static/``."""
    response = Response(_files()[name].data, mimetype=MEDIA_TYPES[".html"])
    response.headers["Cache-Control"] = "no-cache"
    return response


def install(app: Flask) -> None:
    """Have every answer of `app` carry the headers that keep browsers from running
    or sniffing what a publisher sent."""

    @app.after_request
    def secure(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response
