"""This module holds the pieces of catmqtt's OpenAPI 3.1 documents, which `openapi`
puts together: what both the publisher's and the subscriber's document share.

`json_schema` derives a JSON Schema from a type (so that the schemas of
`DatasetMeta` and `RootInfo` follow their types in `schema`); `COMPONENTS`
holds the schemas, parameters, headers and error answers (one a status of
`ERRORS`) both documents refer to; the builders (`_operation`, `_ok`,
`_chunk`, `_info`, `_metrics`, `_document`...) make their entries. The
builders keep their leading underscore: they are `openapi`'s, not part of
catmqtt's API. No I/O, no state: each document is built anew from a deep
copy of `COMPONENTS`.
"""

from __future__ import annotations

import copy
import types
from typing import Any, Literal, NotRequired, Union, get_args, get_origin, get_type_hints

from . import __version__
from .schema import DatasetMeta, RootInfo
from .wire import DIGEST, ETAG, NPY, OCTETS, PARTS

OPENAPI = "3.1.0"
JSON = "application/json"
HTML = "text/html"
PROMETHEUS = "text/plain"

_STRING = {"type": "string"}
_STRINGS = {"type": "array", "items": _STRING}
_COUNTERS = {"type": "object", "additionalProperties": {"type": "integer"}}
_JSON_TYPES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
    type(None): "null",
}


def json_schema(hint: Any) -> dict[str, Any]:
    """Return the JSON Schema of a type hint: builtins, ``Literal``, unions, ``list[X]``,
    ``dict[str, X]``, ``Any`` and typed dictionaries."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return {}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        return {"anyOf": [json_schema(arg) for arg in args]}
    if origin is list:
        return {"type": "array", "items": json_schema(args[0])}
    if origin is dict:
        values = json_schema(args[1])
        return {"type": "object", **({"additionalProperties": values} if values else {})}
    if isinstance(hint, type) and issubclass(hint, dict) and hasattr(hint, "__required_keys__"):
        return _typed_dict(hint)
    return {"type": _JSON_TYPES[hint]}


def _typed_dict(cls: type) -> dict[str, Any]:
    """Return the schema of a TypedDict: its fields, those not marked NotRequired required.
    Other fields are allowed: metadata is served as announced, fields catmqtt does not know included."""
    # Read from the hints: under `from __future__ import annotations`, __required_keys__
    # misses NotRequired (before Python 3.12).
    hints = get_type_hints(cls, include_extras=True)
    optional = {name for name, hint in hints.items() if get_origin(hint) is NotRequired}
    return {
        "type": "object",
        "properties": {
            name: json_schema(get_args(hint)[0] if name in optional else hint) for name, hint in hints.items()
        },
        "required": [name for name in hints if name not in optional],
    }


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _content(schema: dict[str, Any] | None, *media_types: str) -> dict[str, Any]:
    """Return `media_types` (JSON if none) of `schema`; bytes (None) have no schema."""
    media = {} if schema is None else {"schema": schema}
    return {media_type: dict(media) for media_type in media_types or (JSON,)}


def _header(description: str, *, required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": _STRING}


def _parameter(name: str, where: str, description: str, schema: dict | None = None, **more: Any) -> dict:
    """Return a parameter (a string unless `schema` says otherwise); path parameters are required."""
    required = {"required": True} if where == "path" else {}
    return {
        "name": name,
        "in": where,
        "description": description,
        "schema": schema or _STRING,
        **required,
        **more,
    }


# The error answers, by status: what each means. Every body is an `Error`
# whose "status" is the answer's.
ERRORS = {
    400: "Bad input: a malformed path, slice, index, chunk number or list; out of range.",
    404: "No such root, dataset or directory.",
    409: (
        "The root is known but this subscriber does not follow it (POST /api/subscribe/{name});"
        " of POST /api/forget/{name}, the root has pins (POST /api/unpin first)."
    ),
    412: 'The dataset changed since the etag the request gave; the body names it ("changed").',
    413: "The request asks for more than the server builds for one request: ask in parts.",
    416: "A byte range that this resource cannot answer.",
    401: (
        "Accounts are on and the request has no valid credentials: log in (POST /auth/login) and"
        " send the token (Authorization: Bearer) or the session cookie."
    ),
    403: (
        "The user may not: a reader's change (subscribing, unsubscribing), a root not shared with"
        " the user, or a change sent by a page of another site."
    ),
    421: "The subscriber does not answer for this Host (subscriber.allowed_hosts).",
    429: (
        "Too many failed logins from the client's address, of this user name or of any"
        " (subscriber.login_attempts, login_attempts_per_address, login_window): the password"
        " was not checked; try again after Retry-After seconds."
    ),
    502: "The dataset's publisher answered with an error, or with bytes that are not what it announced.",
    503: (
        "The server is busy with large answers or logins (with Retry-After), a publisher cannot be reached,"
        ' or the dataset changed while being read (the body names it, "changed"): try again.'
    ),
    504: "The dataset's publisher did not answer in time.",
    507: (
        "The disk of the server's state directory is full (the message names the directory);"
        " of POST /api/pin, what would be pinned is over the cache's budget."
    ),
}

COMPONENTS: dict[str, Any] = {
    "schemas": {
        "Error": {
            "type": "object",
            "description": "Every error: what went wrong, and the HTTP status again.",
            "properties": {
                "error": _STRING,
                "status": {"type": "integer"},
                "changed": {"type": "string", "description": "ROOT/PATH of a dataset that changed"},
            },
            "required": ["error", "status"],
        },
        "DatasetMeta": {
            **json_schema(DatasetMeta),
            "description": "A dataset's metadata, as announced on MQTT.",
        },
        "DatasetDescription": {
            "description": "A dataset's metadata, with what python-blosc2's C2Array reads (Caterva2's).",
            "allOf": [_ref("schemas", "DatasetMeta")],
            "properties": {
                "mtime": {"type": "string", "description": "the etag"},
                "accept_ranges": {"const": "none"},
                "schunk": {"type": "object"},
            },
            "required": ["mtime", "accept_ranges", "schunk"],
        },
        "RootInfo": {**json_schema(RootInfo), "description": "A root's announcement."},
        "RootDescription": {
            "description": "A root's announcement, and how this subscriber sees it.",
            "allOf": [_ref("schemas", "RootInfo")],
            "properties": {"online": {"type": "boolean"}, "subscribed": {"type": "boolean"}},
            "required": ["online", "subscribed"],
        },
        "Root": {
            "type": "object",
            "properties": {
                "name": _STRING,
                "url": _STRING,
                "online": {"type": "boolean"},
                "subscribed": {"type": "boolean"},
                "key": {"type": ["string", "null"], "description": "the key its announcements are signed by"},
            },
            "required": ["name", "url", "online", "subscribed", "key"],
        },
        "Manifest": {
            "type": "object",
            "properties": {"path": _STRING, "etag": _STRING, "digests": _STRINGS},
            "required": ["path", "etag", "digests"],
        },
        "Node": {
            "type": "object",
            "description": (
                "A node's status as the subscriber believes it: a publisher that a known root names by"
                " the status its root's key signed, another node by its unsigned status, else its latest."
            ),
            "properties": {
                "role": {"enum": ["broker", "publisher", "subscriber"]},
                "id": _STRING,
                "status": {"enum": ["online", "offline", "lost"]},
                "url": {
                    "type": ["string", "null"],
                    "description": "where it serves (its last online status)",
                },
                "key": {"type": ["string", "null"], "description": "the key that signed the status"},
                "session": {"type": ["integer", "null"]},
                "time": {"type": ["number", "null"], "description": "when the node says it sent the status"},
                "version": _STRING,
                "summary": {"type": "object", "description": "a subscriber's cache figures"},
                "roots": {**_STRINGS, "description": "a publisher's roots that name it"},
            },
            "required": ["role", "id", "status", "url", "key", "session", "time"],
        },
        "Login": {
            "type": "object",
            "description": "A login, as JSON or as form fields.",
            "properties": {"username": _STRING, "password": _STRING},
            "required": ["username", "password"],
        },
        "Session": {
            "type": "object",
            "description": "A session: its bearer token, and when it expires (seconds since the epoch).",
            "properties": {"token": _STRING, "expires": {"type": "number"}},
            "required": ["token", "expires"],
        },
        "Selection": {
            "type": "object",
            "description": "The selection of POST /api/fetch: the query arguments of GET, as JSON.",
            "properties": {
                "slice_": _STRING,
                "slice": _STRING,
                "indices": _STRING,
            },
        },
    },
    "parameters": {
        "path": _parameter("path", "path", "A dataset's path in the root.", example="ds-1d.b2nd"),
        "fullpath": _parameter(
            "fullpath",
            "path",
            "A dataset's path, its root first: ROOT/PATH.",
            example="foo/ds-1d.b2nd",
        ),
        "name": _parameter("name", "path", "A root's name.", example="foo"),
        "directory": _parameter("directory", "path", "A directory in the root.", example="dir1"),
        "filename": _parameter("filename", "path", "A file of the web page.", example="app.js"),
        "cached": _parameter(
            "cached",
            "query",
            "true: only the datasets whole in the cache, the others named in the catalog's missing"
            " table; false (the default): the subscriber fetches what it lacks.",
            {"enum": ["true", "false", "1", "0"]},
            example="true",
        ),
        "nchunk": _parameter(
            "nchunk",
            "query",
            "The chunk's number.",
            {"type": "integer", "minimum": 0},
            required=True,
            example=0,
        ),
        "blocks": _parameter(
            "blocks",
            "query",
            "Send first what decoding blocks A to B needs (A-B or A): the chunk's header, block"
            " offsets and those blocks, one after the other, as X-Catmqtt-Parts says.",
            {"type": "string", "pattern": "^[0-9]+(-[0-9]+)?$"},
            example="0-1",
        ),
        "nchunks": _parameter(
            "nchunks",
            "query",
            "The chunks to send: numbers and runs, like 0-15,20.",
            {"type": "string", "pattern": "^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$"},
            required=True,
            example="0-2",
        ),
        "etag": _parameter(
            "etag", "query", "The dataset's version the request relies on (412 if not current)."
        ),
        "slice": _parameter(
            "slice",
            "query",
            "A numpy basic-indexing selection: integers, start:stop:step, ..., one per axis, by commas.",
            example="0:10",
        ),
        "slice_": _parameter("slice_", "query", "Caterva2's name for slice."),
        "indices": _parameter(
            "indices",
            "query",
            "numpy advanced indexing: a JSON list, one entry per axis (an integer, null, a"
            ' "start:stop:step" string, or nested lists of coordinates). Not with slice.',
        ),
        "Accept": _parameter(
            "Accept",
            "header",
            "application/x-npy for .npy; a Blosc2 frame otherwise. (OpenAPI tools may ignore an Accept"
            " parameter: the answer's media types say the same.)",
            example=NPY,
        ),
        "Range": _parameter(
            "Range", "header", "One byte range of a chunk (206); refused (416) by /api/fetch."
        ),
        "If-Range": _parameter("If-Range", "header", "With it, a Range is ignored and the whole chunk sent."),
        "If-None-Match": _parameter(
            "If-None-Match", "header", "The ETag a client holds: 304 if still current."
        ),
    },
    "headers": {
        "ETag": _header("The dataset's version (of a dataset's metadata, not of a root's)."),
        ETAG: _header("The etag of the dataset's version the chunk belongs to.", required=True),
        DIGEST: _header("The chunk's digest (XXH3-128, hex).", required=True),
        PARTS: _header("For blocks=A-B: the bytes of the chunk sent, like 0-159,4000-9999/3529755."),
        "Content-Range": _header("The bytes sent, of the whole.", required=True),
        "Retry-After": _header(
            "Seconds to wait before asking again, when the server is busy or refuses logins for a while."
        ),
    },
    "responses": {
        str(status): {
            "description": description,
            "content": _content(
                {"allOf": [_ref("schemas", "Error")], "properties": {"status": {"const": status}}}
            ),
            **({"headers": {"Retry-After": _ref("headers", "Retry-After")}} if status in (429, 503) else {}),
        }
        for status, description in ERRORS.items()
    },
}


def _operation(
    summary: str,
    ok: dict[str, Any],
    errors: tuple[int, ...] = (),
    *,
    parameters: tuple[str, ...] = (),
    body: dict[str, Any] | None = None,
    more: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return an operation answering `ok` (200), or `more` (other statuses), or `errors`,
    which take `parameters` (names in `COMPONENTS`) and the request `body`."""
    operation: dict[str, Any] = {"summary": summary}
    if parameters:
        operation["parameters"] = [_ref("parameters", name) for name in parameters]
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = {
        "200": ok,
        **(more or {}),
        **{str(status): _ref("responses", str(status)) for status in errors},
    }
    return operation


def _ok(
    description: str, schema: dict[str, Any] | None, *media_types: str, headers: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Return an answer of `schema` in `media_types`, with `headers` (names in `COMPONENTS`)."""
    answer: dict[str, Any] = {"description": description, "content": _content(schema, *media_types)}
    if headers:
        answer["headers"] = {name: _ref("headers", name) for name in headers}
    return answer


def _chunk(summary: str, errors: tuple[int, ...], parameters: tuple[str, ...]) -> dict[str, Any]:
    """The chunk endpoint both APIs serve: a chunk's compressed bytes, or a byte range of them."""
    ok = _ok("The chunk's compressed bytes, exactly as stored.", None, OCTETS, headers=(ETAG, DIGEST, PARTS))
    partial = _ok(
        "The bytes of the chunk that Range asks for.", None, OCTETS, headers=(ETAG, DIGEST, "Content-Range")
    )
    return _operation(
        summary, ok, (*errors, 416), parameters=(*parameters, "Range", "If-Range"), more={"206": partial}
    )


def _info(summary: str, schema: dict[str, Any], errors: tuple[int, ...], path: str) -> dict[str, Any]:
    return _operation(
        summary,
        _ok("The metadata.", schema, headers=("ETag",)),
        errors,
        parameters=(path, "If-None-Match"),
        more={"304": {"description": "The metadata has not changed since the ETag given."}},
    )


def _openapi() -> dict[str, Any]:
    return _operation("This document.", _ok("OpenAPI 3.1.", {"type": "object"}))


def _metrics(what: str) -> dict[str, Any]:
    """The ``/metrics`` of a node: Prometheus's text format, `what` it holds."""
    return _operation(
        "Metrics for Prometheus.",
        _ok(f"Prometheus's text format (made by prometheus_client): {what}", _STRING, PROMETHEUS),
    )


def _document(title: str, description: str, paths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "openapi": OPENAPI,
        "info": {"title": title, "version": __version__, "description": description},
        "paths": paths,
        "components": copy.deepcopy(COMPONENTS),
    }
