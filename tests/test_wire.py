"""What crosses HTTP between catmqtt nodes, encoded and decoded by catmqtt.wire: each
format read back as it was written, and what is not that format refused."""

from __future__ import annotations

import json

import pytest

from catmqtt.errors import (
    BadRequest,
    CatmqttError,
    Changed,
    InsufficientStorage,
    NotFound,
    NotSubscribed,
    TooLarge,
    Unavailable,
)
from catmqtt.wire import FRAME, error_from_json, error_json, error_trailer, read_error_trailer

ERRORS = [
    BadRequest("malformed slice 'a'"),
    NotFound("no root 'x'"),
    NotSubscribed("root 'foo' is not subscribed"),
    TooLarge("the selection is 9 bytes"),
    Unavailable("the publisher is unreachable"),
    Unavailable("no answer in time", status=504),
    InsufficientStorage("the disk is full"),
    Changed("foo/ds.b2nd"),
    Changed("foo/ds.b2nd", "foo/ds.b2nd changed (etag 2, not 1); read its metadata again", 412),
    CatmqttError("internal error (KeyError)", 500),
]


def same(a: CatmqttError, b: CatmqttError) -> bool:
    return (type(a), a.message, a.status, getattr(a, "path", None)) == (
        type(b),
        b.message,
        b.status,
        getattr(b, "path", None),
    )


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: f"{type(e).__name__}-{e.status}")
def test_errors_are_read_back_as_they_were_sent(error):
    body = json.loads(json.dumps(error_json(error)))
    assert same(error_from_json(body, error.status), error)
    # A frame's error carries its status.
    assert same(error_from_json(body), error)
    trailer = error_trailer(error)
    assert same(read_error_trailer(trailer), error)
    assert same(read_error_trailer(b"\x00" * 1000 + trailer), error)


def test_only_a_change_names_a_path():
    assert "changed" not in error_json(Unavailable("down"))
    assert error_json(Changed("foo/a"))["changed"] == "foo/a"
    # A changed dataset is unavailable to those that do not look closer.
    assert isinstance(error_from_json({"error": "x", "status": 503, "changed": "foo/a"}), Unavailable)
    # A path that is not text is not a change.
    assert type(error_from_json({"error": "x", "status": 503, "changed": 5})) is Unavailable


def test_a_long_message_is_cut():
    assert len(error_json(BadRequest("x" * 100_000))["error"]) == 4096


@pytest.mark.parametrize(
    "body", [None, [], "error", {}, {"status": 500}, {"error": "x", "status": "five"}, {"error": "x"}]
)
def test_what_is_no_error_body_is_none(body):
    assert error_from_json(body) is None


@pytest.mark.parametrize(
    "tail",
    [
        b"",
        b"\x00" * 15,
        b"\x00" * 100,
        error_trailer(CatmqttError("x", 500))[:-1],
        b'{"error": "x", "status": 500}' + FRAME.pack(-2, 29),
        b'{"error": "x", "status": 500}' + FRAME.pack(-1, 30),
        b'{"error": "x", "status": 500}' + FRAME.pack(-1, 1 << 40),
        b"[1, 2, 3]" + FRAME.pack(-1, 9),
        b'{"status": 500}' + FRAME.pack(-1, 15),
        b"not json" + FRAME.pack(-1, 8),
    ],
)
def test_a_tail_without_an_error_trailer_is_none(tail: bytes):
    assert read_error_trailer(tail) is None
