"""The subscriber's views through Flask's test client: no broker, no port.

The follower is fed announcements as MQTT would deliver them, and the
cache holds every chunk beforehand, so that nothing is fetched: the
publisher's URL names a host that does not exist.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import blosc2
import numpy as np
import pytest

from catmqtt import storage
from catmqtt.publisher.roots import open_root
from catmqtt.schema import dumps
from catmqtt.subscriber.accounts import Accounts
from catmqtt.subscriber.answers import Answers
from catmqtt.subscriber.app import create_app
from catmqtt.subscriber.cache import Cache
from catmqtt.subscriber.flights import Fetcher, FetchSettings
from catmqtt.subscriber.follower import Follower
from catmqtt.subscriber.guard import Guard
from catmqtt.subscriber.large import Budget, Builders
from catmqtt.subscriber.reader import Reader
from catmqtt.subscriber.trust import Trust
from catmqtt.topics import dataset_topic, node_topic, root_topic
from catmqtt.wire import CFRAME, ETAG, FRAME, NPY

PREFIX = "catmqtt"
SECRET = b"a secret of the tests"
PUBLISHER = "http://publisher.invalid:8001"


class Topics:
    """What the follower subscribes to, recorded; never connected, so it never waits."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.calls: list[tuple[str, str]] = []

    def subscribe(self, topic_filter: str) -> None:
        self.calls.append(("subscribe", topic_filter))

    def unsubscribe(self, topic_filter: str) -> None:
        self.calls.append(("unsubscribe", topic_filter))


def feed(follower: Follower, topic: str, obj: dict) -> None:
    follower.on_message(topic, dumps(obj))


def announce_root(follower: Follower, name: str, datasets: int) -> None:
    root = {
        "name": name,
        "url": PUBLISHER,
        "publisher": "pub-1",
        "datasets": datasets,
        "etag": "1",
        "time": 1.0,
    }
    feed(follower, root_topic(PREFIX, name), root)


@pytest.fixture
def node(tmp_path, sample_root) -> Iterator[SimpleNamespace]:
    """A subscriber's app, as `Subscriber` makes it without accounts."""
    with views(tmp_path, sample_root) as made:
        yield made


@pytest.fixture
def node_with_accounts(tmp_path, sample_root) -> Iterator[SimpleNamespace]:
    """A subscriber's app with accounts: `token` is an admin's."""
    with views(tmp_path, sample_root, accounts=True) as made:
        yield made


@contextmanager
def views(tmp_path, sample_root, accounts: bool = False) -> Iterator[SimpleNamespace]:
    root = open_root("foo", sample_root, tmp_path / "pub")
    root.scan()
    cache = Cache.open(tmp_path / "sub")
    fetcher = Fetcher(cache, FetchSettings(2, 5))
    topics = Topics()
    follower = Follower(PREFIX, cache, Trust(None, cache.catalogue), fetcher, topics)
    reader = Reader(cache, fetcher, follower, max_fetch=1 << 20)
    (tmp_path / "sub" / "tmp").mkdir()
    builders = Builders(2)
    # Threads for many bundles: the fuzzing's test client does not close what it is
    # answered, which gives a bundle's thread back (waitress always does).
    answers = Answers(reader, Budget(1024, 64 << 20, 64 << 20), builders, tmp_path / "sub" / "tmp")
    app = create_app(reader, follower, answers, cache.dir)
    store = Accounts(tmp_path / "sub") if accounts else None
    Guard({"http": ("127.0.0.1", 0)}, store, SECRET if accounts else None).install(app)
    token = None
    if store is not None:
        store.add_user("admin", "a password", admin=True)
        token = store.login("admin", "a password", SECRET, 3600)[0]
    try:
        announce_root(follower, "foo", len(root.entries))
        announce_root(follower, "bar", 0)
        feed(
            follower,
            node_topic(PREFIX, "publisher", "pub-1"),
            {"role": "publisher", "id": "pub-1", "status": "online", "session": 1, "url": PUBLISHER},
        )
        follower.subscribe("foo")
        for path, entry in root.entries.items():
            feed(follower, dataset_topic(PREFIX, "foo", path), entry.meta)
        for path, entry in root.entries.items():
            follower.settled("foo", path)
            for n in range(entry.meta["nchunks"]):
                data, _ = root.chunk(path, n)
                digest = storage.chunk_digest(data)
                assert cache.store_chunk("foo", path, cache.dataset("foo", path), n, data, digest, PUBLISHER)
        yield SimpleNamespace(
            app=app, client=app.test_client(), topics=topics, root=root, fetcher=fetcher, token=token
        )
    finally:
        if store is not None:
            store.close()
        follower.close()
        builders.close()
        fetcher.close()
        cache.close()


def error(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.data[:200])
    body = response.get_json()
    assert body["status"] == status
    return body["error"]


def test_roots_and_lists(node):
    roots = node.client.get("/api/roots").get_json()
    assert roots["foo"] == {"name": "foo", "url": PUBLISHER, "online": True, "subscribed": True, "key": None}
    assert roots["bar"]["subscribed"] is False
    assert node.client.get("/api/list/foo").get_json() == sorted(node.root.entries)
    assert node.client.get("/api/list/foo/dir1").get_json() == [
        p for p in sorted(node.root.entries) if p.startswith("dir1/")
    ]
    info = node.client.get("/api/info/foo").get_json()
    assert (info["url"], info["online"], info["subscribed"], info["skipped"]) == (PUBLISHER, True, True, [])
    # The web page lists them from /api/roots (tests/test_web.py, in a browser).
    page = node.client.get("/").get_data(as_text=True)
    assert '<ul id="roots">' in page and 'src="static/app.js"' in page


def test_subscribing_follows_the_root_topics(node):
    assert node.client.post("/api/unsubscribe/foo").get_json() == "Ok"
    assert node.topics.calls[-1] == ("unsubscribe", f"{root_topic(PREFIX, 'foo')}/ds/#")
    assert "not subscribed" in error(node.client.get("/api/list/foo"), 409)
    assert node.client.post("/api/subscribe/foo").get_json() == "Ok"
    assert node.topics.calls[-1] == ("subscribe", f"{root_topic(PREFIX, 'foo')}/ds/#")
    assert node.client.get("/api/list/foo").status_code == 200
    assert "no root 'nope'" in error(node.client.post("/api/subscribe/nope"), 404)


def test_info_is_conditional(node):
    response = node.client.get("/api/info/foo/ds-1d.b2nd")
    meta = response.get_json()
    assert meta["shape"] == [1000] and meta["schunk"]["nchunks"] == meta["nchunks"]
    again = node.client.get("/api/info/foo/ds-1d.b2nd", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304


@pytest.mark.parametrize("text, key", [("10:20", slice(10, 20)), ("::-7", slice(None, None, -7)), ("5", 5)])
def test_fetch_answers_npy_and_blosc2(node, text, key):
    expected = np.arange(1000)[key]
    npy = node.client.get("/api/fetch/foo/ds-1d.b2nd", query_string={"slice": text}, headers={"Accept": NPY})
    assert npy.mimetype == NPY
    assert np.array_equal(np.load(io.BytesIO(npy.data)), expected)
    frame = node.client.get("/api/fetch/foo/ds-1d.b2nd", query_string={"slice": text})
    assert frame.mimetype == CFRAME
    got = blosc2.ndarray_from_cframe(frame.data)[()]
    # A scalar comes back 0-d, as numpy gives it.
    assert np.shape(got) == np.shape(expected) and np.array_equal(got, expected)


def test_chunks_come_in_frames(node):
    meta = node.client.get("/api/info/foo/ds-1d.b2nd").get_json()
    response = node.client.get(
        "/api/chunks/foo/ds-1d.b2nd", query_string={"nchunks": "0-2", "etag": meta["etag"]}
    )
    data, frames = response.data, {}
    while data:
        number, size = FRAME.unpack(data[: FRAME.size])
        frames[number] = data[FRAME.size : FRAME.size + size]
        data = data[FRAME.size + size :]
    assert sorted(frames) == [0, 1, 2]
    assert frames[1] == node.root.chunk("ds-1d.b2nd", 1)[0]
    one = node.client.get("/api/chunk/foo/ds-1d.b2nd", query_string={"nchunk": 1})
    assert one.data == frames[1] and one.headers[ETAG] == meta["etag"]
    assert "changed (etag" in error(
        node.client.get("/api/chunks/foo/ds-1d.b2nd", query_string={"nchunks": "0", "etag": "old"}), 412
    )


def test_download_and_stats(node):
    response = node.client.get("/api/download/foo/README.md")
    assert response.data == (node.root.path / "README.md").read_bytes()
    assert "README.md" in response.headers["Content-Disposition"]
    response.close()
    stats = node.client.get("/api/stats").get_json()
    # Every chunk came from the cache: the publisher does not exist.
    assert stats["total"]["fetched_chunks"] == 0 and stats["total"]["cache_hits"] > 0
    assert stats["large"]["threads_used"] == 0


@pytest.mark.parametrize(
    "url, status, message",
    [
        ("/api/list/nope", 404, "no root 'nope'"),
        ("/api/info/foo/nope.b2nd", 404, "nope.b2nd"),
        ("/api/info/foo/../etc", 400, "invalid"),
        ("/api/fetch/foo/ds-1d.b2nd?slice=a", 400, "malformed slice"),
        ("/api/fetch/foo/ds-1d.b2nd?slice=5000", 400, "out of range"),
        ("/api/fetch/foo", 400, "expected ROOT/PATH"),
        ("/api/chunk/foo/ds-1d.b2nd?nchunk=99", 400, "out of range"),
        ("/api/chunk/foo/ds-1d.b2nd?nchunk=x", 400, "nchunk"),
        ("/api/chunks/foo/ds-1d.b2nd?nchunks=9-1", 400, ""),
        ("/api/nothing", 404, "no such endpoint"),
    ],
)
def test_bad_requests_get_json_errors(node, url, status, message):
    assert message in error(node.client.get(url), status)


def test_manifest_from_the_cache(node):
    """Every chunk cached: the manifest is the cache's, as the publisher (unreachable
    here) serves it, unless its digest is not the one the announcement names."""
    response = node.client.get("/api/manifest/foo/dir2/ds-4d.b2nd")
    assert response.status_code == 200 and response.get_json() == node.root.manifest("dir2/ds-4d.b2nd")
    node.fetcher.cache.chunks.index.query(
        "UPDATE chunks SET digest='0' WHERE root='foo' AND path='dir2/ds-4d.b2nd' AND nchunk=0", ()
    )
    assert "unreachable" in error(node.client.get("/api/manifest/foo/dir2/ds-4d.b2nd"), 503)
    assert "no dataset" in error(node.client.get("/api/manifest/foo/nothing.b2nd"), 404)
