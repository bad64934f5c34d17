"""Bad input over raw HTTP, against a real publisher and subscriber: clear 4xx JSON, never a 500."""

from __future__ import annotations

import http.client
import io
import json
import socket

import blosc2
import numpy as np
import pytest
import requests

from catmqtt.slices import parse_slice

BIG = "9" * 5000
HUGE = str(10**30)


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
    "/api/manifest/foo/%2e%2e/ds-1d.b2nd",
    "/api/manifest/foo/../../etc/passwd",
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
        # Past Python's 4300 digits for int(): a 400, not a 500.
        (f"chunks/foo/ds-1d.b2nd?nchunks=0-{BIG}", 400, "is out of range: more than 20 digits"),
        (f"chunks/foo/ds-1d.b2nd?nchunks={BIG}", 400, "is out of range: more than 20 digits"),
        (f"chunk/foo/ds-1d.b2nd?nchunk={BIG}", 400, "is out of range: more than 20 digits"),
        (f"chunk/foo/ds-1d.b2nd?nchunk=-{BIG}", 400, "is out of range: more than 20 digits"),
        ("chunk/foo/ds-1d.b2nd?nchunk=%D9%A3", 400, "is not an integer"),
        (f"fetch/foo/ds-1d.b2nd?slice=::{BIG}", 400, "longer than 4096"),
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
    assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}


@pytest.mark.parametrize(
    ("endpoint", "status", "message"),
    [
        ("info/nope", 404, "no dataset 'nope' in root 'foo'"),
        ("chunk/ds-1d.b2nd?nchunk=99", 400, "chunk 99 is out of range: 'ds-1d.b2nd' has 10 chunks"),
        ("chunk/ds-1d.b2nd?nchunk=", 400, "not an integer"),
        ("download/dir1", 404, "no dataset 'dir1'"),
        (f"chunk/ds-1d.b2nd?nchunk=0&blocks=0-{BIG}", 400, "is out of range: more than 20 digits"),
        (f"chunk/ds-1d.b2nd?nchunk=0&blocks={BIG}-{BIG}", 400, "is out of range: more than 20 digits"),
        (f"chunk/ds-1d.b2nd?nchunk={BIG}", 400, "is out of range: more than 20 digits"),
        ("chunk/ds-1d.b2nd?nchunk=1_0", 400, "'1_0' is not an integer"),
        ("chunk/ds-1d.b2nd?nchunk=0&blocks=x", 400, "malformed block range 'x': expected A-B"),
        ("chunk/ds-1d.b2nd?nchunk=0&blocks=", 400, "malformed block range ''"),
        ("chunk/ds-1d.b2nd?nchunk=0&blocks=3-1", 400, "malformed block range '3-1'"),
        ("chunk/ds-1d.b2nd?nchunk=0&blocks=-1", 400, "malformed block range '-1'"),
    ],
)
def test_publisher_bad_requests(foo, endpoint, status, message):
    response = requests.get(f"{foo.url('pub-foo')}/api/{endpoint}", timeout=10)
    assert response.status_code == status
    assert message in response.json()["error"]


@pytest.mark.parametrize("node", ["pub-foo", "sub"])
@pytest.mark.parametrize(
    ("range_", "if_range", "status", "part"),
    [
        ("bytes=0-9", None, 206, slice(0, 10)),
        ("bytes=10-", None, 206, slice(10, None)),
        ("bytes=-5", None, 206, slice(-5, None)),
        ("bytes=3-100000", None, 206, slice(3, None)),  # cut at the end
        ("bytes=-100000", None, 206, slice(None)),  # more than all: all
        ("bytes=0-1,5-6", None, 200, slice(None)),  # several ranges: the whole chunk
        ("bytes=0-9", '"x"', 200, slice(None)),  # If-Range: the whole chunk
        ("bytes=9-3", None, 200, slice(None)),  # malformed: ignored
        ("items=0-9", None, 200, slice(None)),  # another unit: ignored
        ("bytes=100000-", None, 416, None),
    ],
)
def test_chunk_ranges(foo, node, range_, if_range, status, part):
    path = "ds-1d.b2nd" if node == "pub-foo" else "foo/ds-1d.b2nd"
    url = f"{foo.url(node)}/api/chunk/{path}"
    whole = requests.get(url, params={"nchunk": 3}, timeout=10)
    assert whole.headers["Accept-Ranges"] == "bytes"
    headers = {"Range": range_} | ({"If-Range": if_range} if if_range else {})
    response = requests.get(url, params={"nchunk": 3}, headers=headers, timeout=10)
    assert response.status_code == status, response.text
    size = len(whole.content)
    if status == 416:
        assert response.headers["Content-Range"] == f"bytes */{size}"
        assert "outside the chunk's" in response.json()["error"]
        return
    assert response.content == whole.content[part]
    assert response.headers["X-Catmqtt-Digest"] == whole.headers["X-Catmqtt-Digest"]
    if status == 206:
        first = range(size)[part][0]
        last = first + len(response.content) - 1
        assert response.headers["Content-Range"] == f"bytes {first}-{last}/{size}"


def test_publisher_sends_some_blocks_first(foo):
    import blosc2
    import numpy as np

    from catmqtt import blocks, wire

    url = f"{foo.url('pub-foo')}/api/chunk/ds-1d.b2nd"
    whole = requests.get(url, params={"nchunk": 3}, timeout=10).content
    response = requests.get(url, params={"nchunk": 3, "blocks": "2-3"}, timeout=10)
    assert response.status_code == 200
    spans, size = wire.parse_parts(response.headers["X-Catmqtt-Parts"])
    assert size == len(whole) and len(response.content) < size
    chunk, body = bytearray(size), memoryview(response.content)
    for start, stop in spans:
        assert bytes(body[: stop - start]) == whole[start:stop]
        chunk[start:stop], body = body[: stop - start], body[stop - start :]
    assert len(body) == 0
    # Blocks 2 and 3 of chunk 3 are items 320 to 339 of ds-1d (blocks of 10).
    decoded = np.frombuffer(blosc2.decompress2(blocks.cut(chunk, range(2, 4), 800)), dtype=np.int64)
    assert np.array_equal(decoded, np.arange(320, 340))
    # Blocks the chunk does not have: the whole chunk, as without `blocks`.
    beyond = requests.get(url, params={"nchunk": 3, "blocks": "10-12"}, timeout=10)
    assert beyond.content == whole and "X-Catmqtt-Parts" not in beyond.headers
    bad = requests.get(url, params={"nchunk": 3, "blocks": "3-1"}, timeout=10)
    assert bad.status_code == 400 and "malformed block range '3-1'" in bad.json()["error"]


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


@pytest.mark.parametrize("node", ["pub-foo", "sub"])
@pytest.mark.parametrize(
    ("range_", "if_range", "status"),
    [
        ("bytes=-0", None, 416),
        ("bytes=-00, -0", None, 416),
        ("bytes=-0", '"x"', 200),  # If-Range: the whole chunk
        ("bytes=-0,0-1", None, 200),  # one satisfiable range: no 416
        ("bytes=-1", None, 206),
    ],
)
def test_chunk_range_of_no_bytes(foo, node, range_, if_range, status):
    path = "ds-1d.b2nd" if node == "pub-foo" else "foo/ds-1d.b2nd"
    url = f"{foo.url(node)}/api/chunk/{path}"
    size = len(requests.get(url, params={"nchunk": 3}, timeout=10).content)
    headers = {"Range": range_} | ({"If-Range": if_range} if if_range else {})
    response = requests.get(url, params={"nchunk": 3}, headers=headers, timeout=10)
    assert response.status_code == status, response.text
    if status == 416:
        assert response.headers["Content-Range"] == f"bytes */{size}"
        error = response.json()
        assert error["status"] == 416
        assert error["error"].endswith(f"{range_} asks for none of the chunk's bytes"), error


@pytest.mark.parametrize("node", ["pub-foo", "sub"])
@pytest.mark.parametrize("range_", [f"bytes=0-{BIG}", f"bytes={BIG}-", f"bytes=-{BIG}", f"bytes={HUGE}-"])
def test_chunk_ranges_of_huge_numbers(foo, node, range_):
    path = "ds-1d.b2nd" if node == "pub-foo" else "foo/ds-1d.b2nd"
    url = f"{foo.url(node)}/api/chunk/{path}"
    response = requests.get(url, params={"nchunk": 3}, headers={"Range": range_}, timeout=10)
    # A range past the chunk is a 416; one werkzeug cannot read is no range: the whole chunk.
    assert response.status_code in (200, 416), response.text
    if response.status_code == 416:
        assert "outside the chunk's" in response.json()["error"]


@pytest.mark.parametrize(
    "path",
    ["dir1/ds-2d.b2nd", "dir2/ds-4d.b2nd", "ds-1d-fields.b2nd", "ds-hello.b2frame", "README.md"],
)
@pytest.mark.parametrize(
    "text",
    [
        "::-9999999999999999999",
        f"::{HUGE}",
        f"::-{HUGE}",
        f"{HUGE}::-1",
        f"-{HUGE}:{HUGE}",
        f"{HUGE}:-{HUGE}:-{HUGE}",
        f"-{HUGE}::{HUGE}",
        f"...,2:{HUGE}:{HUGE}",
        f"::-{'9' * 4000}",
    ],
)
def test_fetch_huge_bounds_and_steps(foo, sample_root, path, text):
    """numpy takes slice bounds and steps of any size: so does a fetch, uncached and cached."""
    if path.endswith(".b2nd"):
        expected = blosc2.open(str(sample_root / path))[()][parse_slice(text)]
    elif path.endswith(".b2frame"):
        expected = np.frombuffer(blosc2.open(str(sample_root / path))[:], dtype="S1")[parse_slice(text)]
    else:
        expected = np.frombuffer((sample_root / path).read_bytes(), dtype="S1")[parse_slice(text)]
    url = f"{foo.url('sub')}/api/fetch/foo/{path}"
    # The first read may fetch chunks (answered as they arrive), the second reads the cache.
    for _ in range(2):
        response = requests.get(
            url, params={"slice": text}, headers={"Accept": "application/x-npy"}, timeout=30
        )
        assert response.status_code == 200, response.text
        if path.endswith(".b2nd"):
            assert np.array_equal(np.load(io.BytesIO(response.content)), expected)
        else:
            assert response.content == expected.tobytes()


def raw_exchange(url: str, request: bytes, body: bytes = b"") -> bytes:
    """Send `request` on a raw socket (then `body` once told to continue); return all
    that came until the response was whole, or fail after 10 s."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                pytest.fail(f"no whole response within 10 s; received {received!r}")
            received += data
            if received.endswith(b"100 Continue\r\n\r\n") and body:
                sock.sendall(body)
            head, sep, content = received.rpartition(b"\r\n\r\n")
            length = [
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if not data or (sep and length and len(content) >= length[-1]):
                return received


@pytest.mark.parametrize("node", ["pub-foo", "sub"])
@pytest.mark.parametrize("extra", ["", "Content-Length: 0\r\n"])
def test_expect_continue_without_body_is_answered_at_once(foo, node, extra):
    endpoint = "/api/list" if node == "pub-foo" else "/api/roots"
    request = f"GET {endpoint} HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n{extra}\r\n"
    received = raw_exchange(foo.url(node), request.encode())
    assert received.startswith(b"HTTP/1.1 200 OK\r\n"), received
    assert b"100 Continue" not in received


def test_expect_continue_with_body_still_continues(foo):
    request = (
        b"POST /api/subscribe/foo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    received = raw_exchange(foo.url("sub"), request, body=b"{}")
    assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), received


@pytest.mark.parametrize("node", ["pub-foo", "sub"])
@pytest.mark.parametrize(
    ("request_", "status", "message"),
    [
        # Past Python's 4300 digits for int(): waitress closed the connection unanswered.
        (
            f"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {BIG}\r\n\r\n",
            400,
            "Content-Length is invalid",
        ),
        (
            "GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1a\r\n\r\n",
            400,
            "Content-Length is invalid",
        ),
        ("GARBAGE\r\n\r\n", 400, "Start line is invalid"),
        (
            "GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "Transfer-Encoding",
        ),
    ],
)
def test_malformed_http_gets_a_json_error(foo, node, request_, status, message):
    received = raw_exchange(foo.url(node), request_.encode())
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split(b" ")[1] == str(status).encode(), received
    assert b"Content-Type: application/json" in head
    error = json.loads(body)
    assert error["status"] == status and message in error["error"]
    # And the server goes on serving.
    assert requests.get(f"{foo.url(node)}/api/list{'' if node == 'pub-foo' else '/foo'}", timeout=10).ok


def test_the_subscriber_serves_the_publishers_manifest(foo):
    for path in ("ds-1d.b2nd", "dir2/ds-4d.b2nd", "README.md"):
        mine = requests.get(f"{foo.url('sub')}/api/manifest/foo/{path}", timeout=30)
        theirs = requests.get(f"{foo.url('pub-foo')}/api/manifest/{path}", timeout=30)
        assert mine.status_code == theirs.status_code == 200, (mine.text, theirs.text)
        assert mine.json() == theirs.json()
        info = requests.get(f"{foo.url('sub')}/api/info/foo/{path}", timeout=30).json()
        assert mine.json()["etag"] == info["etag"] and len(mine.json()["digests"]) == info["nchunks"]
    for path, status, message in [
        ("foo/nothing.b2nd", 404, "no dataset"),
        ("nothing/ds-1d.b2nd", 404, "nothing"),
        ("foo", 400, "invalid dataset path"),
    ]:
        response = requests.get(f"{foo.url('sub')}/api/manifest/{path}", timeout=30)
        assert response.status_code == status and message in response.json()["error"], response.text
