"""python-blosc2's own remote arrays (``blosc2.C2Array``) read a real catmqtt subscriber
as they read a Caterva2 server: real broker, publisher and subscriber processes."""

from __future__ import annotations

import io
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import blosc2
import httpx
import numpy as np
import pytest
import requests
from flask import Flask, Response, request

from conftest import following, running

ARRAYS = [
    "ds-1d.b2nd",
    "ds-1d-b.b2nd",
    "ds-sc-attr.b2nd",
    "dir1/ds-2d.b2nd",
    "dir1/ds-3d.b2nd",
    "dir2/ds-4d.b2nd",
    "x.b2nd",
    "y.b2nd",
]
RECORDS = ["ds-1d-fields.b2nd", "ds-2d-fields.b2nd"]


@pytest.fixture(scope="module")
def c2root(sample_root, tmp_path_factory) -> Path:
    """The sample root, plus two arrays of one shape chunked differently, for expressions."""
    root = Path(shutil.copytree(sample_root, tmp_path_factory.mktemp("c2") / "root"))
    x = np.linspace(0, 1, 300 * 200).reshape(300, 200)
    blosc2.asarray(x, urlpath=str(root / "x.b2nd"), mode="w", chunks=(50, 64), blocks=(10, 16))
    blosc2.asarray(x[::-1] * 3, urlpath=str(root / "y.b2nd"), mode="w", chunks=(120, 40), blocks=(30, 20))
    big = np.arange(2_000_000, dtype=np.float64).reshape(2000, 1000)
    blosc2.asarray(big, urlpath=str(root / "big.b2nd"), mode="w", chunks=(250, 1000))
    return root


@pytest.fixture(scope="module")
def c2(module_broker, c2root, tmp_path_factory) -> Iterator[str]:
    """The urlbase of a subscriber following the root as ``foo``, as C2Array takes it."""
    with following(module_broker, tmp_path_factory.mktemp("c2dep"), c2root) as d:
        yield f"{d.url('sub')}/"


def local(root: Path, path: str) -> blosc2.NDArray:
    return blosc2.open(str(root / path))


def whole(array: blosc2.NDArray) -> np.ndarray:
    return array[()] if array.ndim == 0 else array[...]


@pytest.mark.parametrize("path", ARRAYS + RECORDS)
def test_metadata(c2, c2root, path):
    src = local(c2root, path)
    remote = blosc2.C2Array(f"foo/{path}", urlbase=c2)
    assert (remote.shape, remote.chunks, remote.blocks) == (src.shape, src.chunks, src.blocks)
    assert remote.dtype == src.dtype
    assert remote.cparams.codec == src.schunk.cparams.codec
    assert remote.cparams.filters == src.schunk.cparams.filters
    assert remote.cparams.typesize == src.schunk.cparams.typesize
    assert remote.nbytes == src.schunk.nbytes and remote.cbytes == src.schunk.cbytes
    assert remote.blocksize == src.schunk.blocksize
    assert remote.vlmeta == {k: v for k, v in src.schunk.vlmeta.getall().items()}


@pytest.mark.parametrize("path", ARRAYS + RECORDS)
def test_whole_array(c2, c2root, path):
    want = whole(local(c2root, path))
    remote = blosc2.C2Array(f"foo/{path}", urlbase=c2.rstrip("/"))
    got = remote[()] if remote.ndim == 0 else remote[:]
    assert np.shape(got) == np.shape(want) and got.dtype == want.dtype
    assert np.array_equal(got, want)


SLICES = [
    ("ds-1d.b2nd", 1234 % 1000),
    ("ds-1d.b2nd", -1),
    ("ds-1d.b2nd", slice(95, 305)),
    ("ds-1d.b2nd", slice(-20, None)),
    ("ds-1d.b2nd", slice(500, 400)),
    ("ds-1d-b.b2nd", 7),
    ("dir1/ds-2d.b2nd", (3, 4)),
    ("dir1/ds-2d.b2nd", (slice(3, 5), slice(1, 4))),
    ("dir1/ds-2d.b2nd", (slice(None), 7)),
    ("dir1/ds-2d.b2nd", (-1, slice(2, None))),
    ("dir1/ds-2d.b2nd", 9),
    ("dir1/ds-3d.b2nd", (1, slice(1, 3), slice(None, -1))),
    ("dir1/ds-3d.b2nd", (Ellipsis, 2)),
    ("dir2/ds-4d.b2nd", (1, 2, 3)),
    ("dir2/ds-4d.b2nd", (0, Ellipsis, slice(1, 3))),
    ("x.b2nd", (slice(45, 155), slice(60, 130))),
    ("ds-1d-fields.b2nd", slice(10, 20)),
    ("ds-1d-fields.b2nd", 5),
    ("ds-2d-fields.b2nd", (slice(90, None), slice(150, 170))),
    ("ds-2d-fields.b2nd", (4, 8)),
]


@pytest.mark.parametrize(("path", "key"), SLICES)
def test_slices(c2, c2root, path, key):
    want = whole(local(c2root, path))[key]
    remote = blosc2.C2Array(f"foo/{path}", urlbase=c2)
    got = remote[key]
    # blosc2 gives a 0-d array where numpy gives a scalar; of the right dtype.
    assert np.shape(got) == np.shape(want) and got.dtype == want.dtype, key
    assert np.array_equal(got, want), key
    sliced = remote.slice(key)
    assert isinstance(sliced, blosc2.NDArray)
    assert np.array_equal(whole(sliced), want)


def test_scalar_is_a_scalar(c2):
    """numpy gives a scalar for an integer index: so does the Blosc2 frame of ?slice=."""
    url = f"{c2}api/fetch/foo/ds-1d.b2nd"
    for params in ({"slice": "234"}, {"slice_": "234"}):
        frame = requests.get(url, params=params, timeout=30)
        assert frame.status_code == 200, frame.text
        array = blosc2.ndarray_from_cframe(frame.content)
        assert array.shape == () and array[()] == 234


def test_post_fetch(c2, c2root):
    """The POST form C2Array uses for keys too long for a URL."""
    url = f"{c2}api/fetch/foo/dir1/ds-2d.b2nd"
    response = requests.post(url, json={"slice_": "2:4, 5"}, timeout=30)
    assert response.status_code == 200, response.text
    want = whole(local(c2root, "dir1/ds-2d.b2nd"))[2:4, 5]
    assert np.array_equal(blosc2.ndarray_from_cframe(response.content)[:], want)


@pytest.mark.parametrize("path", ["dir1/ds-3d.b2nd", "x.b2nd", "ds-1d-fields.b2nd"])
def test_chunk_by_chunk(c2, c2root, path):
    src = local(c2root, path)
    remote = blosc2.C2Array(f"foo/{path}", urlbase=c2)
    for n in range(src.schunk.nchunks):
        chunk = remote.get_chunk(n)
        # The publisher's bytes, as stored: never recompressed on the way.
        assert chunk == src.schunk.get_chunk(n)
        assert blosc2.decompress2(chunk) == blosc2.decompress2(src.schunk.get_chunk(n))


def test_blosc2_open(c2, c2root):
    want = whole(local(c2root, "x.b2nd"))
    remote = blosc2.open(blosc2.URLPath("foo/x.b2nd", urlbase=c2))
    assert isinstance(remote, blosc2.C2Array)
    assert np.array_equal(remote[7:9, 100:], want[7:9, 100:])
    # lazy=True reads through blosc2's chunk cache, whole chunks at a time.
    cached = blosc2.open(blosc2.URLPath("foo/x.b2nd", urlbase=c2), lazy=True)
    assert np.array_equal(cached[40:260, 33:150], want[40:260, 33:150])
    assert np.array_equal(cached[:], want)


def test_lazy_expression(c2, c2root):
    """blosc2 computes an expression over two remote operands chunked differently."""
    x, y = (blosc2.C2Array(f"foo/{p}", urlbase=c2) for p in ("x.b2nd", "y.b2nd"))
    nx, ny = (whole(local(c2root, p)) for p in ("x.b2nd", "y.b2nd"))
    expr = blosc2.lazyexpr("sin(x) * 2 + y", operands={"x": x, "y": y})
    assert np.allclose(expr[:], np.sin(nx) * 2 + ny)
    assert np.allclose(expr[10:30, 150:], (np.sin(nx) * 2 + ny)[10:30, 150:])
    total = x + y
    assert isinstance(total, blosc2.LazyExpr)
    assert np.allclose(total.compute()[:], nx + ny)
    assert np.isclose(float((x * y).sum()), float((nx * ny).sum()))


GATHERS = [
    ("ds-1d.b2nd", [5, 1, 998, -3, 5]),
    ("ds-1d.b2nd", np.arange(1000)[::-7]),  # too long for a URL: sent in a POST
    ("ds-1d.b2nd", np.arange(1000) % 3 == 0),
    ("ds-1d.b2nd", np.array([], dtype=np.int64)),
    ("dir1/ds-2d.b2nd", ([0, 9, 4], [19, 0, 7])),
    ("dir1/ds-2d.b2nd", (slice(2, 8), [0, 5, 3])),
    ("dir1/ds-2d.b2nd", ([[1, 2], [3, 4]], slice(None))),
    ("dir1/ds-2d.b2nd", (np.arange(200).reshape(10, 20) % 7 == 1)),
    ("dir2/ds-4d.b2nd", (1, slice(None), [0, 3], 2)),
    ("dir2/ds-4d.b2nd", ([0, 1], slice(1, 3), [1, 2])),
    ("ds-1d-fields.b2nd", [10, 999, 0]),
    ("ds-2d-fields.b2nd", (slice(0, 3), [150, 3])),
]


@pytest.mark.parametrize(("path", "key"), GATHERS)
def test_gathers(c2, c2root, path, key):
    """Keys with lists or masks (numpy's advanced indexing) travel as `indices`."""
    want = whole(local(c2root, path))[key]
    got = blosc2.C2Array(f"foo/{path}", urlbase=c2)[key]
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.array_equal(got, want)


def test_large_gather_within_the_budget(c2, c2root):
    """The 16 MB box around two rows is read within the budget large answers share."""
    want = whole(local(c2root, "big.b2nd"))[[1999, 0, 7]]
    assert np.array_equal(blosc2.C2Array("foo/big.b2nd", urlbase=c2)[[1999, 0, 7]], want)
    large = requests.get(f"{c2}api/stats", timeout=30).json()["large"]
    assert large["memory_peak"] >= 16_000_000 and large["memory_used"] == 0


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "headers", "status", "match"),
    [
        ("GET", "ds-1d.b2nd", {"slice_": "a:b"}, None, {}, 400, "malformed slice"),
        ("GET", "ds-1d.b2nd", {"slice_": "1000"}, None, {}, 400, "out of range"),
        ("GET", "ds-1d.b2nd", {"slice_": "::0"}, None, {}, 400, "step cannot be zero"),
        ("GET", "ds-1d.b2nd", {"slice": "1", "slice_": "2"}, None, {}, 400, "differ"),
        ("GET", "ds-1d.b2nd", {"slice_": "1:2", "indices": "[[1]]"}, None, {}, 400, "not both"),
        ("GET", "ds-1d.b2nd", {"indices": "[[1]"}, None, {}, 400, "not JSON"),
        ("GET", "ds-1d.b2nd", {"indices": "[" * 1000 + "]" * 1000}, None, {}, 400, "at most 65 levels"),
        ("GET", "ds-1d.b2nd", {"indices": "[" * 66 + "1" + "]" * 66}, None, {}, 400, "nested too deeply"),
        ("GET", "ds-1d.b2nd", {"indices": "[0, " + "[" * 70 + "]" * 71}, None, {}, 400, "nested too deeply"),
        ("GET", "ds-1d.b2nd", {"indices": '{"a": 1}'}, None, {}, 400, "JSON list"),
        ("GET", "ds-1d.b2nd", {"indices": "[[1.5]]"}, None, {}, 400, "integers"),
        ("GET", "ds-1d.b2nd", {"indices": "[[[1], [2, 3]]]"}, None, {}, 400, "integers"),
        ("GET", "ds-1d.b2nd", {"indices": "[true]"}, None, {}, 400, "not True"),
        ("GET", "ds-1d.b2nd", {"indices": "[1e400]"}, None, {}, 400, "not inf"),
        ("GET", "ds-1d.b2nd", {"indices": '["..."]'}, None, {}, 400, "one axis"),
        ("GET", "ds-1d.b2nd", {"indices": "[[1000]]"}, None, {}, 400, "index 1000 is out of range"),
        ("GET", "ds-1d.b2nd", {"indices": "[[-1001]]"}, None, {}, 400, "index -1001 is out of range"),
        ("GET", "ds-1d.b2nd", {"indices": f"[[{2**64 - 1}]]"}, None, {}, 400, "out of range"),
        ("GET", "ds-1d.b2nd", {"indices": f"[{2**100}]"}, None, {}, 400, "out of range"),
        ("GET", "ds-1d.b2nd", {"indices": "[[1], [2]]"}, None, {}, 400, "too many indices"),
        ("GET", "dir1/ds-2d.b2nd", {"indices": "[[0, 1], [0, 1, 2]]"}, None, {}, 400, "broadcast"),
        ("GET", "ds-hello.b2frame", {"indices": "[[1]]"}, None, {}, 400, "not an array"),
        ("GET", "ds-1d.b2nd", {}, None, {"Range": "bytes=0-99"}, 416, "byte ranges"),
        ("GET", "ds-1d.b2nd", {}, None, {"Range": "junk"}, 416, "byte ranges"),
        ("POST", "ds-1d.b2nd", {}, b"not json", {}, 400, "JSON object"),
        ("POST", "ds-1d.b2nd", {}, b'["0:10"]', {}, 400, "JSON object"),
        ("POST", "ds-1d.b2nd", {}, b'{"slice_": 5}', {}, 400, "slice_ must be a string"),
        ("POST", "ds-1d.b2nd", {}, b'{"indices": [[1]]}', {}, 400, "indices must be a string"),
        ("POST", "ds-1d.b2nd", {}, b"[" * 100_000, {}, 400, "JSON object"),
        ("POST", "ds-1d.b2nd", {}, b" " * (9 << 20), {}, 413, "over"),
        (
            "POST",
            "x.b2nd",
            {},
            b'{"indices": "[[0]]"}'.replace(b"[0]", b"[" + b"0," * 200_000 + b"0]"),
            {},
            413,
            "ask in parts",
        ),
    ],
)
def test_hostile_requests(c2, method, path, query, body, headers, status, match):
    """Malformed selections, ranges and bodies: a 4xx with a JSON error, never a 5xx."""
    response = requests.request(
        method, f"{c2}api/fetch/foo/{path}", params=query, data=body, headers=headers, timeout=60
    )
    assert response.status_code == status, response.text[:300]
    error = response.json()
    assert error["status"] == status
    assert match in error["error"], error


def test_ours_unchanged(c2, c2root):
    """Our own API reads as before beside Caterva2's: slice, .npy, the same metadata."""
    url = f"{c2}api/fetch/foo/dir1/ds-2d.b2nd"
    response = requests.get(
        url, params={"slice": "1, ::-3"}, headers={"Accept": "application/x-npy"}, timeout=30
    )
    assert np.array_equal(
        np.load(io.BytesIO(response.content)), whole(local(c2root, "dir1/ds-2d.b2nd"))[1, ::-3]
    )
    info = requests.get(f"{c2}api/info/foo/dir1/ds-2d.b2nd", timeout=30).json()
    assert (
        info["dtype"] == "uint16"
        and info["kind"] == "ndarray"
        and info["schunk"]["nchunks"] == info["nchunks"]
    )


def test_wrong_bytes_are_refused_and_not_cached(broker, tmp_path, root_dir):
    """Chunks that C2Array's requests make the subscriber fetch are checked as any:
    a publisher's wrong bytes give a 502, and are not served once it is right again."""
    lying = threading.Event()
    lying.set()

    def instrument(app: Flask) -> None:
        @app.after_request
        def corrupt(response: Response) -> Response:
            if lying.is_set() and request.path.startswith("/api/chunk/"):
                response.set_data(bytes(len(response.get_data())))
            return response

    src = local(root_dir, "dir1/ds-3d.b2nd")
    with running(broker, tmp_path, root_dir, instrument) as (_, sub):
        remote = blosc2.C2Array("foo/dir1/ds-3d.b2nd", urlbase=sub.url)
        for read in (lambda: remote[:], lambda: remote[1, [0, 2]], lambda: remote.get_chunk(0)):
            with pytest.raises(httpx.HTTPStatusError) as error:
                read()
            assert error.value.response.status_code == 502
        lying.clear()
        assert np.array_equal(remote[:], whole(src))
        assert remote.get_chunk(0) == src.schunk.get_chunk(0)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[" * 1000 + "]" * 1000, "indices is nested too deeply: at most 65 levels of lists"),
        ("[" * 100_000 + "]" * 100_000, "indices is nested too deeply: at most 65 levels of lists"),
        ("[" * 66 + "0" + "]" * 66, "indices is nested too deeply: at most 65 levels of lists"),
        ("[null, " + "[" * 65 + "]" * 66, "indices is nested too deeply: at most 65 levels of lists"),
        ("[[1]", "indices is not JSON: '[[1]'"),
        ("[[[1], [2, 3]]]", "nested evenly"),
    ],
)
def test_bad_indices_say_what_is_wrong_in_short(text, match):
    from catmqtt.errors import BadRequest
    from catmqtt.subscriber.caterva2 import parse_indices

    with pytest.raises(BadRequest, match=re.escape(match)) as info:
        parse_indices(text)
    assert len(str(info.value)) < 100


@pytest.mark.parametrize(
    ("text", "ndim"), [("[" * 65 + "0" + "]" * 65, 64), ("[[0, 1]]", 1), ("[[]]", 1), ("[0]", 0)]
)
def test_indices_nested_up_to_the_limit(text, ndim):
    from catmqtt.subscriber.caterva2 import parse_indices

    assert np.ndim(parse_indices(text)[0]) == ndim
