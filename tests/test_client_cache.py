"""The client's cache of compressed chunks, against a real subscriber: warm reads send
no request, the cache stays within its budget, never serves a chunk of an old version,
refuses a lying subscriber's chunks, and can be turned off."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import blosc2
import numpy as np
import pytest
import requests
from requests.adapters import HTTPAdapter

import catmqtt
from catmqtt import client_reader, storage
from catmqtt.chunkcache import ChunkCache
from catmqtt.errors import NotFound, Unavailable
from catmqtt.slices import parse_slice
from catmqtt.wire import FRAME

from conftest import DEADLINE, Deployment, wait_for
from test_untrusted import ONE_BLOCK, lying_meta, not_found, serving

ROWS, CHUNK, BLOCK = 400_000, 100_000, 10_000
RAND = np.random.default_rng(0).random(ROWS)


class Counting(HTTPAdapter):
    """A client session's adapter that notes the path of each request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def send(self, request, **kwargs):
        self.paths.append(urlsplit(request.url).path)
        return super().send(request, **kwargs)


def counted(client: catmqtt.Client) -> list[str]:
    """Return the list to which `client` adds the path of each request it sends from now on."""
    adapter = Counting()
    client.session.mount("http://", adapter)
    return adapter.paths


def write_changing(root: Path, sign: int) -> np.ndarray:
    data = sign * np.arange(ROWS, dtype=np.int64)
    blosc2.asarray(data, urlpath=str(root / "changing.b2nd"), mode="w", chunks=(CHUNK,), blocks=(BLOCK,))
    return data


@pytest.fixture(scope="module")
def served(module_broker, tmp_path_factory) -> Iterator[tuple[Deployment, Path]]:
    """A root foo of random data in chunks of 800 kB and of a dataset that tests change,
    published and followed by a subscriber, each a process."""
    workdir = tmp_path_factory.mktemp("ccache")
    root = workdir / "root"
    root.mkdir()
    blosc2.asarray(RAND, urlpath=str(root / "rand.b2nd"), mode="w", chunks=(CHUNK,), blocks=(BLOCK,))
    write_changing(root, 1)
    d = Deployment(module_broker, workdir)
    d.serve_foo(root)
    yield d, root
    d.stop_all()


def test_the_cache_keeps_within_its_budget_least_recently_used_out_first():
    cache = ChunkCache(250)
    for n in range(3):
        cache.put(("foo/a", "e1", n), bytes(100))
    assert len(cache) == 2 and cache.nbytes == 200
    assert ("foo/a", "e1", 0) not in cache
    assert cache.get(("foo/a", "e1", 1)) is not None
    cache.put(("foo/a", "e1", 3), bytes(100))
    # Chunk 1 was read after chunk 2 went in: 2 goes first.
    assert ("foo/a", "e1", 1) in cache and ("foo/a", "e1", 2) not in cache
    cache.put(("foo/a", "e1", 4), bytes(251))
    assert ("foo/a", "e1", 4) not in cache and cache.nbytes == 200
    cache.put(("foo/a", "e2", 0), bytes(10))
    cache.forget("foo/a", keep="e2")
    assert len(cache) == 1 and cache.nbytes == 10
    with pytest.raises(ValueError, match="cannot be negative"):
        ChunkCache(-1)


def test_warm_reads_send_no_request(served):
    d, _ = served
    with catmqtt.Client(d.url("sub"), max_age=3600) as client:
        paths = counted(client)
        assert np.array_equal(client.fetch("foo/rand.b2nd", "50000:250000"), RAND[50000:250000])
        assert paths == ["/api/info/foo/rand.b2nd", "/api/chunks/foo/rand.b2nd"]
        paths.clear()
        for key in ("50000:250000", "0:5", "199999:100000:-3", "123456"):
            assert np.array_equal(client.fetch("foo/rand.b2nd", key), RAND[parse_slice(key)])
        # Chunks 0 to 2 were fetched whole: reads within them come from the cache.
        assert paths == []
        root = catmqtt.Root("foo", client=client)
        ds = root["rand.b2nd"]
        paths.clear()
        assert np.array_equal(ds[100:200], RAND[100:200])
        assert paths == []


def test_past_its_max_age_a_read_asks_whether_the_dataset_changed(served):
    d, _ = served
    with catmqtt.Client(d.url("sub"), max_age=0) as client:
        client.fetch("foo/rand.b2nd", "0:100000")
        paths = counted(client)
        assert np.array_equal(client.fetch("foo/rand.b2nd", "10:20"), RAND[10:20])
        # A conditional GET (answered 304), and no chunk.
        assert paths == ["/api/info/foo/rand.b2nd"]


def test_decoding_chunks_releases_the_gil(served):
    d, _ = served
    old = blosc2.set_releasegil(False)
    try:
        with catmqtt.Client(d.url("sub")) as client:
            assert np.array_equal(client.fetch("foo/rand.b2nd", "0:100000"), RAND[:100000])
        assert blosc2.set_releasegil(old) is True
    finally:
        blosc2.set_releasegil(old)


def test_chunks_read_in_part_twice_are_fetched_whole_in_the_background(served):
    d, _ = served
    with catmqtt.Client(d.url("sub"), max_age=3600) as client:
        paths = counted(client)
        etag = client.get_info("foo/rand.b2nd")["etag"]
        for _ in range(2):
            # A few items of a big chunk: the subscriber slices, and sends only those.
            assert np.array_equal(client.fetch("foo/rand.b2nd", "300010:300020"), RAND[300010:300020])
        wait_for(lambda: ("foo/rand.b2nd", etag, 3) in client.chunk_cache, "chunk 3 fetched whole")
        assert paths[1:] == ["/api/fetch/foo/rand.b2nd"] * 2 + ["/api/chunks/foo/rand.b2nd"]
        paths.clear()
        assert np.array_equal(client.fetch("foo/rand.b2nd", "399990:"), RAND[399990:])
        assert paths == []


def chunk_sizes(d: Deployment) -> list[int]:
    with catmqtt.Client(d.url("sub"), cache_bytes=0) as client:
        return [len(client.get_chunk("foo/rand.b2nd", n)) for n in range(ROWS // CHUNK)]


def test_the_cache_is_bounded_and_forgets_the_least_recently_used_chunk(served):
    d, _ = served
    sizes = chunk_sizes(d)
    budget = sizes[0] + sizes[1] + max(sizes) // 2
    with catmqtt.Client(d.url("sub"), cache_bytes=budget, max_age=3600) as client:
        paths = counted(client)

        def read(n: int) -> None:
            part = slice(n * CHUNK, (n + 1) * CHUNK)
            assert np.array_equal(client.fetch("foo/rand.b2nd", part), RAND[part])

        for n in (0, 1, 0, 2):
            read(n)
        assert len(client.chunk_cache) == 2 and client.chunk_cache.nbytes <= budget
        paths.clear()
        # Chunk 0 was read after chunk 1: chunk 1 made room for chunk 2.
        read(0)
        read(2)
        assert paths == []
        read(1)
        assert paths == ["/api/chunks/foo/rand.b2nd"]


def test_the_cache_can_be_turned_off(served, monkeypatch):
    d, _ = served
    with catmqtt.Client(d.url("sub"), cache_bytes=0, max_age=3600) as client:
        paths = counted(client)
        # Small selections are sliced by the subscriber: no Blosc2 needed.
        for _ in range(3):
            assert np.array_equal(client.fetch("foo/rand.b2nd", "0:100000"), RAND[:100000])
        assert paths == ["/api/info/foo/rand.b2nd"] + ["/api/fetch/foo/rand.b2nd"] * 3
        # Larger ones are read by their chunks, which are not kept.
        monkeypatch.setattr(client_reader, "UNCACHED_SLICED_MAX", 100_000 * RAND.itemsize - 1)
        paths.clear()
        for _ in range(2):
            assert np.array_equal(client.fetch("foo/rand.b2nd", "0:100000"), RAND[:100000])
        assert paths == ["/api/chunks/foo/rand.b2nd"] * 2
        assert len(client.chunk_cache) == 0


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20])
def test_a_first_read_of_a_few_items_is_one_request(served, cache_bytes):
    d, _ = served
    with catmqtt.Client(d.url("sub"), cache_bytes=cache_bytes, max_age=3600) as client:
        paths = counted(client)
        assert np.array_equal(client.fetch("foo/rand.b2nd", "1000:2000"), RAND[1000:2000])
        assert paths == ["/api/fetch/foo/rand.b2nd"]
        # An integer index: a 0-d array, as every read gives it.
        got = client.fetch("foo/changing.b2nd", (-7,))
        assert got.shape == () and got == ROWS - 7 and paths[1:] == ["/api/fetch/foo/changing.b2nd"]
        # The next read of each reads the metadata, and the cache serves from then on.
        paths.clear()
        assert np.array_equal(client.fetch("foo/rand.b2nd", "1000:2000"), RAND[1000:2000])
        assert paths[0] == "/api/info/foo/rand.b2nd"
    with catmqtt.Client(d.url("sub"), max_age=3600) as client:
        paths = counted(client)
        # Bounds that depend on the shape, or too many items: the metadata first.
        for key in (None, ":10", "-5:", "0:400000"):
            client.fetch("foo/rand.b2nd", key)
        assert paths[0] == "/api/info/foo/rand.b2nd"
        assert "/api/fetch/foo/rand.b2nd" not in paths[:1]
    with catmqtt.Client(d.url("sub")) as client, pytest.raises(IndexError, match="out of range"):
        client.fetch("foo/rand.b2nd", (ROWS,))
    etag = catmqtt.get_info("foo/rand.b2nd", d.url("sub"))["etag"]
    with catmqtt.Client(d.url("sub"), max_age=3600) as client:
        # A first read is a read in part of its chunks: read so again, they are fetched whole.
        for _ in range(2):
            assert np.array_equal(client.fetch("foo/rand.b2nd", "300010:300020"), RAND[300010:300020])
        wait_for(lambda: ("foo/rand.b2nd", etag, 3) in client.chunk_cache, "chunk 3 fetched whole")


def test_a_chunk_of_an_old_version_is_never_served(served):
    d, root = served
    old = np.arange(ROWS, dtype=np.int64)
    key = "90000:210000"  # in chunks 0 to 2
    clients = [catmqtt.Client(d.url("sub"), max_age=age) for age in (0, 1)]
    try:
        for client in clients:
            for _ in range(2):
                assert np.array_equal(client.fetch("foo/changing.b2nd", key), old[90000:210000])
        new = write_changing(root, -1)
        etag = storage.file_etag(root / "changing.b2nd")
        info_url = f"{d.url('sub')}/api/info/foo/changing.b2nd"
        wait_for(lambda: requests.get(info_url, timeout=5).json()["etag"] == etag, "the new version")
        seen = time.monotonic()
        # A client that always asks reads the new version at once, though it holds old chunks
        # of the same numbers.
        assert np.array_equal(clients[0].fetch("foo/changing.b2nd", key), new[90000:210000])
        # One that asks once a second may read the old version whole within that second, never after.
        reads: list[tuple[float, np.ndarray]] = []

        def read_new() -> bool:
            start = time.monotonic()
            reads.append((start, clients[1].fetch("foo/changing.b2nd", key)))
            return np.array_equal(reads[-1][1], new[90000:210000])

        wait_for(read_new, "the new version through a client that asks once a second")
        for start, result in reads:
            assert np.array_equal(result, new[90000:210000]) or (
                start - seen < clients[1].max_age and np.array_equal(result, old[90000:210000])
            )
    finally:
        for client in clients:
            client.close()


def lying_subscriber(meta: dict, chunk: bytes, asked: list[str]):
    """A subscriber's HTTP API serving `meta` as evil/crash.b2nd, items of np.arange when
    asked for a slice, and `chunk` as its one chunk."""

    def route(path: str, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        asked.append(path)
        endpoint, _, dataset = path.removeprefix("/api/").partition("/")
        if dataset != "evil/crash.b2nd":
            return not_found(path)
        if endpoint == "info":
            return 200, {"Content-Type": "application/json"}, json.dumps(meta).encode()
        if endpoint == "chunks":
            return 200, {}, FRAME.pack(0, len(chunk)) + chunk
        if endpoint == "fetch":
            buffer = io.BytesIO()
            np.save(buffer, np.arange(meta["nbytes"] // 8)[parse_slice(query["slice"])])
            return 200, {"Content-Type": "application/x-npy"}, buffer.getvalue()
        return not_found(path)

    return route


def test_a_lying_subscribers_chunk_is_never_cached():
    asked: list[str] = []
    # A compressed size of 1 byte: the client asks for the chunk even for a few items
    # (read with the metadata: ":5" is not bounded whatever the shape).
    meta = {**lying_meta("crash.b2nd", ONE_BLOCK), "cbytes": 1}
    with serving(lying_subscriber(meta, ONE_BLOCK, asked)) as url, catmqtt.Client(url) as client:
        for _ in range(2):
            with pytest.raises(Unavailable, match="its blocks are of 8000000 bytes, not 80"):
                client.fetch("evil/crash.b2nd", ":5")
        assert asked.count("/api/chunks/evil/crash.b2nd") == 2
        assert len(client.chunk_cache) == 0


def test_a_lying_subscribers_chunk_fetched_in_the_background_is_never_cached():
    asked: list[str] = []
    meta = lying_meta("crash.b2nd", ONE_BLOCK)
    with serving(lying_subscriber(meta, ONE_BLOCK, asked)) as url, catmqtt.Client(url) as client:
        for _ in range(2):
            assert client.fetch("evil/crash.b2nd", "0:5").tolist() == [0, 1, 2, 3, 4]
        wait_for(lambda: "/api/chunks/evil/crash.b2nd" in asked, "the fetch of the whole chunk")
        wait_for(lambda: not any(t.name == "catmqtt-fill" for t in threading.enumerate()), "the fetch to end")
        assert len(client.chunk_cache) == 0
        assert client.fetch("evil/crash.b2nd", "0:5").tolist() == [0, 1, 2, 3, 4]
        assert asked[-1] == "/api/fetch/evil/crash.b2nd"


def one_version(scale: int, etag: str) -> tuple[dict, bytes]:
    """The metadata and the one chunk of evil/crash.b2nd holding ``scale * np.arange(CHUNK)``."""
    array = blosc2.asarray(scale * np.arange(ROWS // 4), chunks=(CHUNK,), blocks=(BLOCK,))
    chunk = array.schunk.get_chunk(0)
    meta = {
        **lying_meta("crash.b2nd", chunk),
        "shape": [CHUNK],
        "chunks": [CHUNK],
        "blocks": [BLOCK],
        "chunksize": 8 * CHUNK,
        "nbytes": 8 * CHUNK,
        "etag": etag,
    }
    return meta, chunk


def test_a_chunk_fetched_for_a_version_since_replaced_is_never_served():
    """A chunk that arrives after the client learned of a new version (a fetch in the
    background, under way at the change) is kept under its own version's etag, out of reach."""
    versions = [one_version(1, "v1"), one_version(2, "v2")]
    current = [0]
    asked: list[str] = []
    release = threading.Event()

    def route(path: str, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        asked.append(path)
        endpoint = path.removeprefix("/api/").partition("/")[0]
        meta, chunk = versions[current[0]]
        if endpoint == "info":
            return 200, {"Content-Type": "application/json"}, json.dumps(meta).encode()
        if endpoint == "fetch":
            buffer = io.BytesIO()
            np.save(buffer, (current[0] + 1) * np.arange(CHUNK)[parse_slice(query["slice"])])
            return 200, {"Content-Type": "application/x-npy"}, buffer.getvalue()
        if endpoint == "chunks":
            # Answered as the version it was asked for was current when it came.
            release.wait(DEADLINE)
            chunk = versions[0][1]
            return 200, {}, FRAME.pack(0, len(chunk)) + chunk
        return not_found(path)

    with serving(route) as url, catmqtt.Client(url, max_age=0) as client:
        for _ in range(2):
            assert client.fetch("evil/crash.b2nd", "0:5").tolist() == [0, 1, 2, 3, 4]
        wait_for(lambda: "/api/chunks/evil/crash.b2nd" in asked, "the fetch of the whole chunk")
        current[0] = 1
        assert client.fetch("evil/crash.b2nd", "0:5").tolist() == [0, 2, 4, 6, 8]
        release.set()
        wait_for(lambda: not any(t.name == "catmqtt-fill" for t in threading.enumerate()), "the fetch to end")
        assert client.fetch("evil/crash.b2nd", "0:5").tolist() == [0, 2, 4, 6, 8]


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


NPY = {"Content-Type": "application/x-npy"}


@pytest.mark.parametrize(
    ("answer", "error", "match"),
    [
        # A proxy's page is no data.
        ((200, {"Content-Type": "text/html"}, b"<html>sign in</html>"), Unavailable, "sent text/html"),
        ((200, NPY, npy(np.zeros((10, 100)))), Unavailable, r"of shape \(10, 100\), which it cannot select"),
        ((200, NPY, npy(np.float64(1.5))), Unavailable, r"of shape \(\), which it cannot select"),
        ((200, NPY, npy(np.arange(3)).replace(b"(3,)", b"(9999999999999,)")), Unavailable, "header says"),
        ((200, NPY, b"\x93NUMPY junk"), Unavailable, "as no array"),
        # Over what a first read reads: the metadata then (here, none).
        ((200, NPY, bytes(client_reader.FIRST_READ_BYTES + 1)), NotFound, "no /api/info"),
    ],
)
def test_a_first_read_checks_what_it_is_sent(answer, error, match):
    def route(path: str, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        return answer if path.startswith("/api/fetch/") else not_found(path)

    with serving(route) as url, catmqtt.Client(url) as client, pytest.raises(error, match=match):
        client.fetch("evil/a.b2nd", "0:3")
