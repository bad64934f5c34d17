"""Failures survived by real processes: a killed broker or subscriber, junk on topics, a hung publisher."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time

import blosc2
import numpy as np
import paho.mqtt.client as paho
import requests

import catmqtt
from catmqtt import storage
from catmqtt.errors import Unavailable

from conftest import free_port, publish, rogue_client, wait_for


def dataset_meta(path: str) -> dict:
    return {
        "schema": 1,
        "path": path,
        "kind": "ndarray",
        "shape": [10],
        "dtype": "int64",
        "chunks": [10],
        "blocks": [10],
        "nchunks": 1,
        "chunksize": 80,
        "typesize": 8,
        "nbytes": 80,
        "cparams": storage.cparams_to_json(blosc2.CParams(typesize=8)),
        "vlmeta": {},
        "etag": "1",
    }


def announce_rogue_root(client: paho.Client, name: str, url: str) -> None:
    root = {"schema": 1, "name": name, "url": url, "publisher": f"{name}-pub", "datasets": 1, "etag": "x"}
    publish(client, f"catmqtt/v1/roots/{name}/ds/x.b2nd", json.dumps(dataset_meta("x.b2nd")))
    publish(client, f"catmqtt/v1/roots/{name}", json.dumps(root))


def test_broker_killed_and_restarted(deployment, root_dir):
    d = deployment
    d.start_pub("foo", root_dir)
    sub_url = d.start_sub()
    d.wait_root("foo")
    client = catmqtt.Client(sub_url)
    client.subscribe("foo")
    assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "0:10"), np.arange(10))

    d.broker.stop(signal.SIGKILL)
    # Without a broker: cached data, and uncached data from a known publisher.
    assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "0:10"), np.arange(10))
    assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "900:910"), np.arange(900, 910))

    d.broker.start()
    d.wait_root("foo")
    wait_for(lambda: "foo/ds-1d.b2nd" in d.cli("list", "foo").stdout, "the snapshot again", timeout=15)
    assert d.cli("roots").stdout == "foo (subscribed)\n"
    (root_dir / "after.txt").write_text("after the restart\n")
    wait_for(
        lambda: d.cli("show", "foo/after.txt").stdout == "after the restart\n\n", "a change after the restart"
    )


def test_subscriber_killed_while_fetching(deployment, tmp_path, root_dir):
    data = np.random.default_rng(3).random(64 * 131072)  # 64 incompressible chunks of 1 MiB
    blosc2.asarray(data, urlpath=str(root_dir / "big.b2nd"), mode="w", chunks=(131072,))
    conf = tmp_path / "slow.yaml"
    conf.write_text("subscriber:\n  fetch_workers: 1\n")
    d = deployment
    d.start_pub("foo", root_dir)
    sub_url = d.start_sub("sub", "--conf", conf)
    d.wait_root("foo")
    client = catmqtt.Client(sub_url)
    client.subscribe("foo")

    failed = []

    def fetch_all():
        try:
            client.fetch("foo/big.b2nd")
        except Unavailable as exc:
            failed.append(exc)

    thread = threading.Thread(target=fetch_all)
    thread.start()

    def fetched() -> int:
        return requests.get(f"{sub_url}/api/stats", timeout=5).json()["total"]["fetched_chunks"]

    wait_for(lambda: fetched() >= 4, "some chunks to be fetched")
    d.stop("sub", signal.SIGKILL)
    thread.join(30)
    assert failed, "the fetch finished before the subscriber was killed"

    # The index never names a chunk that is not there, whole.
    with sqlite3.connect(tmp_path / "sub/cache.sqlite") as db:
        rows = db.execute("SELECT nchunk, digest FROM chunks WHERE path='big.b2nd'").fetchall()
    assert 0 < len(rows) < 64
    container = blosc2.open(str(tmp_path / "sub/cache/foo/big.b2nd"))
    for nchunk, digest in rows:
        assert storage.chunk_digest(container.schunk.get_chunk(nchunk)) == digest

    sub_url = d.start_sub("sub", "--conf", conf)
    assert np.array_equal(catmqtt.Client(sub_url).fetch("foo/big.b2nd"), data)
    assert fetched() == 64 - len(rows)


def test_junk_on_the_topics(deployment, root_dir):
    d = deployment
    d.serve_foo(root_dir)
    with rogue_client(d.broker) as rogue:
        publish(rogue, "catmqtt/v1/roots/junk1", b"{not json")
        publish(rogue, "catmqtt/v1/roots/junk2", json.dumps({"schema": 1, "name": "junk2", "url": 5}))
        publish(rogue, "catmqtt/v1/roots/junk3", json.dumps([1, 2, 3]))
        publish(rogue, "catmqtt/v1/roots/huge", b'{"schema": 1, "pad": "' + b"x" * (5 << 20) + b'"}')
        publish(
            rogue,
            "catmqtt/v1/roots/foo/ds/evil.b2nd",
            json.dumps({"schema": 1, "path": "evil.b2nd", "shape": "x"}),
        )
        publish(rogue, "catmqtt/v1/roots/foo/ds/ds-1d.b2nd", b"\xff\xfe garbage")
        publish(rogue, "catmqtt/v1/nodes/publisher/x/y", b"junk")
        publish(rogue, "catmqtt/v1/nodes/publisher/foo2", json.dumps({"schema": 1, "status": "dancing"}))
        announce_rogue_root(rogue, "rogue", f"http://127.0.0.1:{free_port()}")
        wait_for(
            lambda: d.cli("roots").stdout == "foo (subscribed)\nrogue (offline)\n", "the rogue root, offline"
        )
        assert d.cli("subscribe", "rogue").stdout == "Ok\n"
        result = d.cli("show", "foo/../rogue/x.b2nd")
        assert result.returncode == 1
        result = d.cli("show", "rogue/x.b2nd")
        assert result.returncode == 1
        assert (
            "publisher of root 'rogue' at http://127.0.0.1:" in result.stderr
            and "is unreachable" in result.stderr
        )
        # The publisher put its own announcement back and cleared the one it does not serve.
        wait_for(lambda: "foo/evil.b2nd" not in d.cli("list", "foo").stdout, "the evil dataset to be cleared")
        assert d.cli("show", "foo/ds-1d.b2nd[3:6]").stdout == "[3 4 5]\n"
        assert all(proc.alive() for proc in d.procs.values())
        assert "ignoring the message on 'catmqtt/v1/roots/junk1'" in d.procs["sub"].output
        assert "Traceback" not in d.procs["sub"].output + d.procs["pub-foo"].output


def test_hung_publisher_gives_504(deployment, tmp_path):
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen()
    conf = tmp_path / "timeout.yaml"
    conf.write_text("subscriber:\n  fetch_timeout: 2\n")
    d = deployment
    sub_url = d.start_sub("sub", "--conf", conf)
    try:
        with rogue_client(d.broker) as rogue:
            announce_rogue_root(rogue, "hung", f"http://127.0.0.1:{hung.getsockname()[1]}")
        wait_for(lambda: "hung" in requests.get(f"{sub_url}/api/roots", timeout=5).json(), "the hung root")
        assert d.cli("subscribe", "hung").stdout == "Ok\n"
        start = time.monotonic()
        response = requests.get(f"{sub_url}/api/fetch/hung/x.b2nd", timeout=60)
        assert response.status_code == 504
        assert "did not answer within 2 s" in response.json()["error"]
        assert time.monotonic() - start < 15
        result = d.cli("show", "hung/x.b2nd")
        assert result.returncode == 1 and "did not answer within 2 s" in result.stderr
    finally:
        hung.close()


def test_cleared_root_announcement_keeps_the_subscription(deployment, root_dir):
    d = deployment
    d.serve_foo(root_dir)
    with rogue_client(d.broker) as rogue:
        publish(rogue, "catmqtt/v1/roots/foo", b"")
    # The publisher announces its root again when it restarts.
    d.stop("pub-foo")
    d.start_pub("foo", root_dir)
    d.wait_root("foo")
    assert d.cli("roots").stdout == "foo (subscribed)\n"
    assert d.cli("show", "foo/ds-1d.b2nd[3:6]").stdout == "[3 4 5]\n"
