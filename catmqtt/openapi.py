"""This module holds the OpenAPI 3.1 documents of the publisher's and the subscriber's
HTTP APIs, served by each at ``/api/openapi.json``.

Written by hand from a few builders: the parts both APIs share (the JSON
error, dataset metadata, parameters, error answers) are in
`openapi_parts.COMPONENTS`, with the builders; each API's operations are
here, in `publisher` and `subscriber`. The schemas of `DatasetMeta` and
`RootInfo` are derived from their types in `schema`, so that a field added
there is documented here. ``tests/test_openapi.py`` checks each document
against its app's routes and fuzzes the app with it. The shared names
(`json_schema`, `COMPONENTS`, `ERRORS`, the media types) are importable from
here too.

A new route is a new entry in the paths of `publisher` or `subscriber`,
made by `_operation` (the test fails until it is there); a new error
status, an entry in `openapi_parts.ERRORS`. Bearer tokens would be a
``securitySchemes`` entry in `COMPONENTS` (``{"type": "http", "scheme":
"bearer"}``), a top-level ``"security"`` in the subscriber's document,
``"security": []`` on the operations open to all, and 401 (and 403) among
the errors of the others.
"""

from __future__ import annotations

from typing import Any

from .openapi_parts import (
    _COUNTERS,
    _STRING,
    _STRINGS,
    HTML,
    JSON,
    _chunk,
    _content,
    _document,
    _info,
    _metrics,
    _ok,
    _openapi,
    _operation,
    _ref,
)
from .openapi_parts import COMPONENTS as COMPONENTS
from .openapi_parts import ERRORS as ERRORS
from .openapi_parts import OPENAPI as OPENAPI
from .openapi_parts import PROMETHEUS as PROMETHEUS
from .openapi_parts import json_schema as json_schema
from .wire import CFRAME, FRAMES, NPY, OCTETS, ZIP


def publisher() -> dict[str, Any]:
    """Return the OpenAPI document of a publisher's HTTP API."""
    return _document(
        "catmqtt publisher",
        "A publisher serves its root's datasets: metadata, chunk bytes as stored, manifests, files."
        ' Every error is JSON, {"error", "status"}.',
        {
            "/api/list": {"get": _operation("The root's datasets, sorted.", _ok("Their paths.", _STRINGS))},
            "/api/info/{path}": {
                "get": _info("A dataset's metadata.", _ref("schemas", "DatasetMeta"), (400, 404), "path")
            },
            "/api/chunk/{path}": {
                "get": _chunk("A chunk's compressed bytes.", (400, 404, 503), ("path", "nchunk", "blocks"))
            },
            "/api/manifest/{path}": {
                "get": _operation(
                    "The digest of every chunk of a dataset.",
                    _ok("The manifest.", _ref("schemas", "Manifest")),
                    (400, 404),
                    parameters=("path",),
                )
            },
            "/api/download/{path}": {
                "get": _operation(
                    "The dataset's file as stored.",
                    _ok("The file.", None, OCTETS, headers=("ETag",)),
                    (400, 404, 503),
                    parameters=("path", "If-None-Match"),
                    more={"304": {"description": "The file has not changed since the ETag given."}},
                )
            },
            "/api/openapi.json": {"get": _openapi()},
            "/metrics": {
                "get": _metrics(
                    "catmqtt_served_bytes_total (bytes of answer bodies sent),"
                    " catmqtt_requests_total{endpoint, status}."
                )
            },
        },
    )


# What reading a dataset through a subscriber may fail with: its publisher
# may be needed for chunks not cached yet.
_READS = (400, 404, 409, 502, 503, 504, 507)


def bundle(what: str, parameters: tuple[str, ...]) -> dict[str, Any]:
    """The subscriber's offline bundle of `what`."""
    return _operation(
        f"An offline bundle of {what}: a ZIP file of its datasets' files, stored, and"
        " catalog.sqlite; streamed as it is written (a failure midway cuts it, ending with the"
        " JSON error and its frame, as /api/chunks).",
        _ok("The bundle.", None, ZIP),
        (400, 404, 409, 503),
        parameters=parameters,
    )


def subscriber() -> dict[str, Any]:
    """Return the OpenAPI document of a subscriber's HTTP API."""
    listing = _ok("Paths relative to the root, sorted.", _STRINGS)
    done = _ok("Done.", {"const": "Ok"})
    selection = _ok(
        "The selection: a Blosc2 frame (an array), .npy (an array, with Accept: application/x-npy)"
        " or bytes (a .b2frame or a plain file).",
        None,
        CFRAME,
        NPY,
        OCTETS,
    )
    fetch_errors = (*_READS, 413, 416)
    document = _document(
        "catmqtt subscriber",
        "A subscriber serves the roots it follows, fetching the chunks a request needs from their"
        ' publishers once and caching them. Every error is JSON, {"error", "status"}, and may name'
        ' a dataset that changed under a read ({"changed": "ROOT/PATH"}).',
        {
            "/": {
                "get": _operation(
                    "The web page: a client of this API in the browser (roots, datasets, data, plots).",
                    _ok("The page.", _STRING, HTML),
                )
            },
            "/static/{filename}": {
                "get": {
                    **_operation(
                        "A file of the web page (JavaScript, CSS, an icon).",
                        _ok(
                            "The file, with its ETag.",
                            _STRING,
                            "text/javascript",
                            "text/css",
                            "image/svg+xml",
                        ),
                        (404,),
                        parameters=("filename", "If-None-Match"),
                        more={"304": {"description": "The file has not changed since the ETag given."}},
                    ),
                    "security": [],
                }
            },
            "/api/roots": {
                "get": _operation(
                    "The roots known, by name.",
                    _ok("The roots.", {"type": "object", "additionalProperties": _ref("schemas", "Root")}),
                )
            },
            "/api/subscribe/{name}": {
                "post": _operation("Follow a root.", done, (400, 404, 507), parameters=("name",))
            },
            "/api/unsubscribe/{name}": {
                "post": _operation("Stop following a root.", done, (400, 404, 409, 507), parameters=("name",))
            },
            "/api/list/{name}": {
                "get": _operation("The datasets of a root.", listing, (400, 404, 409), parameters=("name",))
            },
            "/api/list/{name}/{directory}": {
                "get": _operation(
                    "The datasets of a directory of a root.",
                    listing,
                    (400, 404, 409),
                    parameters=("name", "directory"),
                )
            },
            "/api/info/{fullpath}": {
                "get": _info(
                    "A dataset's metadata (ROOT/PATH), or a root's announcement (ROOT).",
                    {"oneOf": [_ref("schemas", "DatasetDescription"), _ref("schemas", "RootDescription")]},
                    (400, 404, 409),
                    "fullpath",
                )
            },
            "/api/fetch/{fullpath}": {
                "get": _operation(
                    "A selection of a dataset.",
                    selection,
                    fetch_errors,
                    parameters=("fullpath", "slice", "slice_", "indices", "Accept", "Range"),
                ),
                "post": _operation(
                    "A selection of a dataset, given in the body (for selections too long for a URL).",
                    selection,
                    fetch_errors,
                    parameters=("fullpath", "Accept", "Range"),
                    body={"required": True, "content": _content(_ref("schemas", "Selection"))},
                ),
            },
            "/api/cached/{fullpath}": {
                "get": _operation(
                    "How much of the current version of a dataset is cached here.",
                    _ok(
                        "Chunks and their compressed bytes cached, of all (bytes as announced).",
                        {
                            "type": "object",
                            "properties": {
                                "path": _STRING,
                                "etag": _STRING,
                                "nchunks": {"type": "integer"},
                                "cached_chunks": {"type": "integer"},
                                "cached_bytes": {"type": "integer"},
                                "cbytes": {"type": "integer"},
                            },
                            "required": [
                                "path",
                                "etag",
                                "nchunks",
                                "cached_chunks",
                                "cached_bytes",
                                "cbytes",
                            ],
                        },
                    ),
                    (400, 404, 409),
                    parameters=("fullpath",),
                )
            },
            "/api/chunk/{fullpath}": {
                "get": _chunk("A chunk's compressed bytes.", (*_READS, 416), ("fullpath", "nchunk"))
            },
            "/api/manifest/{fullpath}": {
                "get": _operation(
                    "The digest of every chunk of a dataset, as its publisher serves it (from the"
                    " publisher, checked against the root's announcement).",
                    _ok("The manifest.", _ref("schemas", "Manifest")),
                    _READS,
                    parameters=("fullpath",),
                )
            },
            "/api/chunks/{fullpath}": {
                "get": _operation(
                    "Compressed chunks, streamed in frames as they come.",
                    _ok(
                        "Frames: (chunk number, length) as two little-endian int64, then the bytes;"
                        " a frame numbered -1 holds a JSON error and ends the stream.",
                        None,
                        FRAMES,
                    ),
                    (*_READS, 412, 413),
                    parameters=("fullpath", "nchunks", "etag"),
                )
            },
            "/api/stats": {
                "get": _operation(
                    "Counters since the subscriber started.",
                    _ok(
                        "Chunks fetched and cache hits, in total and per dataset; what large answers hold.",
                        {
                            "type": "object",
                            "properties": {
                                "total": _COUNTERS,
                                "datasets": {"type": "object", "additionalProperties": _COUNTERS},
                                "large": _COUNTERS,
                                "cache": {
                                    "type": "object",
                                    "description": "Cached bytes, the budget (null: none), evictions.",
                                    "properties": {
                                        "bytes": {"type": "integer"},
                                        "limit": {"type": ["integer", "null"]},
                                        "evictions": {"type": "integer"},
                                    },
                                    "required": ["bytes", "limit", "evictions"],
                                },
                                "served_bytes": {"type": "integer"},
                            },
                            "required": ["total", "datasets", "large", "cache", "served_bytes"],
                        },
                    ),
                )
            },
            "/api/download/{fullpath}": {
                "get": _operation(
                    "The whole dataset as a file: .b2nd, .b2frame, or the plain file's bytes.",
                    _ok("The file.", None, OCTETS),
                    (*_READS, 413),
                    parameters=("fullpath",),
                )
            },
            "/api/bundle/{name}": {"get": bundle("a root", ("name", "cached"))},
            "/api/bundle/{name}/{directory}": {
                "get": bundle("a directory of a root", ("name", "directory", "cached"))
            },
            "/api/openapi.json": {"get": _openapi()},
            "/api/nodes": {
                "get": _operation(
                    "The status of each node this subscriber hears of, one a node.",
                    _ok("Sorted by role and id.", {"type": "array", "items": _ref("schemas", "Node")}),
                )
            },
            "/metrics": {
                "get": _metrics(
                    "the cache (catmqtt_cache_bytes, catmqtt_cache_limit_bytes,"
                    " catmqtt_cache_hits_total, catmqtt_cache_misses_total, catmqtt_evictions_total),"
                    " the links (catmqtt_upstream_bytes_total, catmqtt_served_bytes_total,"
                    " catmqtt_fetch_seconds), catmqtt_requests_total{endpoint, status}."
                )
            },
            **_auth(),
            **_pins(),
            **_relay(),
        },
    )
    return _guarded(document)


def _relay() -> dict[str, dict[str, Any]]:
    """The publisher's endpoints, which a subscriber serves for each root it republishes
    (``/relay/<name>``) to anyone, as a publisher does; chunks not cached are fetched upstream."""
    paths = {}
    for path, operations in publisher()["paths"].items():
        if path.startswith("/api/") and path != "/api/openapi.json":
            operation = operations["get"]
            paths[f"/relay/{{name}}{path}"] = {
                "get": {
                    **operation,
                    "summary": f"{operation['summary']} Of a root this subscriber republishes.",
                    # Whole chunks only: no blocks first.
                    "parameters": [
                        _ref("parameters", "name"),
                        *(p for p in operation.get("parameters", []) if p != _ref("parameters", "blocks")),
                    ],
                    "responses": {
                        **operation["responses"],
                        **{str(status): _ref("responses", str(status)) for status in _READS},
                    },
                    "security": [],
                }
            }
    return paths


def _auth() -> dict[str, dict[str, Any]]:
    """The login paths of a subscriber, open to all."""
    session = _ok("The session; its token is also set as the session cookie.", _ref("schemas", "Session"))
    login = _operation(
        "Log in with a user name and password.",
        session,
        (400, 401, 413, 429, 503),
        body={
            "required": True,
            "content": {
                JSON: {"schema": _ref("schemas", "Login")},
                "application/x-www-form-urlencoded": {"schema": _ref("schemas", "Login")},
            },
        },
        more={"303": {"description": "A login posted by the login page: back to the status page."}},
    )
    return {
        "/auth/login": {
            "get": {**_operation("The login page.", _ok("The page.", _STRING, HTML)), "security": []},
            "post": {**login, "security": []},
        },
        "/auth/jwt/login": {
            "post": {**login, "summary": "Log in, as python-blosc2's c2context does.", "security": []}
        },
        "/auth/logout": {"post": _operation("End the session.", _ok("Done.", {"const": "Ok"}))},
        "/auth/me": {
            "get": _operation(
                "Who the request acts for; without accounts, anyone, as an admin.",
                _ok(
                    "Whether accounts are on, the user (null without), whether an admin.",
                    {
                        "type": "object",
                        "properties": {
                            "accounts": {"type": "boolean"},
                            "user": {"type": ["string", "null"]},
                            "admin": {"type": "boolean"},
                        },
                        "required": ["accounts", "user", "admin"],
                    },
                ),
            )
        },
    }


def _pins() -> dict[str, dict[str, Any]]:
    """The pins of a subscriber (mirrored roots, directories and datasets), and forgetting roots."""
    done = _ok("Done.", {"const": "Ok"})
    count = {"type": "integer", "minimum": 0}
    pin = {
        "type": "object",
        "properties": {
            "root": _STRING,
            "path": {"type": "string", "description": "a directory or a dataset; '' for the whole root"},
            "datasets": count,
            "cached": {**count, "description": "bytes of its chunks cached"},
            "total": {**count, "description": "compressed bytes in all: as announced, exact once cached"},
            "done": {"type": "boolean", "description": "whether every chunk is cached"},
            "error": {"type": ["string", "null"], "description": "what keeps it from being whole"},
        },
        "required": ["root", "path", "datasets", "cached", "total", "done", "error"],
    }
    target = ("fullpath",)
    return {
        "/api/pin/{fullpath}": {
            "post": _operation(
                "Pin ROOT[/PATH] (subscribing to ROOT): fetch it whole in the background, keep it cached.",
                done,
                (400, 404, 507),
                parameters=target,
            )
        },
        "/api/unpin/{fullpath}": {
            "post": _operation("Unpin ROOT[/PATH], as pinned.", done, (400, 404, 507), parameters=target)
        },
        "/api/pins": {
            "get": _operation("The pins, sorted.", _ok("The pins.", {"type": "array", "items": pin}))
        },
        "/api/forget/{name}": {
            "post": _operation(
                "Unsubscribe from a root, drop its cache, and forget it unless its publisher is online.",
                done,
                (400, 404, 409, 507),
                parameters=("name",),
            )
        },
    }


def _guarded(document: dict[str, Any]) -> dict[str, Any]:
    """Return the subscriber's `document` with its credentials (needed when accounts are on)
    and the refusals every request may get: a foreign Host, a cross-site change, no credentials."""
    document["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "A session or an agent token."},
        "session": {"type": "apiKey", "in": "cookie", "name": "catmqtt_session"},
    }
    # Without accounts, no credentials are needed.
    document["security"] = [{}, {"bearer": []}, {"session": []}]
    for path, operations in document["paths"].items():
        # The relays' endpoints ask for no credentials, and change nothing.
        statuses = (421,) if path.startswith("/relay/") else (401, 403, 421)
        for operation in operations.values():
            for status in statuses:
                operation["responses"].setdefault(str(status), _ref("responses", str(status)))
    return document
