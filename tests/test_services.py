"""Publisher and subscriber objects in this process, on a real broker and real HTTP servers."""

from __future__ import annotations

import json
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import blosc2
import numpy as np
import pytest
import requests
from flask import Flask

import catmqtt
from catmqtt import config, fsutil, storage, web, wire
from catmqtt.errors import CatmqttError, Unavailable
from catmqtt.publisher import Publisher, create_app
from catmqtt.publisher.roots import open_root
from catmqtt.subscriber import Subscriber
from catmqtt.subscriber.cache import Cache
from catmqtt.subscriber.flights import Fetcher, FetchSettings, Upstream
from catmqtt.wire import FRAME

from conftest import ChunkCounter, free_port, running, start_publisher, start_subscriber, wait_for


@pytest.fixture
def services(broker, tmp_path, root_dir):
    """The pair of `running`, with the publisher's chunk requests counted."""
    counters = []
    with running(broker, tmp_path, root_dir, lambda app: counters.append(ChunkCounter(app, delay=0.2))) as (
        pub,
        sub,
    ):
        yield pub, sub, counters[0]


def test_only_touched_chunks_are_fetched_once(services):
    _, sub, counter = services
    client = catmqtt.Client(sub.url)
    assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "250:260"), np.arange(250, 260))
    assert counter.requests == [("ds-1d.b2nd", "2")]
    assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "199:301"), np.arange(199, 301))
    assert sorted(counter.requests) == [("ds-1d.b2nd", "1"), ("ds-1d.b2nd", "2"), ("ds-1d.b2nd", "3")]
    # Everything again: only the missing chunks cross the link.
    assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "::-1"), np.arange(1000)[::-1])
    assert sorted(int(n) for _, n in counter.requests) == list(range(10))
    client.fetch("foo/ds-1d.b2nd")
    client.download("foo/ds-1d.b2nd", services[1].settings["statedir"].parent / "dl")
    assert len(counter.requests) == 10


def test_chunks_are_served_before_their_write_to_the_cache_and_fetched_once(services):
    _, sub, counter = services
    meta = sub.cache.dataset("foo", "ds-1d.b2nd")
    release = threading.Event()
    store = sub.cache.store_chunk

    def held_store(*args, **kwargs):
        release.wait(30)
        return store(*args, **kwargs)

    sub.cache.store_chunk = held_store
    try:
        client = catmqtt.Client(sub.url)
        # Served from memory while every write to the cache waits...
        assert np.array_equal(client.fetch("foo/ds-1d.b2nd"), np.arange(1000))
        assert sub.cache.cached_chunks("foo", "ds-1d.b2nd", meta, range(10)) == set()
        # ...and asked again meanwhile, from the chunks on their way to the cache.
        assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "::-3"), np.arange(1000)[::-3])
        assert sorted(int(n) for _, n in counter.requests) == list(range(10))
    finally:
        release.set()
    wait_for(
        lambda: sub.cache.cached_chunks("foo", "ds-1d.b2nd", meta, range(10)) == set(range(10)),
        "the chunks written to the cache",
    )
    assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "5:7"), [5, 6])
    assert len(counter.requests) == 10
    assert requests.get(f"{sub.url}/api/stats", timeout=5).json()["total"]["fetched_chunks"] == 10


def test_concurrent_requests_for_a_missing_chunk_cause_one_fetch(services):
    _, sub, counter = services

    def fetch(_):
        with catmqtt.Client(sub.url) as client:
            return client.fetch("foo/dir2/ds-4d.b2nd", "1, 0:2, 0:3, 0:4")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(fetch, range(8)))
    expected = (np.arange(120) + np.arange(120) * 1j).reshape(2, 3, 4, 5)[1, 0:2, 0:3, 0:4]
    assert all(np.array_equal(r, expected) for r in results)
    # That selection is exactly chunk (1, 0, 0, 0) = 8 of the (2, 2, 2, 2) grid.
    assert counter.requests == [("dir2/ds-4d.b2nd", "8")]


def fetched_bytes(sub) -> int:
    return requests.get(f"{sub.url}/api/stats", timeout=5).json()["total"]["fetched_bytes"]


def cached(sub, path: str, numbers: list[int]) -> set[int]:
    return sub.cache.cached_chunks("foo", path, sub.cache.dataset("foo", path), numbers)


def hold_rests(app, release: threading.Event, chunks: list[str] | None = None) -> None:
    """Hold each Range request (a piece of a chunk's rest) at publisher `app` until
    `release` is set, noting its chunk number in `chunks`."""

    @app.before_request
    def hold():
        from flask import request

        if "Range" in request.headers:
            if chunks is not None:
                chunks.append(request.args["nchunk"])
            release.wait(30)


def test_a_few_items_come_with_their_blocks_before_the_rest_of_the_chunk(broker, tmp_path, root_dir):
    release = threading.Event()
    counters = []

    def instrument(app):
        counters.append(ChunkCounter(app))
        hold_rests(app, release)

    with running(broker, tmp_path, root_dir, instrument) as (pub, sub), ThreadPoolExecutor(1) as pool:
        client = catmqtt.Client(sub.url)
        # Items 321-322 are in block 2 (blocks of 10) of chunk 3 (chunks of 100).
        assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "321:323"), [321, 322])
        assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "325:329"), np.arange(325, 329))
        assert cached(sub, "ds-1d.b2nd", [3]) == set()
        # Another block of the chunk waits for the rest of it.
        other = pool.submit(client.fetch, "foo/ds-1d.b2nd", "350:352")
        with pytest.raises(TimeoutError):
            other.result(timeout=0.5)
        release.set()
        assert np.array_equal(other.result(timeout=30), [350, 351])
        wait_for(lambda: cached(sub, "ds-1d.b2nd", [3]) == {3}, "chunk 3 in the cache")
        counter = counters[0]
        assert counter.requests == [("ds-1d.b2nd", "3")]
        assert counter.ranges and all(r[:2] == ("ds-1d.b2nd", "3") for r in counter.ranges)
        # Each byte of the chunk crossed once.
        assert fetched_bytes(sub) == len(pub.root.chunk("ds-1d.b2nd", 3)[0])
        assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "300:400"), np.arange(300, 400))
        assert len(counter.requests) == 1


def test_rests_under_way_leave_the_fetch_workers_free(broker, tmp_path, root_dir):
    release = threading.Event()

    def instrument(app):
        hold_rests(app, release)

    with (
        running(broker, tmp_path, root_dir, instrument, fetch_workers=2) as (_, sub),
        ThreadPoolExecutor(1) as pool,
    ):
        client = catmqtt.Client(sub.url)
        try:
            # A few items of each of five chunks, then a whole chunk, with two fetch
            # workers and the rests of the first five held back at the publisher.
            for start in (21, 121, 221, 321, 421):
                got = pool.submit(client.fetch, "foo/ds-1d.b2nd", f"{start}:{start + 2}").result(timeout=10)
                assert np.array_equal(got, [start, start + 1])
            got = pool.submit(client.fetch, "foo/ds-1d.b2nd", "700:800").result(timeout=10)
            assert np.array_equal(got, np.arange(700, 800))
            assert cached(sub, "ds-1d.b2nd", list(range(5))) == set()
        finally:
            release.set()
        first = list(range(5))
        wait_for(lambda: cached(sub, "ds-1d.b2nd", first) == set(first), "chunks 0-4 in the cache")


@pytest.mark.parametrize("released", [True, False])
def test_a_stopping_subscriber_gives_the_rests_under_way_a_grace(broker, tmp_path, root_dir, released):
    release = threading.Event()
    ranges: list[str] = []

    def instrument(app):
        hold_rests(app, release, ranges)

    pub = start_publisher(broker, tmp_path / "pub", root_dir, instrument)
    try:
        sub = start_subscriber(broker, tmp_path / "sub", fetch={"rest_grace": 10.0 if released else 0.5})
        try:
            sub.follower.subscribe("foo")
            client = catmqtt.Client(sub.url)
            # The rest of chunk 0 is held at the publisher; that of chunk 1 waits for it.
            for start in (21, 121):
                got = client.fetch("foo/ds-1d.b2nd", f"{start}:{start + 2}")
                assert np.array_equal(got, [start, start + 1])
            wait_for(lambda: ranges == ["0"], "the rest of chunk 0 asked for")
        finally:
            # Released while the subscriber stops, or only once it has stopped.
            releasing = threading.Timer(0.3 if released else 0, release.set)
            try:
                if released:
                    releasing.start()
                sub.stop()
            finally:
                if not released:
                    releasing.start()

        def resting() -> bool:
            return any(t.name.startswith("rest") for t in threading.enumerate())

        wait_for(lambda: not resting(), "the rests' threads to end")
        cache = Cache.open(tmp_path / "sub")
        try:
            meta = cache.dataset("foo", "ds-1d.b2nd")
            kept = cache.cached_chunks("foo", "ds-1d.b2nd", meta, [0, 1])
        finally:
            cache.close()
        if released:
            # Within the grace: both rests came, and their chunks are in the cache.
            assert set(ranges) == {"0", "1"} and kept == {0, 1}
        else:
            # After it, no more rests were asked for.
            assert ranges == ["0"] and kept == set()
    finally:
        pub.stop()


def test_the_rest_of_a_chunk_waits_for_other_fetches(broker, tmp_path, root_dir):
    release = threading.Event()
    log = []

    def instrument(app):
        from flask import request

        @app.before_request
        def hold_chunk_5():
            if request.path == "/api/chunk/ds-1d.b2nd":
                log.append((request.args["nchunk"], "Range" in request.headers))
                if request.args["nchunk"] == "5":
                    release.wait(30)

        @app.after_request
        def sent(response):
            if request.path == "/api/chunk/ds-1d.b2nd":
                log.append((request.args["nchunk"], "sent"))
            return response

    with running(broker, tmp_path, root_dir, instrument) as (_, sub), ThreadPoolExecutor(1) as pool:
        client = catmqtt.Client(sub.url)
        # A whole chunk (5), held at the publisher; meanwhile a few items of chunk 3.
        whole = pool.submit(client.fetch, "foo/ds-1d.b2nd", "500:600")
        wait_for(lambda: ("5", False) in log, "the request for chunk 5")
        assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "321:323"), [321, 322])
        release.set()
        assert np.array_equal(whole.result(timeout=30), np.arange(500, 600))
        wait_for(lambda: cached(sub, "ds-1d.b2nd", [3]) == {3}, "chunk 3 in the cache")
    # The rest of chunk 3 was asked for only once chunk 5 was sent.
    rest = [i for i, entry in enumerate(log) if entry == ("3", True)]
    assert rest and min(rest) > log.index(("5", "sent")), log


# Seconds the rest of a chunk may take: 3600, any link is fast; 0, any link is slow.
@pytest.mark.parametrize(("parts_worth", "in_parts"), [(3600.0, False), (0.0, True)])
def test_blocks_come_first_only_over_a_slow_link(broker, tmp_path, root_dir, parts_worth, in_parts):
    data = np.random.default_rng(3).random(1 << 20)
    # Chunks of 2 MiB (large enough to measure the link), blocks of 128 KiB.
    blosc2.asarray(data, chunks=(1 << 18,), blocks=(1 << 14,), urlpath=str(root_dir / "big.b2nd"), mode="w")
    counters = []
    instrument = lambda app: counters.append(ChunkCounter(app))  # noqa: E731
    with running(broker, tmp_path, root_dir, instrument, fetch={"parts_worth": parts_worth}) as (_, sub):
        client = catmqtt.Client(sub.url)
        counter = counters[0]
        # Chunk 0 whole: its bytes tell how fast the link is.
        assert np.array_equal(client.fetch("foo/big.b2nd", "0:262144"), data[:262144])
        assert np.array_equal(client.fetch("foo/big.b2nd", "262145:262150"), data[262145:262150])
        wait_for(lambda: cached(sub, "big.b2nd", [0, 1]) == {0, 1}, "chunks 0-1 in the cache")
        assert sorted(counter.requests) == [("big.b2nd", "0"), ("big.b2nd", "1")]
        assert {r[:2] for r in counter.ranges} == ({("big.b2nd", "1")} if in_parts else set())


def test_small_chunks_measure_the_link_too(broker, tmp_path, root_dir):
    data = np.random.default_rng(4).random(1 << 19)
    # Chunks of 64 KiB: none alone is large enough to measure the link.
    blosc2.asarray(data, chunks=(1 << 13,), blocks=(1 << 10,), urlpath=str(root_dir / "small.b2nd"), mode="w")
    counters = []
    # A link is slow here if a chunk takes over a second: measured, loopback is
    # fast even on a loaded machine.
    instrument = lambda app: counters.append(ChunkCounter(app))  # noqa: E731
    with running(broker, tmp_path, root_dir, instrument, fetch={"parts_worth": 1.0}) as (_, sub):
        client = catmqtt.Client(sub.url)
        ranged = []
        for n in range(40):
            start = n * (1 << 13) + 5
            got = client.fetch("foo/small.b2nd", f"{start}:{start + 3}")
            assert np.array_equal(got, data[start : start + 3])
            wait_for(lambda n=n: cached(sub, "small.b2nd", [n]) == {n}, f"chunk {n} in the cache")
            if any(r[:2] == ("small.b2nd", str(n)) for r in counters[0].ranges):
                ranged.append(n)
    # In parts until 1 MiB of responses measured the link, then whole.
    assert ranged and ranged[0] == 0 and ranged[-1] < 30, f"chunks fetched in parts: {ranged}"


@pytest.mark.parametrize(
    "knobs",
    [{"workers": 0}, {"timeout": 0}, {"min_rate": -1}, {"parts_worth": -1.0}, {"rest_grace": -0.5}],
)
def test_fetch_settings_are_checked(knobs):
    with pytest.raises(ValueError, match="invalid fetch settings"):
        FetchSettings(**{"workers": 2, "timeout": 5, **knobs})


def test_a_closed_fetcher_says_it_is_stopping(tmp_path):
    cache = Cache.open(tmp_path)
    fetcher = Fetcher(cache, FetchSettings(workers=2, timeout=5))
    fetcher.close()
    source = Upstream("foo", "ds.b2nd", {"etag": "e", "nchunks": 1, "nbytes": 8}, "http://127.0.0.1:9")
    errors: list[Exception] = []

    def ensure() -> None:
        try:
            fetcher.ensure(source, [0], missing=[0])
        except Exception as exc:
            errors.append(exc)

    try:
        # A daemon thread: a request left waiting forever fails the test, not the run.
        thread = threading.Thread(target=ensure, daemon=True)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "the request is still waiting"
        assert [type(e) for e in errors] == [Unavailable] and "stopping" in str(errors[0])
        # Nothing left behind for the next request to wait for.
        assert fetcher.in_flight() == 0
    finally:
        cache.close()


@pytest.mark.parametrize("blocks", [False, True])
def test_a_publisher_may_send_whole_chunks(broker, tmp_path, root_dir, blocks):
    counters = []

    def instrument(app):
        counters.append(ChunkCounter(app))
        inner = app.wsgi_app

        def whole_chunks(environ, start_response):
            # As a publisher that does not know Range (nor ?blocks=, unless `blocks`).
            query = environ["QUERY_STRING"].split("&")
            environ["QUERY_STRING"] = "&".join(p for p in query if blocks or not p.startswith("blocks="))
            environ.pop("HTTP_RANGE", None)
            return inner(environ, start_response)

        app.wsgi_app = whole_chunks

    with running(broker, tmp_path, root_dir, instrument) as (pub, sub):
        client = catmqtt.Client(sub.url)
        assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "321:323"), [321, 322])
        wait_for(lambda: cached(sub, "ds-1d.b2nd", [3]) == {3}, "chunk 3 in the cache")
        size = len(pub.root.chunk("ds-1d.b2nd", 3)[0])
        if not blocks:
            assert counters[0].requests == [("ds-1d.b2nd", "3")] and counters[0].ranges == []
            assert fetched_bytes(sub) == size
        else:
            # The rest came as the whole chunk: the stats count every byte received.
            assert counters[0].requests == [("ds-1d.b2nd", "3")] * 2
            assert size < fetched_bytes(sub) < 2 * size


def test_parts_without_the_blocks_asked_for_are_not_used_early(broker, tmp_path, root_dir):
    def instrument(app):
        @app.after_request
        def only_the_head(response):
            # A publisher that sends the header and block offsets, not the blocks.
            parts = response.headers.get("X-Catmqtt-Parts")
            if parts:
                spans, size = wire.parse_parts(parts)
                response.set_data(response.get_data()[: spans[0][1] - spans[0][0]])
                response.headers["X-Catmqtt-Parts"] = wire.format_parts(spans[:1], size)
            return response

    with running(broker, tmp_path, root_dir, instrument) as (_, sub):
        client = catmqtt.Client(sub.url)
        # Zeros would decode silently; the whole chunk comes first instead.
        assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "321:323"), [321, 322])
        wait_for(lambda: cached(sub, "ds-1d.b2nd", [3]) == {3}, "chunk 3 in the cache")


@pytest.mark.parametrize("parts", ["0-9/10", "0-1,0-5/800", "junk", "0-999999999/999999999"])
def test_damaged_parts_of_a_chunk_are_refused(broker, tmp_path, root_dir, parts):
    def instrument(app):
        @app.after_request
        def damage(response):
            if "X-Catmqtt-Parts" in response.headers:
                response.headers["X-Catmqtt-Parts"] = parts
            return response

    with running(broker, tmp_path, root_dir, instrument) as (_, sub):
        client = catmqtt.Client(sub.url)
        with pytest.raises(Unavailable, match="sent a damaged chunk 3 of 'ds-1d.b2nd'"):
            client.fetch("foo/ds-1d.b2nd", "321:323")
        assert cached(sub, "ds-1d.b2nd", [3]) == set()


def test_missing_chunks_are_fetched_concurrently(broker, tmp_path, root_dir):
    in_flight = []
    active = [0]
    overlap = threading.Condition()

    def instrument(app):
        @app.before_request
        def track():
            with overlap:
                active[0] += 1
                in_flight.append(active[0])
                overlap.notify_all()
                # Each request is held until two were seen at once (or a deadline passes).
                overlap.wait_for(lambda: max(in_flight) > 1, timeout=5)
                active[0] -= 1

    with running(broker, tmp_path, root_dir, instrument) as (_, sub):
        assert np.array_equal(sub.reader.fetch("foo/ds-1d.b2nd", ""), np.arange(1000))
    assert max(in_flight) > 1


def test_publisher_root_skips_what_it_must_not_serve(tmp_path, root_dir):
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, root_dir / "link-out.txt")
    os.symlink(root_dir / "README.md", root_dir / "link-in.md")
    os.symlink(tmp_path, root_dir / "dirlink")
    (root_dir / ".hidden").write_text("x")
    (root_dir / "bad.b2nd").write_bytes(b"not blosc2 at all")
    root = open_root("foo", root_dir, tmp_path / "state")
    root.scan()
    assert "link-out.txt" not in root.entries and "dirlink/secret.txt" not in root.entries
    assert ".hidden" not in root.entries
    assert root.entries["link-in.md"].meta["kind"] == "file"
    assert root.entries["bad.b2nd"].meta["kind"] == "file"
    client = create_app(root).test_client()
    assert client.get("/api/download/link-out.txt").status_code == 404
    assert client.get("/api/download/link-in.md").data == (root_dir / "README.md").read_bytes()
    chunk = client.get("/api/chunk/dir1/ds-2d.b2nd?nchunk=3")
    assert chunk.data == blosc2.open(str(root_dir / "dir1/ds-2d.b2nd")).schunk.get_chunk(3)
    assert chunk.headers["X-Catmqtt-Etag"] == root.entries["dir1/ds-2d.b2nd"].meta["etag"]


def test_publisher_compresses_plain_files_once(tmp_path, root_dir):
    big = root_dir / "big.bin"
    data = os.urandom(3 << 20) + b"tail"
    big.write_bytes(data)
    root = open_root("foo", root_dir, tmp_path / "state")
    root.scan()
    meta = root.entries["big.bin"].meta
    assert (meta["kind"], meta["nchunks"], meta["nbytes"]) == ("file", 4, len(data))
    client = create_app(root).test_client()
    pieces = [blosc2.decompress2(client.get(f"/api/chunk/big.bin?nchunk={n}").data) for n in range(4)]
    assert b"".join(pieces) == data
    frame = tmp_path / "state/files/big.bin.b2frame"
    built = frame.stat().st_mtime_ns
    open_root("foo", root_dir, tmp_path / "state").scan()
    again = open_root("foo", root_dir, tmp_path / "state")
    again.scan()
    again.chunk("big.bin", 0)
    assert frame.stat().st_mtime_ns == built


def test_publisher_keeps_chunks_read_for_parts_a_moment(tmp_path, root_dir):
    root = open_root("foo", root_dir, tmp_path / "state")
    root.scan()
    root.recent_bytes = 3 * len(root.chunk("ds-1d.b2nd", 0)[0])
    reads = []
    read = root._read_chunk
    root._read_chunk = lambda entry, n: reads.append(n) or read(entry, n)
    client = create_app(root).test_client()
    for n in (1, 2, 1, 2):
        # The blocks first, then the rest.
        first = client.get(f"/api/chunk/ds-1d.b2nd?nchunk={n}&blocks=0-0")
        rest = client.get(f"/api/chunk/ds-1d.b2nd?nchunk={n}", headers={"Range": "bytes=40-"})
        assert "X-Catmqtt-Parts" in first.headers and rest.status_code == 206
    assert reads == [1, 2]
    # A bounded number of bytes: the oldest go first.
    for n in range(3, 10):
        client.get(f"/api/chunk/ds-1d.b2nd?nchunk={n}", headers={"Range": "bytes=0-9"})
    client.get("/api/chunk/ds-1d.b2nd?nchunk=9", headers={"Range": "bytes=0-9"})
    client.get("/api/chunk/ds-1d.b2nd?nchunk=1", headers={"Range": "bytes=0-9"})
    assert reads == [1, 2, *range(3, 10), 1]
    # Whole chunks are not kept.
    client.get("/api/chunk/ds-1d.b2nd?nchunk=0")
    client.get("/api/chunk/ds-1d.b2nd?nchunk=0")
    assert reads[-2:] == [0, 0]


def test_a_publisher_does_no_io_until_started(tmp_path, root_dir):
    settings = config.node_settings(
        {}, "publisher", broker="mqtt://127.0.0.1:1", http="127.0.0.1:0", statedir=tmp_path / "state"
    )
    pub = Publisher("foo", root_dir, settings)
    # No state directory, no socket, no scan: its app serves an empty root meanwhile.
    assert not (tmp_path / "state").exists() and pub.server is None and pub.url is None
    assert pub.app.test_client().get("/api/list").json == []
    pub.bind()
    assert (tmp_path / "state").is_dir() and pub.url == f"http://127.0.0.1:{pub.server.port}"
    assert pub.root.entries == {}
    pub.stop()


def test_a_subscriber_does_no_io_until_bound(tmp_path):
    settings = config.node_settings(
        {}, "subscriber", broker="mqtt://127.0.0.1:1", http="127.0.0.1:0", statedir=tmp_path / "state"
    )
    sub = Subscriber(settings, "sub-1")
    assert not (tmp_path / "state").exists() and sub.url is None
    sub.bind()
    assert (
        tmp_path / "state" / "cache.sqlite"
    ).is_file() and sub.url == f"http://127.0.0.1:{sub.server.port}"
    # Bound, not yet serving nor connected.
    assert sub.node is None
    sub.stop()
    with socket.create_server(("127.0.0.1", sub.server.port)):
        pass


def test_a_subscriber_that_cannot_bind_undoes_what_it_did(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        settings = config.node_settings(
            {}, "subscriber", broker="mqtt://127.0.0.1:1", http=f"127.0.0.1:{port}", statedir=tmp_path / "s"
        )
        sub = Subscriber(settings, "sub-1")
        with pytest.raises(CatmqttError, match="address already in use"):
            sub.start()
    # The cache it opened is closed.
    assert sub.url is None
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        sub.cache.catalogue.set_subscribed("foo", True)


def test_publisher_refuses_a_root_that_is_not_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CatmqttError, match="is not a directory"):
        open_root("foo", tmp_path / "file", tmp_path / "state")


def test_empty_datasets(broker, tmp_path, root_dir):
    (root_dir / "empty.txt").write_bytes(b"")
    blosc2.asarray(np.empty((0, 5)), urlpath=str(root_dir / "empty.b2nd"), mode="w")
    with running(broker, tmp_path, root_dir) as (_, sub):
        client = catmqtt.Client(sub.url)
        assert client.fetch("foo/empty.txt") == b""
        assert client.download("foo/empty.txt", tmp_path / "dl").read_bytes() == b""
        assert client.fetch("foo/empty.b2nd").shape == (0, 5)
        assert client.fetch("foo/empty.b2nd", "::-1, 2").shape == (0,)
        assert blosc2.open(str(client.download("foo/empty.b2nd", tmp_path / "dl"))).shape == (0, 5)


def test_chunks_sent_by_reference_arrive_whole(broker, tmp_path, root_dir):
    # Incompressible chunks of 1.5 MiB, sent without a copy, with a Content-Length
    # (one chunk) and chunk-framed (a frames stream); a small one is copied as before.
    per_chunk = 3 * 2**20 // 2 // 8
    data = np.random.default_rng(6).random(3 * per_chunk + 5)
    blosc2.asarray(data, urlpath=str(root_dir / "big.b2nd"), mode="w", chunks=(per_chunk,))
    with running(broker, tmp_path, root_dir) as (_, sub):
        client = catmqtt.Client(sub.url)
        assert np.array_equal(client.fetch("foo/big.b2nd"), data)
        assert np.array_equal(client.fetch("foo/big.b2nd", "10:20"), data[10:20])
        assert np.array_equal(client.fetch("foo/big.b2nd", "-3:"), data[-3:])
        for n in (1, 3):
            chunk = client.get_chunk("foo/big.b2nd", n)
            assert (len(chunk) > web.BY_REFERENCE) == (n == 1)
            # The last chunk is padded to the chunk size.
            expected = data[n * per_chunk : (n + 1) * per_chunk]
            assert np.array_equal(np.frombuffer(blosc2.decompress2(chunk))[: len(expected)], expected)
        # HTTP/1.0 has no chunked framing: the stream ends when the connection closes.
        status, body = http10_get(sub.server.port, "/api/chunks/foo/big.b2nd?nchunks=0-3")
        assert status == 200
        frames = {}
        while body:
            n, size = FRAME.unpack(body[: FRAME.size])
            frames[n], body = body[FRAME.size : FRAME.size + size], body[FRAME.size + size :]
        assert frames == {n: client.get_chunk("foo/big.b2nd", n) for n in range(4)}
        # HEAD: the headers only.
        head = requests.head(f"{sub.url}/api/chunk/foo/big.b2nd", params={"nchunk": 1}, timeout=30)
        assert (head.status_code, head.content) == (200, b"")
        assert int(head.headers["Content-Length"]) == len(client.get_chunk("foo/big.b2nd", 1))


def http10_get(port: int, target: str) -> tuple[int, bytes]:
    """Send an HTTP/1.0 GET; return the status and the body read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(f"GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        response = b""
        while part := conn.recv(1 << 20):
            response += part
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("accept", ["application/x-npy", "*/*"])
def test_large_fetches_stream_in_slabs(broker, tmp_path, root_dir, monkeypatch, accept):
    import io

    from catmqtt.subscriber import app

    data = np.random.default_rng(5).random((300, 70))
    blosc2.asarray(data, urlpath=str(root_dir / "wide.b2nd"), mode="w", chunks=(32, 16))
    (root_dir / "text.txt").write_bytes(b"0123456789" * 5000)
    # Pieces of a few kilobytes stand in for the 8 MiB ones.
    monkeypatch.setattr(app, "PIECE", 4000)
    with running(broker, tmp_path, root_dir) as (_, sub):
        for key, text in [((slice(None, None, -3), slice(5, 60)), "::-3, 5:60"), ((7,), "7"), ((), "")]:
            response = requests.get(
                f"{sub.url}/api/fetch/foo/wide.b2nd",
                params={"slice": text},
                headers={"Accept": accept},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            if accept == "*/*":
                got = blosc2.ndarray_from_cframe(response.content)[()]
            else:
                got = np.load(io.BytesIO(response.content))
            assert np.array_equal(got, data[key])
        response = requests.get(f"{sub.url}/api/fetch/foo/text.txt", params={"slice": "::-7"}, timeout=30)
        assert response.content == (b"0123456789" * 5000)[::-7]


def test_limits_of_one_request(broker, tmp_path, root_dir):

    with running(broker, tmp_path, root_dir, max_fetch_bytes=2000) as (_, sub):
        chunks = requests.get(f"{sub.url}/api/chunks/foo/ds-1d.b2nd", params={"nchunks": "0-9"}, timeout=10)
        assert chunks.status_code == 413 and "ask in parts" in chunks.json()["error"]
        whole = requests.get(f"{sub.url}/api/fetch/foo/ds-1d.b2nd", timeout=10)
        assert whole.status_code == 413 and "max_fetch_bytes" in whole.json()["error"]
        part = requests.get(f"{sub.url}/api/fetch/foo/ds-1d.b2nd", params={"slice": "::10"}, timeout=10)
        assert part.status_code == 200


def test_state_directories_are_never_published(tmp_path, root_dir):
    fsutil.make_statedir(root_dir / "_catmqtt" / "subscriber")
    (root_dir / "_catmqtt" / "subscriber" / "cache.sqlite").write_bytes(b"private")
    root = open_root("foo", root_dir, tmp_path / "state")
    root.scan()
    assert not any(path.startswith("_catmqtt/subscriber") for path in root.entries)


def test_stepped_reads_of_byte_streams(broker, tmp_path, root_dir):
    data = bytes(range(256)) * 1_000
    blosc2.SChunk(
        chunksize=1000, data=data, urlpath=str(root_dir / "big.b2frame"), mode="w", cparams={"typesize": 1}
    )
    cases = [
        ("::123457", slice(None, None, 123457)),
        ("5::-99999", slice(5, None, -99999)),
        ("::3", slice(None, None, 3)),
        ("17", slice(17, 18)),
    ]
    with running(broker, tmp_path, root_dir) as (_, sub):
        for text, key in cases:
            assert sub.reader.fetch("foo/big.b2frame", text) == data[key], text


def test_publisher_keeps_manifests_per_etag_and_digest_algorithm(tmp_path, root_dir):
    root = open_root("foo", root_dir, tmp_path / "state")
    root.scan()
    entry = root.entries["dir1/ds-2d.b2nd"]
    array = blosc2.open(str(root_dir / "dir1/ds-2d.b2nd"))
    assert entry.digests == [storage.chunk_digest(array.get_chunk(n)) for n in range(array.schunk.nchunks)]
    saved = tmp_path / "state/manifests/dir1/ds-2d.b2nd.json"
    manifest = json.loads(saved.read_text())
    assert manifest["algorithm"] == storage.DIGEST_ALGORITHM
    # Saved digests of the same etag are reused...
    manifest["digests"][0] = "0" * 32
    saved.write_text(json.dumps(manifest))
    assert open_root("foo", root_dir, tmp_path / "state").scan()["dir1/ds-2d.b2nd"].digests[0] == "0" * 32
    # ...but not those of another algorithm (an older catmqtt's): they are computed again.
    manifest["algorithm"] = "blake2b-128"
    saved.write_text(json.dumps(manifest))
    again = open_root("foo", root_dir, tmp_path / "state").scan()["dir1/ds-2d.b2nd"]
    assert again.digests == entry.digests


CHURN = """
import ctypes, os, queue, resource, sys, tempfile, threading
from catmqtt.web import tune_allocator
if sys.argv[1] == "tuned":
    tune_allocator()

# As a server does: worker threads build chunk-sized bodies, page by page,
# and another thread frees each once it is sent.
sent = queue.Queue(maxsize=2)

def send():
    while sent.get() is not None:
        pass

def serve():
    for _ in range(40):
        buffer = bytearray(4 << 20)
        buffer[::4096] = bytes(1024)
        sent.put(bytes(buffer))

before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
sender = threading.Thread(target=send)
sender.start()
workers = [threading.Thread(target=serve) for _ in range(8)]
for t in workers:
    t.start()
for t in workers:
    t.join()
sent.put(None)
sender.join()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
# glibc describes its arenas (one heap each) in XML.
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "malloc.xml")
    stream = ctypes.c_void_p(libc.fopen(path.encode(), b"w"))
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    heaps = open(path).read().count("<heap nr=")
print(heaps, faults)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tune_allocator tunes glibc's malloc")
def test_servers_reuse_freed_chunk_buffers():
    # glibc's defaults, whatever this environment sets.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

    def run(mode: str) -> list[int]:
        done = subprocess.run(
            [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True, env=env
        )
        return [int(x) for x in done.stdout.split()]

    (heaps, faults), (tuned_heaps, tuned_faults) = run("default"), run("tuned")
    # Two arenas, not one per thread; their freed memory reused, not faulted in again.
    assert tuned_heaps == 2 < heaps
    assert tuned_faults < faults


@pytest.mark.parametrize("started", [True, False])
def test_a_server_stops_once_and_frees_its_port(started):
    server = web.Server(Flask(__name__), "127.0.0.1", 0, threads=2)
    if started:
        server.start()
        assert requests.get(f"{server.url}/nothing", timeout=5).status_code == 404
    server.stop()
    server.stop()
    with socket.create_server(("127.0.0.1", server.port)):
        pass


def test_fetches_from_publishers_take_proxies_from_the_environment(broker, tmp_path, root_dir, monkeypatch):
    # Publishers are at 127.0.0.1, behind a proxy that nobody listens on; the
    # client reaches the subscriber as localhost, which bypasses it.
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "localhost")
    with running(broker, tmp_path, root_dir) as (_, sub):
        client = catmqtt.Client(sub.url.replace("127.0.0.1", "localhost"))
        assert "foo" in client.get_roots()
        with pytest.raises(Unavailable, match="publisher of root 'foo' at .* is unreachable"):
            client.fetch("foo/ds-1d.b2nd", "0:10")
