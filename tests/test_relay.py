"""Relays: a subscriber republishes a root it follows (``--republish``), and
subscribers downstream read it through it, checked against the first
publisher's key."""

from __future__ import annotations

import json
import re

import blosc2
import numpy as np
import pytest
import requests
from flask import Flask, Response, request
from test_trust import retained

from catmqtt import config, signing
from catmqtt.errors import BadRequest, ConfigError, Unavailable
from catmqtt.publisher import Publisher
from catmqtt.subscriber.cache import Cache
from catmqtt.subscriber.trust import Trust
from catmqtt.web import Server
from catmqtt.wire import ETAG

from conftest import (
    MOSQUITTO,
    Broker,
    Deployment,
    publish,
    rogue_client,
    run_cli,
    start_publisher,
    start_subscriber,
    wait_for,
)

PREFIX = "catmqtt/v1"


def _sub(broker, statedir, root: str, **settings):
    """Start a subscriber in this process and wait until it sees `root` online."""
    s = config.node_settings(
        {}, "subscriber", broker=broker.url, http="127.0.0.1:0", statedir=statedir, **settings
    )
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


FOO = f"{PREFIX}/roots/foo"
BAR = f"{PREFIX}/roots/bar"
DS = "/ds/dir/a%2Bb.b2nd"
ROOT_FIELDS = {"datasets": 2, "etag": "e1", "skipped": [], "groups": {}}


def _root(name: str, url: str, **more) -> dict:
    return {"schema": 1, "name": name, "url": url, "publisher": "p", "time": 1.0, **ROOT_FIELDS, **more}


def _relayed(relay, origin_topic: str, origin: dict, **changes) -> dict:
    """Return what `relay` announces of root bar, relayed from `origin` on `origin_topic`."""
    own = {k: v for k, v in origin.items() if k not in ("key", "seq", "sig")}
    body = {**own, "name": "bar", "url": "http://relay/relay/foo", "publisher": "r", **changes}
    return relay.sign(BAR, {**body, "origin": {"topic": origin_topic, "payload": origin}})


def test_what_a_relay_says_must_be_its_origins(tmp_path):
    first, relay, other = (signing.generate(tmp_path / f"{n}.pem") for n in ("first", "relay", "other"))
    origin = first.sign(FOO, _root("foo", "http://pub"))
    cache = Cache.open(tmp_path / "state")
    try:
        trust = Trust(None, cache.catalogue)
        good = _relayed(relay, FOO, origin)
        assert trust.check(BAR, "bar", good, None, pin=True) == relay.public
        forged = {**origin, "etag": "e2"}
        unsigned = _root("foo", "http://pub")
        for obj, message in [
            (_relayed(relay, FOO, origin, etag="e2"), "says otherwise than its origin"),
            (_relayed(relay, FOO, origin, groups={"d": {}}), "says otherwise than its origin"),
            (_relayed(relay, FOO, forged, etag="e2"), "does not verify"),
            (_relayed(relay, BAR, origin), "does not verify"),
            (_relayed(relay, f"{FOO}{DS}", origin), "not one of a root"),
            (_relayed(relay, f"{FOO}/ds/roots/foo", origin), "not one of a root"),
            (_relayed(relay, "foo", origin), "not one of a root"),
            (relay.sign(BAR, {**good, "origin": {"topic": FOO}}), "'origin' must be an object"),
            (relay.sign(BAR, {**good, "origin": [FOO, origin]}), "'origin' must be an object"),
            (relay.sign(BAR, {**good, "origin": {"topic": 1, "payload": origin}}), "itself no relay's"),
            (relay.sign(BAR, {**good, "origin": {"topic": BAR, "payload": good}}), "itself no relay's"),
            # Not the relay trusted first for bar, whatever its origin.
            (_relayed(other, FOO, origin), "first announced under"),
            # Once relayed, always with its origin, of the key first believed.
            (
                relay.sign(BAR, {k: v for k, v in good.items() if k not in ("origin", "key", "seq", "sig")}),
                "does not carry its origin",
            ),
            (
                _relayed(relay, FOO, unsigned),
                "relayed from an origin unsigned, but root 'bar' is relayed from one signed by",
            ),
            (
                _relayed(relay, FOO, other.sign(FOO, _root("foo", "http://pub"))),
                "If its first publisher's key really changed",
            ),
        ]:
            with pytest.raises(BadRequest, match=message):
                trust.check(BAR, "bar", obj, good, pin=True)
        # A newer relayed announcement of an older origin is a replay of the origin.
        newer = first.sign(FOO, _root("foo", "http://pub"))
        assert trust.check(BAR, "bar", _relayed(relay, FOO, newer), good, pin=True) == relay.public
        with pytest.raises(BadRequest, match="origin's sequence number .* a replay"):
            trust.check(BAR, "bar", _relayed(relay, FOO, origin), None, pin=True)
        # An unsigned origin, first seen: the relay vouches for it (trust on first use).
        baz = f"{PREFIX}/roots/baz"
        from_unsigned = relay.sign(baz, {**_relayed(relay, FOO, unsigned), "name": "baz"})
        assert trust.check(baz, "baz", from_unsigned, None, pin=True) == relay.public
        # The relay's own tombstone needs no origin.
        assert (
            trust.check(BAR, "bar", relay.sign(BAR, {"name": "bar", "deleted": True}), good, pin=False)
            == relay.public
        )

        # Datasets: the origin's metadata as it was, on the dataset's topic of the root's origin.
        path = "dir/a+b.b2nd"
        meta = {"schema": 1, "path": path, "etag": "e1", "manifest": "0" * 32}
        signed_meta = first.sign(f"{FOO}{DS}", meta)

        def relayed_meta(payload: dict, topic: str = f"{FOO}{DS}", **changes) -> dict:
            body = {k: v for k, v in payload.items() if k not in ("key", "seq", "sig")}
            return relay.sign(
                f"{BAR}{DS}", {**body, **changes, "origin": {"topic": topic, "payload": payload}}
            )

        def check(obj: dict, root_info: dict | None = good) -> str | None:
            return trust.check(f"{BAR}{DS}", "bar", obj, None, pin=False, path=path, root_info=root_info)

        assert check(relayed_meta(signed_meta)) == relay.public
        qux = f"{PREFIX}/roots/qux"
        for obj, message in [
            (relayed_meta(signed_meta, FOO), "not that of 'dir/a\\+b.b2nd' in the root's origin"),
            (relayed_meta(signed_meta, f"{FOO}/ds/dir/a+b.b2nd"), "in the root's origin"),
            (relayed_meta(first.sign(f"{qux}{DS}", meta), f"{qux}{DS}"), "in the root's origin"),
            (
                relayed_meta(first.sign(f"other/v1/roots/foo{DS}", meta), f"other/v1/roots/foo{DS}"),
                "in the root's origin",
            ),
            (relayed_meta(signed_meta, etag="e2"), "says otherwise"),
            # Its origin's signature stripped, or another key's: not the root origin's key.
            (relayed_meta(meta), "root 'bar' is relayed from one signed by"),
            (relayed_meta(other.sign(f"{FOO}{DS}", meta)), "root 'bar' is relayed from one signed by"),
            # Its origin left out.
            (
                relay.sign(f"{BAR}{DS}", {**meta, "etag": "e9", "manifest": "f" * 32}),
                "does not carry its origin",
            ),
        ]:
            with pytest.raises(BadRequest, match=message):
                check(obj)
        with pytest.raises(BadRequest, match="root 'bar' is not relayed"):
            check(relayed_meta(signed_meta), {**good, "origin": None})

        # With subscriber.trust set, both the relay's key and the origin's must be listed, and
        # the origin must be signed.
        both = Trust({"bar": [relay.public, first.public]}, cache.catalogue)
        assert both.check(BAR, "bar", _relayed(relay, FOO, newer), None, pin=True) == relay.public
        with pytest.raises(BadRequest, match="origin unsigned, but subscriber.trust does not accept"):
            both.check(BAR, "bar", _relayed(relay, FOO, _root("foo", "u")), None, pin=True)
        only_relay = Trust({"bar": [relay.public]}, cache.catalogue)
        with pytest.raises(BadRequest, match="list the key of its first publisher too"):
            only_relay.check(
                BAR, "bar", _relayed(relay, FOO, first.sign(FOO, _root("foo", "u"))), None, pin=True
            )
        only_first = Trust({"*": [first.public]}, cache.catalogue)
        with pytest.raises(BadRequest, match="accepts root 'bar' only under"):
            only_first.check(
                BAR, "bar", _relayed(relay, FOO, first.sign(FOO, _root("foo", "u"))), None, pin=True
            )
        # The origin replayed bare where the root is relayed under its own name: refused.
        hub = Trust({"foo": [relay.public, first.public]}, cache.catalogue)
        relayed_foo = relay.sign(FOO, {**_relayed(relay, FOO, newer), "name": "foo"})
        assert hub.check(FOO, "foo", relayed_foo, None, pin=True) == relay.public
        with pytest.raises(BadRequest, match="does not carry its origin"):
            hub.check(FOO, "foo", newer, relayed_foo, pin=True)
    finally:
        cache.close()


def _keygen(tmp_path, name: str) -> tuple[str, str]:
    result = run_cli("keygen", str(tmp_path / f"{name}.key"))
    assert result.returncode == 0, result.stderr
    return str(tmp_path / f"{name}.key"), result.stdout.strip()


def test_a_relay_republishes_on_another_broker(tmp_path, root_dir):
    """The commands a new user runs: a publisher and a relay on one broker (amqtt), and
    a subscriber downstream on another (Mosquitto where installed) that trusts both keys."""
    (tmp_path / "here").mkdir()
    (tmp_path / "there").mkdir()
    here = Broker("amqtt", tmp_path / "here").start()
    there = Broker("mosquitto" if MOSQUITTO else "amqtt", tmp_path / "there").start()
    upstream, downstream = Deployment(here, tmp_path / "here"), Deployment(there, tmp_path / "there")
    try:
        pub_key, pub_public = _keygen(tmp_path, "pub")
        relay_key, relay_public = _keygen(tmp_path, "relay")
        upstream.start_pub("foo", root_dir, "--sign-key", pub_key)
        upstream.start_sub(
            "relay", "--republish", f"foo@{there.url}", "--sign-key", relay_key, "--id", "relay"
        )
        downstream.start_sub("down", "--trust", relay_public, "--trust", pub_public)
        downstream.wait_root("foo", "down")
        assert downstream.cli("subscribe", "foo", key="down").stdout == "Ok\n"
        shown = downstream.cli("--json", "show", "foo/ds-1d.b2nd[3:6]", key="down")
        assert json.loads(shown.stdout) == blosc2.open(str(root_dir / "ds-1d.b2nd"))[3:6].tolist(), (
            shown.stderr
        )
        info = json.loads(downstream.cli("info", "foo", key="down").stdout)
        assert info["url"] == f"{upstream.url('relay')}/relay/foo"
        assert info["key"] == relay_public and info["origin"]["key"] == pub_public
        nodes = downstream.cli("nodes", key="down").stdout.splitlines()
        assert f"publisher relay online {upstream.url('relay')}" in [" ".join(n.split()) for n in nodes], (
            nodes
        )
    finally:
        downstream.stop_all()
        upstream.stop_all()
        there.stop()
        here.stop()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("foo", "root 'foo', which this subscriber follows, would be announced over on its own broker"),
        (["foo=bar", "bar=foo"], "root 'bar', which this subscriber follows, would be announced over"),
        (["foo=x@mqtt://h:1", "bar=x@mqtt://h:1"], "two roots would be announced as 'x' on mqtt://h:1"),
        ("=x", "expected ROOT[=ALIAS][@BROKER_URL]"),
        ("foo=../x", "invalid root name '../x'"),
        ("foo@http://h", "invalid broker URL 'http://h'"),
        ([{"root": "foo", "to": "x"}], "expected a mapping of 'root' and optionally 'as', 'broker'"),
        ([7], "republish must list"),
        ("foo@mqtt://u:p@hub", "give the broker's user and password as mqtt_user and mqtt_password"),
        ([{"root": "foo", "mqtt_user": "u"}], "with a broker 'mqtt_user' and 'mqtt_password'"),
        ([{"root": "foo", "broker": "hub", "mqtt_user": ""}], "mqtt_user must be a non-empty string"),
    ],
)
def test_bad_republish_settings(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.node_settings({}, "subscriber", republish=value if isinstance(value, list) else [value])


def test_republish_settings():
    s = config.node_settings(
        {
            "subscriber": {
                "republish": [
                    {"root": "foo", "as": "bar"},
                    "baz@mqtt://hub:1884",
                    {"root": "q", "broker": "hub", "mqtt_user": "relay", "mqtt_password": ""},
                ]
            }
        },
        "subscriber",
    )
    hub = config.BrokerAddress("hub", 1884, False)
    assert s["republish"] == [
        config.Republish("foo", "bar", None),
        config.Republish("baz", "baz", hub),
        config.Republish("q", "q", config.BrokerAddress("hub", 1883, False), "relay", ""),
    ]
    with pytest.raises(ConfigError, match="has an access list"):
        config.node_settings(
            {"subscriber": {"republish": ["foo=bar"], "access": {"foo": ["ann"]}}}, "subscriber"
        )


def test_a_bad_republish_option_is_one_line_and_status_1(tmp_path):
    result = run_cli("sub", "--statedir", str(tmp_path / "s"), "--republish", "foo")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "would be announced over" in result.stderr, result.stderr
    assert not (tmp_path / "s").exists()


def test_relay_endpoints_are_open_for_republished_roots_only(broker, tmp_path, root_dir):
    pub = start_publisher(broker, tmp_path / "pub", root_dir)
    try:
        relay = start_subscriber(broker, tmp_path / "relay", republish=["foo=bar"], auth=True)
        try:
            wait_for(
                lambda: relay.cache.datasets("foo") == sorted(pub.root.entries),
                "the relay subscribed to foo",
            )
            base = f"{relay.url}/relay/foo/api"
            assert requests.get(f"{base}/list", timeout=10).json() == sorted(pub.root.entries)
            meta = requests.get(f"{base}/info/ds-1d.b2nd", timeout=10)
            assert meta.json() == pub.root.entries["ds-1d.b2nd"].meta
            again = requests.get(
                f"{base}/info/ds-1d.b2nd", headers={"If-None-Match": meta.headers["ETag"]}, timeout=10
            )
            assert again.status_code == 304
            whole = requests.get(f"{base}/download/ds-1d.b2nd", timeout=30)
            assert whole.status_code == 200
            np.testing.assert_array_equal(
                blosc2.ndarray_from_cframe(whole.content)[:], blosc2.open(str(root_dir / "ds-1d.b2nd"))[:]
            )
            part = requests.get(
                f"{base}/chunk/ds-1d.b2nd", params={"nchunk": 0}, headers={"Range": "bytes=0-9"}, timeout=10
            )
            assert part.status_code == 206 and len(part.content) == 10
            # Everything else still needs a login.
            assert requests.get(f"{relay.url}/api/list/foo", timeout=10).status_code == 401
            # A root republished is followed as long as it is, even by an admin's wish.
            relay.app.config["CATMQTT_GUARD"].accounts.add_user("ann", "pw", admin=True)
            login = requests.post(
                f"{relay.url}/auth/login", json={"username": "ann", "password": "pw"}, timeout=30
            )
            token = {"Authorization": f"Bearer {login.json()['token']}"}
            for action in ("unsubscribe", "forget"):
                refused = requests.post(f"{relay.url}/api/{action}/foo", headers=token, timeout=10)
                assert refused.status_code == 409 and "stop republishing it" in refused.json()["error"]
            assert relay.follower.subscribed("foo")
            for url, status, message in [
                (f"{relay.url}/relay/bar/api/list", 404, "not republished"),
                (f"{relay.url}/relay/nope/api/info/ds-1d.b2nd", 404, "not republished"),
                (f"{base}/info/%2e%2e/ds-1d.b2nd", 400, "invalid dataset path"),
                (f"{base}/info/nope.b2nd", 404, "nope.b2nd"),
                (f"{base}/chunk/ds-1d.b2nd?nchunk=99999", 400, "out of range"),
                (f"{base}/chunk/ds-1d.b2nd?nchunk=x", 400, "nchunk"),
                (f"{base}/chunk/ds-1d.b2nd", 400, "nchunk"),
            ]:
                answer = requests.get(url, timeout=10)
                assert answer.status_code == status, (url, answer.text)
                assert message in answer.json()["error"], (url, answer.text)
        finally:
            relay.stop()
    finally:
        pub.stop()


def test_a_lying_relay_cannot_poison_a_cache_downstream(broker, tmp_path, root_dir, key, caplog):
    """A rogue announces foo as bar, signed by its own key (trusted on first use
    downstream) with foo's genuine origin, and serves other bytes: every chunk is
    checked against the manifest the origin's key vouches for."""
    pub = start_publisher(broker, tmp_path / "pub", root_dir, sign_key=key)
    rogue_key = signing.generate(tmp_path / "rogue.pem")
    values = blosc2.asarray(np.full(1000, 666), chunks=(100,), blocks=(10,))
    liar = Flask("liar")

    @liar.get("/api/manifest/<path:path>")
    def manifest(path: str):
        genuine = requests.get(f"{pub.url}/api/manifest/{path}", timeout=10)
        return Response(genuine.content, mimetype="application/json")

    @liar.get("/api/chunk/<path:path>")
    def chunk(path: str):
        data = values.schunk.get_chunk(int(request.args["nchunk"]))
        return Response(
            data, mimetype="application/octet-stream", headers={ETAG: pub.root.entries[path].meta["etag"]}
        )

    server = Server(liar, "127.0.0.1", 0, 4).start()
    down = start_subscriber(broker, tmp_path / "down")
    try:
        dataset = f"{FOO}/ds/ds-1d.b2nd"
        with retained(broker, f"{FOO}/#") as seen, rogue_client(broker) as rogue:
            wait_for(
                lambda: FOO in seen and len(seen) > json.loads(seen[FOO])["datasets"], "foo's announcements"
            )
            root, meta = json.loads(seen[FOO]), json.loads(seen[dataset])
            own = {k: v for k, v in root.items() if k not in ("key", "seq", "sig")}
            relayed = {**own, "name": "bar", "url": server.url, "publisher": "liar"}
            publish(
                rogue,
                BAR,
                json.dumps(rogue_key.sign(BAR, {**relayed, "origin": {"topic": FOO, "payload": root}})),
            )
            wait_for(lambda: down.reader.roots().get("bar", {}).get("url") == server.url, "the rogue's bar")
            for topic, payload in seen.items():
                if topic != FOO:
                    genuine = json.loads(payload)
                    fields = {k: v for k, v in genuine.items() if k not in ("key", "seq", "sig")}
                    ours = topic.replace(FOO, BAR, 1)
                    wrapped = {**fields, "origin": {"topic": topic, "payload": genuine}}
                    publish(rogue, ours, json.dumps(rogue_key.sign(ours, wrapped)))
            down.follower.subscribe("bar")
            # Metadata of its own is refused: it is not the origin's; nor is a dataset's under another
            # name, nor one without its origin, or with its origin's signature stripped.
            fields = {k: v for k, v in meta.items() if k not in ("key", "seq", "sig")}
            forged = {**fields, "manifest": "f" * 32, "origin": {"topic": dataset, "payload": meta}}
            publish(rogue, f"{BAR}/ds/ds-1d.b2nd", json.dumps(rogue_key.sign(f"{BAR}/ds/ds-1d.b2nd", forged)))
            moved = {**fields, "path": "other.b2nd", "origin": {"topic": dataset, "payload": meta}}
            publish(rogue, f"{BAR}/ds/other.b2nd", json.dumps(rogue_key.sign(f"{BAR}/ds/other.b2nd", moved)))
            wait_for(lambda: "ds-1d.b2nd" in down.cache.datasets("bar"), "the relayed metadata")
            bare = {**fields, "manifest": "f" * 32}
            publish(rogue, f"{BAR}/ds/ds-1d.b2nd", json.dumps(rogue_key.sign(f"{BAR}/ds/ds-1d.b2nd", bare)))
            stripped = {**fields, "origin": {"topic": dataset, "payload": {**fields, "manifest": "f" * 32}}}
            stripped["manifest"] = "f" * 32
            publish(
                rogue, f"{BAR}/ds/ds-1d.b2nd", json.dumps(rogue_key.sign(f"{BAR}/ds/ds-1d.b2nd", stripped))
            )
            for refusal in (
                "says otherwise than its origin",
                "in the root's origin",
                "does not carry its origin",
                "relayed from an origin unsigned",
            ):
                wait_for(lambda refusal=refusal: refusal in caplog.text, refusal)
            assert down.cache.dataset("bar", "ds-1d.b2nd")["manifest"] == meta["manifest"]
            assert down.cache.datasets("bar") == sorted(pub.root.entries)
            with pytest.raises(Unavailable, match="does not match|damaged|digest"):
                _read(down, "bar/ds-1d.b2nd", "0:5")
            assert down.reader.cached("bar/ds-1d.b2nd")["cached_chunks"] == 0
    finally:
        down.stop()
        server.stop()
        pub.stop()


def test_a_relay_of_a_relay_passes_on_the_first_origin(chain, broker, tmp_path, root_dir, key):
    pub, relay, down = chain
    second = start_subscriber(broker, tmp_path / "second", republish=["bar=baz"])
    try:
        last = _sub(broker, tmp_path / "last", "baz")
        try:
            last.follower.subscribe("baz")
            info = last.reader.root_info("baz")
            assert info["url"] == f"{second.url}/relay/bar"
            assert info["origin"]["topic"] == FOO and info["origin"]["key"] == signing.load(key).public
            meta = last.cache.dataset("baz", "ds-1d.b2nd")
            assert meta["origin"]["topic"] == f"{FOO}/ds/ds-1d.b2nd"
            np.testing.assert_array_equal(
                _read(last, "baz/ds-1d.b2nd"), blosc2.open(str(root_dir / "ds-1d.b2nd"))[:]
            )
        finally:
            last.stop()
    finally:
        second.stop()


def test_what_would_be_too_large_relayed_is_left_out_and_said(broker, tmp_path, root_dir, caplog):
    """A relayed announcement is about twice its origin's: one over the payload limit is not made."""
    array = blosc2.open(str(root_dir / "ds-1d.b2nd"), mode="a")
    array.schunk.vlmeta["big"] = "x" * (3 * 1024 * 1024)
    pub = start_publisher(broker, tmp_path / "pub", root_dir)
    relay = start_subscriber(broker, tmp_path / "relay", republish=["foo=bar"])
    try:
        with retained(broker, f"{BAR}/#") as seen:
            wait_for(lambda: BAR in seen, "bar announced")
            wait_for(
                lambda: "not announcing catmqtt/v1/roots/bar/ds/ds-1d.b2nd" in caplog.text, "the warning"
            )
            others = set(pub.root.entries) - {"ds-1d.b2nd"}

            def relayed() -> set[str]:
                # (amqtt may send topics beyond the filter.)
                return {t.removeprefix(f"{BAR}/ds/") for t in list(seen) if t.startswith(f"{BAR}/ds/")}

            wait_for(lambda: relayed() == others, "the other datasets relayed")
            assert f"{BAR}/ds/ds-1d.b2nd" not in seen
        assert relay.cache.dataset("foo", "ds-1d.b2nd")["vlmeta"]["big"].startswith("xxx")
    finally:
        relay.stop()
        pub.stop()


def test_a_bundle_of_a_relayed_root_is_published_as_its_own(chain, tmp_path):
    pub, relay, down = chain
    zipped = tmp_path / "bar.zip"
    with requests.get(f"{down.url}/api/bundle/bar", stream=True, timeout=60) as answer:
        answer.raise_for_status()
        zipped.write_bytes(answer.content)
    settings = config.node_settings({}, "publisher", http="127.0.0.1:0", statedir=tmp_path / "snap")
    snap = Publisher("snap", zipped, settings)
    entries = snap.root.scan()
    assert sorted(entries) == sorted(pub.root.entries)
    for path, entry in entries.items():
        assert not {"origin", "key", "seq", "sig"} & set(entry.meta), path
        assert entry.meta["manifest"] == pub.root.entries[path].meta["manifest"]


def test_a_relay_gives_up_what_it_would_announce_over(broker, tmp_path, root_dir, key, caplog):
    """Its own broker under another name (localhost), and another root's name on its own
    broker: said once, and the genuine announcements are left alone."""
    pub = start_publisher(broker, tmp_path / "pub", root_dir, sign_key=key)
    settings = config.node_settings(
        {}, "publisher", broker=broker.url, http="127.0.0.1:0", statedir=tmp_path / "bar"
    )
    bar = Publisher("bar", root_dir, settings).start()
    try:
        wait_for(lambda: bar.node.connected.is_set(), "bar's publisher connected")
        relay = start_subscriber(
            broker,
            tmp_path / "relay",
            republish=[f"foo@mqtt://localhost:{broker.port}", "foo=bar"],
        )
        try:
            wait_for(lambda: "'bar' is another on this broker" in caplog.text, "bar given up")
            # Told by its catalogue, or by its first publisher's announcement seen there,
            # whichever comes first.
            wait_for(lambda: "not republishing root 'foo' as 'foo' any more" in caplog.text, "foo given up")
            assert caplog.text.count("not republishing root") == 2
            with retained(broker, f"{PREFIX}/roots/+") as seen:
                wait_for(
                    lambda: (
                        json.loads(seen.get(FOO) or "{}").get("url") == pub.url
                        and json.loads(seen.get(BAR) or "{}").get("url") == bar.url
                    ),
                    "the genuine announcements",
                )
            assert relay.reader.roots()["foo"]["url"] == pub.url
        finally:
            relay.stop()
    finally:
        bar.stop()
        pub.stop()


def test_a_loop_of_relays_is_given_up(tmp_path, root_dir, key, caplog):
    """foo relayed to another broker, and from there back to its own under the same name:
    the second relay finds its first publisher announcing it there."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = Broker("amqtt", tmp_path / "one").start()
    two = Broker("amqtt", tmp_path / "two").start()
    pub = start_publisher(one, tmp_path / "pub", root_dir, sign_key=key)
    relays = []
    try:
        relays.append(_sub(one, tmp_path / "there", "foo", republish=[f"foo@{two.url}"]))
        relays.append(_sub(two, tmp_path / "back", "foo", republish=[f"foo@{one.url}"]))
        wait_for(lambda: "its first publisher announces it there under that name" in caplog.text, "the loop")
        with retained(one, FOO) as seen:
            wait_for(
                lambda: json.loads(seen.get(FOO) or "{}").get("url") == pub.url, "foo's own announcement"
            )
        assert relays[0].reader.roots()["foo"]["url"] == pub.url
    finally:
        for relay in relays:
            relay.stop()
        pub.stop()
        two.stop()
        one.stop()


def test_a_root_followed_directly_and_through_a_relay_has_no_replays(tmp_path):
    """Their announcements of one origin come in their own time: the relay's of an origin
    older than the one the publisher just announced directly is no replay."""
    first, relay = signing.generate(tmp_path / "first.pem"), signing.generate(tmp_path / "relay.pem")
    older, newer = (first.sign(FOO, _root("foo", "http://pub")) for _ in range(2))
    cache = Cache.open(tmp_path / "state")
    try:
        trust = Trust(None, cache.catalogue)
        assert trust.check(FOO, "foo", newer, None, pin=True) == first.public
        assert trust.check(BAR, "bar", _relayed(relay, FOO, older), None, pin=True) == relay.public
        with pytest.raises(BadRequest, match="a replay"):
            trust.check(FOO, "foo", older, newer, pin=True)
    finally:
        cache.close()
