"""Tables of good and bad payloads for catmqtt.schema."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import numpy as np
import pytest

from catmqtt.dtypes import dtype_from_json, dtype_to_json
from catmqtt.errors import BadRequest
from catmqtt.schema import (
    MAX_PAYLOAD,
    MAX_STATUS_PAYLOAD,
    SCHEMA,
    dumps,
    loads,
    parse_dataset,
    parse_node,
    parse_root,
)

DELETE = object()


def changed(obj: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Return a deep copy of `obj` with `fields` set, or removed when DELETE."""
    out = copy.deepcopy(obj)
    for key, value in fields.items():
        if value is DELETE:
            out.pop(key, None)
        else:
            out[key] = value
    return out


ROOT = {
    "name": "r",
    "url": "http://127.0.0.1:8001",
    "publisher": "pub1",
    "datasets": 3,
    "etag": "e1",
}

NDARRAY = {
    "path": "dir/a.b2nd",
    "kind": "ndarray",
    "shape": [10, 7],
    "chunks": [4, 7],
    "blocks": [2, 7],
    "dtype": "float64",
    "nchunks": 3,
    "typesize": 8,
    "chunksize": 224,
    "nbytes": 672,
    "cparams": {"codec": "ZSTD", "clevel": 5},
    "vlmeta": {"note": "x"},
    "etag": "e2",
}

SCHUNK = {
    "path": "s.b2frame",
    "kind": "schunk",
    "shape": [100],
    "chunks": [30],
    "nchunks": 4,
    "typesize": 1,
    "chunksize": 30,
    "nbytes": 100,
    "cparams": {},
    "vlmeta": {},
    "etag": "e3",
}

FILE = {
    "path": "docs/README.md",
    "kind": "file",
    "shape": [5000],
    "chunks": [4096],
    "nchunks": 2,
    "typesize": 1,
    "chunksize": 4096,
    "nbytes": 5000,
    "cparams": {},
    "vlmeta": {},
    "etag": "e4",
}

# Items of 8 bytes in a block of Blosc2's largest size.
BIG_BLOCK = 536866816 // 8

NODE = {"status": "online", "url": "https://example.org:8443/"}


# dumps / loads


@pytest.mark.parametrize(
    "obj",
    [{}, {"a": 1}, {"name": "é", "list": [1, 2.5, None, True], "nested": {"x": {"y": []}}}, ROOT, NDARRAY],
)
def test_dumps_loads_round_trip(obj: dict[str, Any]) -> None:
    payload = dumps(obj)
    assert isinstance(payload, bytes)
    assert json.loads(payload)["schema"] == SCHEMA
    assert b", " not in payload and b": " not in payload  # compact
    assert loads(payload) == {"schema": SCHEMA, **obj}


def test_dumps_does_not_change_its_argument() -> None:
    obj = {"a": 1}
    dumps(obj)
    assert obj == {"a": 1}


def test_loads_empty_is_none() -> None:
    assert loads(b"") is None


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"not json", "payload is not JSON: "),
        (b"{", "payload is not JSON"),
        (b" ", "payload is not JSON"),
        (b'{"schema": 1, "a": "\xff"}', "payload is not JSON"),
        (b"\xff\xfe\xfd", "payload is not JSON"),
        (b"[1, 2]", "payload is not a JSON object"),
        (b"null", "payload is not a JSON object"),
        (b"1", "payload is not a JSON object"),
        (b'"schema"', "payload is not a JSON object"),
        (b"{}", "payload has schema None, expected 1"),
        (b'{"name": "r"}', "payload has schema None, expected 1"),
        (b'{"schema": 2}', "payload has schema 2, expected 1"),
        (b'{"schema": "1"}', "payload has schema '1', expected 1"),
        (b'{"schema": null}', "payload has schema None, expected 1"),
        (b'{"schema": 1, "n": 1' + b"0" * 20 + b"}", "payload has an integer of more than 20 digits"),
        (b'{"schema": 1, "n": -1' + b"0" * 5000 + b"}", "payload has an integer of more than 20 digits"),
        (
            b" " * (MAX_PAYLOAD + 1),
            f"payload of {MAX_PAYLOAD + 1} bytes is over the {MAX_PAYLOAD} byte limit",
        ),
    ],
)
def test_loads_bad(payload: bytes, match: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(match)):
        loads(payload)


def test_loads_keeps_floats_beyond_json() -> None:
    # HDF5 attributes in vlmeta may be NaN (a fill value): json.dumps writes them so.
    obj = loads(b'{"schema": 1, "vlmeta": {"fill": NaN, "max": Infinity}, "n": -12345678901234567890}')
    assert obj["vlmeta"]["fill"] != obj["vlmeta"]["fill"] and obj["n"] == -12345678901234567890


@pytest.mark.parametrize("limit", [MAX_STATUS_PAYLOAD, 100])
def test_loads_with_a_smaller_limit(limit: int) -> None:
    body = b'{"schema":1,"pad":""}'
    assert loads(body + b" " * (limit - len(body)), limit) == {"schema": 1, "pad": ""}
    with pytest.raises(BadRequest, match=f"payload of {limit + 1} bytes is over the {limit} byte limit"):
        loads(body + b" " * (limit + 1 - len(body)), limit)


def test_loads_at_the_size_limit() -> None:
    body = b'{"schema":1,"pad":""}'
    payload = body + b" " * (MAX_PAYLOAD - len(body))
    assert len(payload) == MAX_PAYLOAD
    assert loads(payload) == {"schema": 1, "pad": ""}


def test_loads_deeply_nested() -> None:
    with pytest.raises(BadRequest, match="payload is not JSON"):
        loads(b'{"schema": 1, "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


@pytest.mark.parametrize("schema", [b"true", b"1.0"])
def test_loads_schema_must_be_the_integer_1(schema: bytes) -> None:
    with pytest.raises(BadRequest, match="payload has schema"):
        loads(b'{"schema": ' + schema + b"}")


# parse_root


def test_parse_root_good() -> None:
    assert parse_root(copy.deepcopy(ROOT), "r") == ROOT
    assert parse_root(changed(ROOT, url="https://h/x", datasets=0), "r")["datasets"] == 0
    skipped = [{"path": "/x", "reason": "opaque data"}]
    groups = {"": {"title": "t"}, "g": {}}
    assert parse_root(changed(ROOT, skipped=skipped, groups=groups), "r")["skipped"] == skipped


ROOT_WHAT = re.escape("announcement of root 'r': ")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"name": DELETE}, "field 'name' is missing or not str"),
        ({"name": "other"}, "its name is 'other'"),
        ({"name": 3}, "field 'name' is missing or not str"),
        ({"url": DELETE}, "field 'url' is missing or not str"),
        ({"url": 8001}, "field 'url' is missing or not str"),
        ({"url": "ftp://h"}, "field 'url' is not an http(s) URL"),
        ({"url": "127.0.0.1:8001"}, "field 'url' is not an http(s) URL"),
        ({"url": "http://h/" + "x" * 2048}, "field 'url' is not an http(s) URL"),
        ({"publisher": DELETE}, "field 'publisher' is missing or not str"),
        ({"datasets": DELETE}, "field 'datasets' is missing or not int"),
        ({"datasets": -1}, "field 'datasets' is negative"),
        ({"datasets": True}, "field 'datasets' is missing or not int"),
        ({"datasets": 1.0}, "field 'datasets' is missing or not int"),
        ({"datasets": "3"}, "field 'datasets' is missing or not int"),
        ({"etag": DELETE}, "field 'etag' is missing or not str"),
        ({"etag": 1}, "field 'etag' is missing or not str"),
        ({"skipped": {"path": "/x"}}, "'skipped' must be a list of objects with a path and a reason"),
        ({"skipped": [{"path": "/x"}]}, "'skipped' must be a list of objects with a path and a reason"),
        ({"skipped": [{"path": 1, "reason": "r"}]}, "'skipped' must be a list"),
        ({"skipped": ["/x"]}, "'skipped' must be a list"),
        ({"groups": []}, "'groups' must map directories to their attributes"),
        ({"groups": {"g": "attrs"}}, "'groups' must map directories to their attributes"),
    ],
)
def test_parse_root_bad(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(BadRequest, match=ROOT_WHAT + re.escape(match)):
        parse_root(changed(ROOT, **fields), "r")


def test_parse_root_bad_publisher() -> None:
    with pytest.raises(BadRequest, match="invalid node id 'bad id'"):
        parse_root(changed(ROOT, publisher="bad id"), "r")


def test_parse_root_bad_name() -> None:
    with pytest.raises(BadRequest, match="invalid root name '.r'"):
        parse_root(changed(ROOT, name=".r"), ".r")


@pytest.mark.parametrize(
    "url",
    [
        "http://",
        "https:///path",
        "http://:8001",
    ],
)
def test_url_fields_need_a_host(url: str) -> None:
    with pytest.raises(BadRequest, match="is not an http"):
        parse_root(changed(ROOT, url=url), "r")


@pytest.mark.parametrize(
    "url",
    [
        "http://h",
        "https://cache.example.org:8443/sub/",
        "http://[::1]:8002",
        "http://h/a%20b/%E2%9C%93?q=1&r=%0A#frag",
        "http://xn--bcher-kva.example",
        "http://h/" + "x" * (2048 - len("http://h/")),
    ],
)
def test_good_urls(url: str) -> None:
    assert parse_root(changed(ROOT, url=url), "r")["url"] == url
    assert parse_node({"status": "online", "url": url}, "subscriber", "s1")["url"] == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://a b\nc",
        "http://a b",
        "http://h/a b",
        "http://h/\n",
        "http://h\r\n/x",
        "http://h/\tx",
        "http://h/\x00",
        "http://h/\x7f",
        "http://h/\x1b[31m",
        " http://h",
        "http://h ",
        "http://bücher.example",
        "http://h/✓",
        "http://h/\u2028",
        "http://h/\u00a0",
    ],
)
def test_urls_with_whitespace_controls_or_non_ascii_are_refused(url: str) -> None:
    match = "field 'url' has whitespace, control characters or non-ASCII: percent-encode them"
    with pytest.raises(BadRequest, match=match):
        parse_root(changed(ROOT, url=url), "r")
    with pytest.raises(BadRequest, match=re.escape("status of subscriber 's1': ") + match):
        parse_node({"status": "online", "url": url}, "subscriber", "s1")


# parse_dataset


@pytest.mark.parametrize(
    "meta",
    [
        NDARRAY,
        SCHUNK,
        FILE,
        changed(NDARRAY, path="scalar", shape=[], chunks=[], blocks=[], nchunks=1, chunksize=8, nbytes=8),
        changed(
            NDARRAY,
            path="empty",
            shape=[0, 5],
            chunks=[0, 5],
            blocks=[0, 5],
            nchunks=0,
            chunksize=0,
            nbytes=0,
        ),
        changed(
            NDARRAY,
            path="empty2",
            shape=[3, 0],
            chunks=[2, 4],
            blocks=[1, 2],
            nchunks=0,
            chunksize=64,
            nbytes=0,
        ),
        changed(
            NDARRAY,
            path="big-chunks",
            shape=[3, 4],
            chunks=[8, 8],
            blocks=[8, 8],
            nchunks=1,
            chunksize=512,
            nbytes=512,
        ),
        changed(NDARRAY, dtype=[["a", "<i4"], ["b", "<f8", [2]]], typesize=20, chunksize=560, nbytes=1680),
        changed(NDARRAY, shape=[1] * 16, chunks=[1] * 16, blocks=[1] * 16, nchunks=1, chunksize=8, nbytes=8),
        changed(FILE, path="empty.txt", shape=[0], chunks=[0], nchunks=0, nbytes=0, chunksize=0),
        changed(SCHUNK, path="exact", shape=[90], chunks=[30], nchunks=3, nbytes=90),
        changed(FILE, path="é/日本 x+#.txt"),
        changed(NDARRAY, manifest="0123456789abcdef0123456789abcdef"),
    ],
)
def test_parse_dataset_good(meta: dict[str, Any]) -> None:
    assert parse_dataset(copy.deepcopy(meta), meta["path"]) == meta


ND_WHAT = re.escape("metadata of 'dir/a.b2nd': ")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"path": DELETE}, "field 'path' is missing or not str"),
        ({"path": 3}, "field 'path' is missing or not str"),
        ({"path": "other.b2nd"}, "its path is 'other.b2nd'"),
        ({"kind": DELETE}, "field 'kind' is missing or not str"),
        ({"kind": "table"}, "kind 'table' is not one of ndarray, schunk, file"),
        ({"kind": "NDArray"}, "kind 'NDArray' is not one of"),
        ({"shape": DELETE}, "field 'shape' is missing or not list"),
        ({"shape": "10,7"}, "field 'shape' is missing or not list"),
        ({"shape": (10, 7)}, "field 'shape' is missing or not list"),
        ({"shape": [10, -7]}, "field 'shape' is not a list of integers >= 0"),
        ({"shape": [10, True]}, "field 'shape' is not a list of integers >= 0"),
        ({"shape": [10.0, 7]}, "field 'shape' is not a list of integers >= 0"),
        ({"shape": [10, "7"]}, "field 'shape' is not a list of integers >= 0"),
        ({"shape": [1] * 17}, "field 'shape' is not a list of integers >= 0"),
        ({"blocks": [0, 7]}, "blocks of 0 along an axis whose chunks are not empty"),
        ({"nchunks": 1 << 33}, "8589934592 chunks is more than 4294967296"),
        ({"etag": 'a"b'}, "etag 'a\"b' is not 1 to 128"),
        ({"etag": "x" * 129}, "etag '" + "x" * 100 + "' is not 1 to 128"),
        ({"etag": "a\nb"}, "etag 'a\\nb' is not 1 to 128"),
        ({"chunks": DELETE}, "field 'chunks' is missing or not list"),
        ({"chunks": [4, -1]}, "field 'chunks' is not a list of integers >= 0"),
        ({"chunks": [0, 7]}, "chunks of 0 along an axis that is not empty"),
        ({"chunks": [4]}, "shape, chunks and blocks differ in length"),
        ({"chunks": [4, 7, 1]}, "shape, chunks and blocks differ in length"),
        ({"blocks": DELETE}, "field 'blocks' is missing or not list"),
        ({"blocks": [2]}, "shape, chunks and blocks differ in length"),
        ({"blocks": [2, False]}, "field 'blocks' is not a list of integers >= 0"),
        ({"shape": [10], "chunks": [4], "nchunks": 3}, "shape, chunks and blocks differ in length"),
        ({"dtype": DELETE}, "field 'dtype' is missing or not str or list"),
        ({"dtype": 8}, "field 'dtype' is missing or not str or list"),
        ({"dtype": {"f": "i4"}}, "field 'dtype' is missing or not str or list"),
        ({"nchunks": DELETE}, "field 'nchunks' is missing or not int"),
        ({"nchunks": 4}, "nchunks 4 does not match shape and chunks"),
        ({"nchunks": 2}, "nchunks 2 does not match shape and chunks"),
        ({"nchunks": 0}, "nchunks 0 does not match shape and chunks"),
        ({"nchunks": -1}, "field 'nchunks' is negative"),
        ({"nchunks": True}, "field 'nchunks' is missing or not int"),
        ({"nchunks": "3"}, "field 'nchunks' is missing or not int"),
        ({"nchunks": 3.0}, "field 'nchunks' is missing or not int"),
        ({"typesize": DELETE}, "field 'typesize' is missing or not int"),
        ({"typesize": 0}, "typesize is 0"),
        ({"typesize": True}, "field 'typesize' is missing or not int"),
        ({"typesize": -8}, "field 'typesize' is negative"),
        ({"chunksize": DELETE}, "field 'chunksize' is missing or not int"),
        ({"chunksize": -1}, "field 'chunksize' is negative"),
        ({"nbytes": 1.5}, "field 'nbytes' is missing or not int"),
        ({"nbytes": None}, "field 'nbytes' is missing or not int"),
        ({"cparams": DELETE}, "field 'cparams' is missing or not dict"),
        ({"cparams": []}, "field 'cparams' is missing or not dict"),
        ({"vlmeta": None}, "field 'vlmeta' is missing or not dict"),
        ({"vlmeta": "x"}, "field 'vlmeta' is missing or not dict"),
        ({"etag": DELETE}, "field 'etag' is missing or not str"),
        ({"etag": 1}, "field 'etag' is missing or not str"),
        ({"manifest": ["0" * 32]}, "field 'manifest' is missing or not str"),
        ({"manifest": {"digest": "0" * 32}}, "field 'manifest' is missing or not str"),
        ({"manifest": None}, "field 'manifest' is missing or not str"),
        ({"manifest": 7}, "field 'manifest' is missing or not str"),
        ({"manifest": ""}, "manifest '' is not a digest (32 of 0-9 a-f)"),
        ({"manifest": "A" * 32}, "manifest '" + "A" * 32 + "' is not a digest"),
        ({"manifest": "x" * 1000}, "manifest '" + "x" * 100 + "' is not a digest"),
    ],
)
def test_parse_dataset_bad_ndarray(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(BadRequest, match=ND_WHAT + re.escape(match)):
        parse_dataset(changed(NDARRAY, **fields), NDARRAY["path"])


@pytest.mark.parametrize(
    ("base", "fields", "match"),
    [
        (SCHUNK, {"shape": [10, 10], "chunks": [5, 5], "nchunks": 4}, "a schunk has a 1-D shape and chunks"),
        (SCHUNK, {"shape": [], "chunks": [], "nchunks": 1}, "a schunk has a 1-D shape and chunks"),
        (SCHUNK, {"chunks": [30, 1]}, "a schunk has a 1-D shape and chunks"),
        (SCHUNK, {"chunks": [0]}, "chunks of 0 along an axis that is not empty"),
        (SCHUNK, {"nchunks": 3}, "nchunks 3 does not match shape and chunks"),
        (FILE, {"chunks": []}, "a file has a 1-D shape and chunks"),
        (FILE, {"shape": [5], "chunks": [0], "nchunks": 0}, "chunks of 0 along an axis that is not empty"),
        (FILE, {"shape": [0], "chunks": [0], "nchunks": 1}, "nchunks 1 does not match shape and chunks"),
        (FILE, {"path": "docs/README.txt"}, "its path is 'docs/README.txt'"),
        (FILE, {"kind": "File"}, "kind 'File' is not one of"),
    ],
)
def test_parse_dataset_bad_other_kinds(base: dict[str, Any], fields: dict[str, Any], match: str) -> None:
    what = re.escape(f"metadata of {base['path']!r}: ")
    with pytest.raises(BadRequest, match=what + re.escape(match)):
        parse_dataset(changed(base, **fields), base["path"])


@pytest.mark.parametrize("path", ["", "/abs", "a/../b", "a//b"])
def test_parse_dataset_bad_path(path: str) -> None:
    with pytest.raises(BadRequest, match="invalid dataset path"):
        parse_dataset(changed(NDARRAY, path=path), path)


def test_parse_dataset_empty_axis_nchunks() -> None:
    meta = changed(NDARRAY, shape=[0, 5], chunks=[0, 5], blocks=[0, 5], nchunks=1)
    with pytest.raises(BadRequest, match="nchunks 1 does not match shape and chunks"):
        parse_dataset(meta, meta["path"])


# Sizes: a chunk is decoded into a buffer sized by them.


@pytest.mark.parametrize(
    "meta",
    [
        # Blocks that do not divide the chunks: each chunk is padded to whole blocks (6 by 9).
        changed(NDARRAY, chunks=[5, 7], blocks=[2, 3], nchunks=2, chunksize=432, nbytes=864),
        # Chunks and blocks as large as Blosc2 makes them.
        changed(
            NDARRAY,
            shape=[8 * BIG_BLOCK],
            chunks=[4 * BIG_BLOCK],
            blocks=[BIG_BLOCK],
            nchunks=2,
            chunksize=32 * BIG_BLOCK,
            nbytes=64 * BIG_BLOCK,
        ),
        # An empty file as the publisher describes it.
        changed(FILE, path="empty.txt", shape=[0], chunks=[1 << 20], nchunks=0, nbytes=0, chunksize=1 << 20),
        # Items of 8 bytes in chunks of 100 bytes: Blosc2 allows it.
        changed(SCHUNK, shape=[31], chunks=[12], nchunks=3, typesize=8, chunksize=100, nbytes=250),
    ],
)
def test_parse_dataset_sizes_good(meta: dict[str, Any]) -> None:
    assert parse_dataset(copy.deepcopy(meta), meta["path"]) == meta


@pytest.mark.parametrize(
    ("base", "fields", "match"),
    [
        (NDARRAY, {"blocks": [5, 7]}, "blocks [5, 7] are larger than chunks [4, 7]"),
        (NDARRAY, {"blocks": [2, 8]}, "blocks [2, 8] are larger than chunks [4, 7]"),
        (
            NDARRAY,
            {"chunksize": 1234},
            "chunksize 1234 is not 224, the bytes of chunks [4, 7] in blocks [2, 7]",
        ),
        (NDARRAY, {"chunksize": 0}, "chunksize 0 is not 224"),
        (
            NDARRAY,
            {"blocks": [3, 7]},
            "chunksize 224 is not 336, the bytes of chunks [4, 7] in blocks [3, 7]",
        ),
        (NDARRAY, {"typesize": 4}, "chunksize 224 is not 112"),
        (NDARRAY, {"nbytes": 560}, "nbytes 560 is not nchunks 3 times chunksize 224"),
        (NDARRAY, {"nbytes": 0}, "nbytes 0 is not nchunks 3 times chunksize 224"),
        (
            NDARRAY,
            {"shape": [1 << 62, 4], "chunks": [1 << 62, 1], "blocks": [1, 1], "nchunks": 4},
            f"shape {[1 << 62, 4]} has more than {(1 << 63) - 1} items",
        ),
        (
            NDARRAY,
            {"shape": [1 << 28], "chunks": [1 << 28], "blocks": [1], "nchunks": 1},
            f"chunks of {1 << 31} bytes, more than Blosc2's {(1 << 31) - 33}",
        ),
        (
            NDARRAY,
            {"shape": [1 << 26], "chunks": [1 << 26], "blocks": [1 << 26], "nchunks": 1},
            f"blocks of {1 << 29} bytes, more than Blosc2's 536866816",
        ),
        (NDARRAY, {"cbytes": -1}, "field 'cbytes' is negative"),
        (NDARRAY, {"cbytes": "12"}, "field 'cbytes' is missing or not int"),
        (SCHUNK, {"nbytes": 90}, "shape [100] and chunks [30] are not nbytes 90 and chunksize 30"),
        (SCHUNK, {"chunksize": 40}, "shape [100] and chunks [30] are not nbytes 100 and chunksize 40"),
        (
            SCHUNK,
            {"typesize": 2},
            "shape [100] and chunks [30] are not nbytes 100 and chunksize 30 in items of 2",
        ),
        (
            SCHUNK,
            {"shape": [31], "chunks": [12], "nchunks": 3, "typesize": 8, "chunksize": 100, "nbytes": 350},
            "shape [31] and chunks [12] are not nbytes 350",
        ),
        (
            SCHUNK,
            {"shape": [25], "chunks": [12], "nchunks": 3, "typesize": 8, "chunksize": 100, "nbytes": 200},
            "nchunks 3 does not match nbytes 200 and chunksize 100",
        ),
        (
            SCHUNK,
            {"shape": [0], "chunks": [0], "nchunks": 0, "typesize": 8, "chunksize": 0, "nbytes": 5},
            "nchunks 0 does not match nbytes 5 and chunksize 0",
        ),
        (
            FILE,
            {"shape": [1 << 31], "chunks": [1 << 31], "nchunks": 1, "chunksize": 1 << 31, "nbytes": 1 << 31},
            f"chunksize {1 << 31} or typesize 1 is beyond Blosc2's limits",
        ),
    ],
)
def test_parse_dataset_sizes_bad(base: dict[str, Any], fields: dict[str, Any], match: str) -> None:
    what = re.escape(f"metadata of {base['path']!r}: ")
    with pytest.raises(BadRequest, match=what + re.escape(match)):
        parse_dataset(changed(base, **fields), base["path"])


# parse_node


@pytest.mark.parametrize(
    ("status", "kept"),
    [
        (NODE, {"status": "online", "url": "https://example.org:8443"}),
        ({"status": "online", "url": "http://127.0.0.1:8002"}, None),
        ({"status": "offline"}, None),
        ({"status": "lost"}, None),
        # An offline node's URL is its last online's: a URL here is not even read.
        ({"status": "offline", "url": "not checked when offline"}, {"status": "offline"}),
        ({"status": "lost", "session": 0}, None),
        ({"status": "lost", "session": (1 << 63) - 1}, None),
        (
            {"status": "online", "url": "http://h", "session": 3, "seq": 9, "will": 8, "time": 1.5},
            None,
        ),
        ({"status": "online", "url": "http://h", "version": "1.2", "summary": {"cache_bytes": 1}}, None),
    ],
)
def test_parse_node_good(status: dict[str, Any], kept: dict[str, Any] | None) -> None:
    assert parse_node(copy.deepcopy(status), "publisher", "pub1") == (kept or status)


@pytest.mark.parametrize(
    ("extra", "kept"),
    [
        # Fields nobody reads: whatever their size, none is kept.
        ({"pad": "y" * 100_000, "role": "subscriber", "id": "x", "schema": 1, "key": "k", "sig": "s"}, {}),
        # Optional fields that are junk are left out, not refused.
        ({"time": "yesterday", "version": "v" * 65, "seq": "1"}, {}),
        ({"time": float("inf"), "seq": -1}, {}),
        ({"time": True, "seq": 1 << 63, "version": 3}, {}),
        ({"time": 7, "seq": 0, "version": "v" * 64}, {"time": 7, "seq": 0, "version": "v" * 64}),
    ],
)
def test_parse_node_keeps_only_the_fields_it_knows(extra: dict[str, Any], kept: dict[str, Any]) -> None:
    obj = {"status": "online", "url": "http://h:1", "summary": {"cache_bytes": 1, "hit_ratio": None}, **extra}
    status = parse_node(obj, "subscriber", "s1")
    assert status == {"status": "online", "url": "http://h:1", **kept, "summary": obj["summary"]}
    # A new dictionary: the parsed payload is not kept alive by it.
    assert status is not obj and status["summary"] is not obj["summary"]


@pytest.mark.parametrize(
    ("status", "match"),
    [
        ({}, "field 'status' is missing or not str"),
        ({"status": 1}, "field 'status' is missing or not str"),
        ({"status": "busy"}, "status 'busy' is not one of online, offline, lost"),
        ({"status": "Online", "url": "http://h"}, "status 'Online' is not one of"),
        ({"status": "online"}, "field 'url' is missing or not str"),
        ({"status": "online", "url": None}, "field 'url' is missing or not str"),
        ({"status": "online", "url": "ws://h:9001"}, "field 'url' is not an http(s) URL"),
        ({"status": "online", "url": "h:8002"}, "field 'url' is not an http(s) URL"),
        ({"status": "lost", "session": "1"}, "field 'session' is missing or not int"),
        ({"status": "lost", "session": 1e15}, "field 'session' is missing or not int"),
        ({"status": "lost", "session": -1}, "field 'session' is negative"),
        ({"status": "lost", "session": 1 << 63}, f"session {1 << 63} is over {(1 << 63) - 1}"),
        ({"status": "online", "url": "http://h", "will": "7"}, "field 'will' is missing or not int"),
        ({"status": "online", "url": "http://h", "will": 1 << 63}, f"will {1 << 63} is over"),
    ],
)
def test_parse_node_bad(status: dict[str, Any], match: str) -> None:
    with pytest.raises(BadRequest, match=re.escape("status of subscriber 's1': ") + re.escape(match)):
        parse_node(status, "subscriber", "s1")


RECORD = np.dtype([("a", "<i4"), ("b", "<f8", (2,)), ("c", [("x", "u1")])])


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("complex128", np.dtype("complex128")),
        ("<U5", np.dtype("<U5")),
        ("(2,)i4", np.dtype(("<i4", (2,)))),
        (json.loads(json.dumps(dtype_to_json(RECORD))), RECORD),
        # As Caterva2 (and the subscriber's /api/info) writes records.
        (str(RECORD), RECORD),
        (str(np.dtype(("<f8", (2, 3)))), np.dtype(("<f8", (2, 3)))),
    ],
)
def test_dtype_from_json_good(value: Any, want: np.dtype) -> None:
    assert dtype_from_json(value) == want


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("nonsense", "invalid dtype"),
        ("[('a', 'O')]", "object dtypes"),
        ([["a", "O"]], "object dtypes"),
        ("__import__('os').system('true')", "invalid dtype"),
        ("[('a', '<f8', (10**12,))]", "invalid dtype"),
        ("[('a', '<f8', (1000000000000000,))]", "invalid dtype"),
        ("[" * 5000 + "]" * 5000, "invalid dtype"),
        ("[('a', '<i4')]" + " " * 20000, "invalid dtype"),
        ([["a"]], "invalid dtype"),
        (7, "invalid dtype"),
    ],
)
def test_dtype_from_json_bad(value: Any, match: str) -> None:
    with pytest.raises(BadRequest, match=match) as caught:
        dtype_from_json(value)
    assert len(str(caught.value)) < 300


def test_root_announcements_stay_within_the_payload_limit(tmp_path) -> None:
    from catmqtt.publisher.roots import MAX_GROUPS_JSON, bounded, open_root

    # A directory root skipping more than an announcement can carry: 10,000 dangling links.
    (tmp_path / "root").mkdir()
    for n in range(10_000):
        (tmp_path / "root" / f"{n:05}-{'x' * 200}").symlink_to(f"{'y' * 200}-{n}")
    root = open_root("r", tmp_path / "root", tmp_path / "state")
    root.scan()
    # Groups with more attributes in all than it carries.
    groups = {f"d{n:03}": {"a": "z" * 16000} for n in range(300)}
    root.groups, more = bounded(groups, [])
    payload = dumps({**ROOT, "skipped": root.skipped, "groups": root.groups})
    assert len(payload) < MAX_PAYLOAD
    parse_root(loads(payload), "r")
    assert root.skipped[0] == {"path": f"/00000-{'x' * 200}", "reason": f"a dangling link to {'y' * 200}-0"}
    left = 10_000 - len(root.skipped) + 1
    assert root.skipped[-1] == {
        "path": "...",
        "reason": f"{left} more skipped items are left out (the publisher's log has them)",
    }
    assert 1000 < left < 9000
    assert len(json.dumps(root.groups)) <= MAX_GROUPS_JSON < len(json.dumps(groups))
    reason = "its attributes are left out of the announcement: too many in all"
    assert more == [{"path": f"/{d}", "reason": reason} for d in sorted(set(groups) - set(root.groups))]
