"""Bad input over raw HTTP, against a real publisher and subscriber: clear 4xx JSON, never a 500."""

from __future__ import annotations

import http.client

import pytest
import requests


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (requests would normalise dot segments)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


TRAVERSALS = [
    "/api/info/foo/../../etc/passwd",
    "/api/info/foo/%2e%2e/%2e%2e/etc/passwd",
    "/api/info/foo/..%2f..%2fetc%2fpasswd",
    "/api/info//etc/passwd",
    "/api/info/foo//etc/passwd",
    "/api/download/foo/../../../etc/passwd",
    "/api/download/foo/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/fetch/foo/%2e%2e/ds-1d.b2nd",
    "/api/chunk/foo/./ds-1d.b2nd?nchunk=0",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_subscriber_path_traversal(foo, path):
    status, body = raw_get(foo.url("sub"), path)
    assert status in (400, 404), body
    assert b"root:" not in body
    assert b'"error"' in body


@pytest.mark.parametrize("path", [p.replace("/foo/", "/", 1).replace("/foo/", "/") for p in TRAVERSALS])
def test_publisher_path_traversal(foo, path):
    status, body = raw_get(foo.url("pub-foo"), path)
    assert status in (400, 404), body
    assert b"root:" not in body


@pytest.mark.parametrize(
    ("endpoint", "status", "message"),
    [
        ("fetch/foo/ds-1d.b2nd?slice=0:10:0", 400, "slice step cannot be zero"),
        ("fetch/foo/ds-1d.b2nd?slice=1000", 400, "index 1000 is out of range for axis 0 with size 1000"),
        ("fetch/foo/ds-1d.b2nd?slice=-1001", 400, "index -1001 is out of range"),
        ("fetch/foo/ds-1d.b2nd?slice=1:2:3:4", 400, "malformed slice"),
        ("fetch/foo/ds-1d.b2nd?slice=" + "1," * 100, 400, "more than 64 items"),
        ("fetch/foo/ds-1d.b2nd?slice=" + "9" * 5000, 400, "longer than 4096"),
        ("fetch/foo/ds-1d.b2nd?slice=1e3", 400, "malformed slice"),
        ("fetch/foo/dir2/ds-4d.b2nd?slice=0,0,0,0,0", 400, "too many indices"),
        ("fetch/foo/nope.b2nd", 404, "no dataset 'nope.b2nd' in root 'foo'"),
        ("fetch/bar/ds-1d.b2nd", 404, "no root 'bar'"),
        ("fetch/foo", 400, "expected ROOT/PATH"),
        ("chunk/foo/ds-1d.b2nd?nchunk=10", 400, "chunk 10 is out of range"),
        ("chunk/foo/ds-1d.b2nd?nchunk=-1", 400, "chunk -1 is out of range"),
        ("chunk/foo/ds-1d.b2nd?nchunk=x", 400, "not an integer"),
        ("chunk/foo/ds-1d.b2nd", 400, "missing query argument 'nchunk'"),
        ("chunks/foo/ds-1d.b2nd?nchunks=", 400, "no chunks given"),
        ("chunks/foo/ds-1d.b2nd?nchunks=0-99", 400, "chunk 99 is out of range"),
        ("chunks/foo/ds-1d.b2nd?nchunks=3-1", 400, "runs backwards"),
        ("chunks/foo/ds-1d.b2nd?nchunks=1,x", 400, "'x' is not N or N-M"),
        ("chunks/foo/ds-1d.b2nd?nchunks=0-9,0-9", 400, "names chunks more than once"),
        ("chunks/foo/ds-1d.b2nd?nchunks=0&etag=old", 412, "changed (etag"),
        ("list/foo/nodir", 404, "no directory 'nodir'"),
        ("list/Bad%20Name", 400, "invalid root name"),
        ("nothing/here", 404, "no such endpoint"),
    ],
)
def test_subscriber_bad_requests(foo, endpoint, status, message):
    response = requests.get(f"{foo.url('sub')}/api/{endpoint}", timeout=10)
    assert response.status_code == status
    assert response.json()["status"] == status
    assert message in response.json()["error"]


def test_subscribe_needs_post(foo):
    response = requests.get(f"{foo.url('sub')}/api/subscribe/foo", timeout=10)
    assert response.status_code == 405
    assert "Method Not Allowed" in response.json()["error"]


@pytest.mark.parametrize(
    ("endpoint", "status", "message"),
    [
        ("info/nope", 404, "no dataset 'nope' in root 'foo'"),
        ("chunk/ds-1d.b2nd?nchunk=99", 400, "chunk 99 is out of range: 'ds-1d.b2nd' has 10 chunks"),
        ("chunk/ds-1d.b2nd?nchunk=", 400, "not an integer"),
        ("download/dir1", 404, "no dataset 'dir1'"),
    ],
)
def test_publisher_bad_requests(foo, endpoint, status, message):
    response = requests.get(f"{foo.url('pub-foo')}/api/{endpoint}", timeout=10)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_info_etag(foo):
    for url in (f"{foo.url('sub')}/api/info/foo/ds-1d.b2nd", f"{foo.url('pub-foo')}/api/info/ds-1d.b2nd"):
        first = requests.get(url, timeout=10)
        etag = first.headers["ETag"]
        assert first.json()["etag"] in etag
        again = requests.get(url, headers={"If-None-Match": etag}, timeout=10)
        assert again.status_code == 304 and again.content == b""


def test_fetch_formats(foo):
    import io

    import blosc2
    import numpy as np

    url = f"{foo.url('sub')}/api/fetch/foo/dir1/ds-2d.b2nd"
    cframe = requests.get(url, params={"slice": "1:3, ::-4"}, timeout=10)
    assert cframe.headers["Content-Type"] == "application/x-blosc2", cframe.text
    expected = np.arange(200, dtype=np.uint16).reshape(10, 20)[1:3, ::-4]
    assert np.array_equal(blosc2.ndarray_from_cframe(cframe.content)[...], expected)
    npy = requests.get(
        url, params={"slice": "1:3, ::-4"}, headers={"Accept": "application/x-npy"}, timeout=10
    )
    assert np.array_equal(np.load(io.BytesIO(npy.content)), expected)
