"""Relays: a subscriber republishes a root it follows (``--republish``), and
subscribers downstream read it through it, checked against the first
publisher's key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import blosc2
import numpy as np
import pytest
import requests

from catmqtt import config, signing
from catmqtt.errors import BadRequest, ConfigError, Unavailable
from catmqtt.subscriber.catalogue import Catalogue
from catmqtt.subscriber.index import Index
from catmqtt.subscriber.trust import Trust

from conftest import Broker, publish, rogue_client, run_cli, start_publisher, start_subscriber, wait_for

PREFIX = "catmqtt/v1"


def _sub(broker, statedir, root: str, **settings):
    """Start a subscriber in this process and wait until it sees `root` online."""
    s = config.node_settings({}, "subscriber", broker=broker.url, http="127.0.0.1:0", statedir=statedir, **settings)
    from catmqtt.subscriber import Subscriber

    sub = Subscriber(s, f"sub-{statedir.name}").start()
    wait_for(lambda: sub.reader.roots().get(root, {}).get("online"), f"root {root} online at {statedir.name}")
    return sub


def _read(sub, fullpath: str, slice_text: str = ""):
    return sub.reader.fetch(fullpath, slice_text)


@pytest.fixture
def key(tmp_path):
    signing.generate(tmp_path / "pub.key")
    return tmp_path / "pub.key"


@pytest.fixture
def chain(broker, tmp_path, root_dir, key):
    """A signed publisher of foo, a relay republishing it as bar on the same broker,
    and a subscriber downstream following bar."""
    pub = start_publisher(broker, tmp_path / "pub", root_dir, sign_key=key)
    relay = start_subscriber(broker, tmp_path / "relay", republish=["foo=bar"])
    down = None
    try:
        down = _sub(broker, tmp_path / "down", "bar")
        down.follower.subscribe("bar")
        yield pub, relay, down
    finally:
        if down is not None:
            down.stop()
        relay.stop()
        pub.stop()


def test_a_subscriber_downstream_reads_a_republished_root(chain, root_dir, key):
    pub, relay, down = chain
    expected = blosc2.open(str(root_dir / "dir1/ds-2d.b2nd"))[:]
    np.testing.assert_array_equal(_read(down, "bar/dir1/ds-2d.b2nd"), expected)
    assert sorted(down.cache.datasets("bar")) == sorted(pub.root.entries)
    info = down.reader.root_info("bar")
    relay_key = signing.load(relay.settings["statedir"] / "relay.key").public
    assert info["url"] == f"{relay.url}/relay/foo"
    assert info["key"] == relay_key
    assert info["origin"] == {
        "topic": f"{PREFIX}/roots/foo",
        "url": pub.url,
        "publisher": pub.node_id,
        "key": signing.load(key).public,
    }
    # The relay fetched each chunk once, and serves it again from its cache, as its manifest says.
    fetched = relay.fetcher.stats()["total"]["fetched_chunks"]
    assert fetched == down.fetcher.stats()["total"]["fetched_chunks"] > 0
    base = f"{relay.url}/relay/foo/api"
    digests = requests.get(f"{base}/manifest/dir1/ds-2d.b2nd", timeout=10).json()["digests"]
    for n, digest in enumerate(digests):
        chunk = requests.get(f"{base}/chunk/dir1/ds-2d.b2nd", params={"nchunk": n}, timeout=10)
        assert chunk.headers["X-Catmqtt-Digest"] == digest
    assert relay.fetcher.stats()["total"]["fetched_chunks"] == fetched


def test_changes_upstream_reach_downstream_chunk_by_chunk(chain, root_dir):
    pub, relay, down = chain
    path = root_dir / "ds-1d.b2nd"
    before = _read(down, "bar/ds-1d.b2nd")
    etag = down.cache.dataset("bar", "ds-1d.b2nd")["etag"]
    array = blosc2.open(str(path), mode="a")
    array[:3] = -1
    pub.refresh()
    wait_for(lambda: down.cache.dataset("bar", "ds-1d.b2nd")["etag"] != etag, "the change downstream")
    after = before.copy()
    after[:3] = -1
    np.testing.assert_array_equal(_read(down, "bar/ds-1d.b2nd"), after)
    meta = down.cache.dataset("bar", "ds-1d.b2nd")
    assert meta["etag"] == pub.root.entries["ds-1d.b2nd"].meta["etag"]
    assert meta["manifest"] == pub.root.entries["ds-1d.b2nd"].meta["manifest"]
    # Downstream kept the chunks the change left alone.
    kept = down.fetcher.stats()["datasets"]["bar/ds-1d.b2nd"]["kept_on_change"]
    assert kept == meta["nchunks"] - 1 > 0

    (root_dir / "ds-hello.b2frame").unlink()
    pub.refresh()
    wait_for(lambda: "ds-hello.b2frame" not in down.cache.datasets("bar"), "the deletion downstream")
    assert down.reader.root_info("bar")["datasets"] == len(pub.root.entries)


def test_the_relay_serves_what_it_cached_while_the_publisher_is_away(chain):
    pub, relay, down = chain
    cached = _read(relay, "foo/ds-1d.b2nd")
    pub.stop()
    wait_for(lambda: not relay.reader.roots()["foo"]["online"], "the publisher offline at the relay")
    np.testing.assert_array_equal(_read(down, "bar/ds-1d.b2nd"), cached)
    # What the relay never fetched is a clear error downstream, and nothing is cached.
    with pytest.raises(Unavailable, match="unreachable|answered 50"):
        _read(down, "bar/dir2/ds-4d.b2nd")
    assert down.reader.cached("bar/dir2/ds-4d.b2nd")["cached_chunks"] == 0
