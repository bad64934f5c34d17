"""Failures survived by real processes: a killed broker or subscriber, junk on topics, a hung
publisher, a slow one."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import blosc2
import numpy as np
import paho.mqtt.client as paho
import pytest
import requests
from flask import Flask, Response

import catmqtt
from catmqtt import storage
from catmqtt.errors import Unavailable
from catmqtt.subscriber.transport import fast_enough
from catmqtt.web import Server
from catmqtt.wire import DIGEST, ETAG

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


def announce_rogue_root(client: paho.Client, name: str, url: str, meta: dict | None = None) -> None:
    """Announce root `name` at `url` with one dataset, x.b2nd (`meta`, else `dataset_meta`'s)."""
    root = {"schema": 1, "name": name, "url": url, "publisher": f"{name}-pub", "datasets": 1, "etag": "x"}
    publish(client, f"catmqtt/v1/roots/{name}/ds/x.b2nd", json.dumps(meta or dataset_meta("x.b2nd")))
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


@pytest.mark.parametrize(
    ("received", "elapsed", "grace", "min_rate", "ok"),
    [
        # Within the grace, however little came.
        (0, 0.0, 2, 10_000, True),
        (0, 1.99, 2, 10_000, True),
        # Past it, min_rate bytes for each second past it.
        (0, 2.01, 2, 10_000, False),
        (5_000, 2.5, 2, 10_000, True),
        (4_999, 2.5, 2, 10_000, False),
        # A drip: a byte every half second.
        (5, 2.5, 2, 10_000, False),
        (60, 30.5, 30, 1_000, False),
        # 200 kB over 3 s.
        (200_000, 3.0, 1, 10_000, True),
        # Starting late in the grace, over a link just faster than min_rate.
        (1_100, 30.0, 29, 1_000, True),
        (1_100 * 31, 60.0, 29, 1_000, True),
        # A 4 MiB chunk at 1 kB a second.
        (4 << 20, 4_000.0, 30, 1_000, True),
        (4 << 20, 4_300.0, 30, 1_000, False),
        # 0: no minimum.
        (0, 86_400.0, 30, 0, True),
    ],
)
def test_the_minimum_rate_of_an_answer(received, elapsed, grace, min_rate, ok):
    assert fast_enough(received, elapsed, grace, min_rate) is ok


def paced_publisher(
    chunk: bytes, etag: str, piece: int, pause: float, stopped: threading.Event
) -> tuple[Flask, threading.Event]:
    """A publisher's chunk API sending `chunk` (for any chunk of any dataset), with its
    length, `piece` bytes at a time and `pause` seconds apart, until `stopped`; and an
    event set once it is asked for a chunk."""
    app = Flask("paced")
    asked = threading.Event()

    @app.get("/api/chunk/<path:path>")
    def send(path: str):
        asked.set()

        def pieces():
            for start in range(0, len(chunk), piece):
                yield chunk[start : start + piece]
                if stopped.wait(pause):
                    return

        headers = {ETAG: etag, DIGEST: storage.chunk_digest(chunk), "Content-Length": str(len(chunk))}
        return Response(pieces(), mimetype="application/octet-stream", headers=headers)

    return app, asked


def test_a_publisher_too_slow_gives_504_and_a_slow_steady_one_does_not(deployment, tmp_path):
    # One chunk of 200 kB, which compression does not shrink.
    values = np.random.default_rng(5).integers(-(2**63), 2**63 - 1, 25_000, dtype=np.int64)
    arr = blosc2.asarray(values, chunks=(25_000,))
    chunk = arr.schunk.get_chunk(0)
    assert len(chunk) > 200_000
    meta = {"schema": 1, **storage.describe(arr, "x.b2nd", "1")}
    conf = tmp_path / "slow.yaml"
    conf.write_text("subscriber:\n  fetch_timeout: 2\n  fetch_min_rate: 10kB\n")
    stopped = threading.Event()
    # A byte every half second: each comes well within the read timeout.
    drip_app, drip_asked = paced_publisher(chunk, "1", 1, 0.5, stopped)
    drip = Server(drip_app, "127.0.0.1", 0, 4).start()
    # 20 kB every 0.3 s, about 65 kB a second: 3 s for the chunk.
    steady = Server(paced_publisher(chunk, "1", 20_000, 0.3, stopped)[0], "127.0.0.1", 0, 4).start()
    d = deployment
    sub_url = d.start_sub("sub", "--conf", conf)
    try:
        with rogue_client(d.broker) as rogue:
            announce_rogue_root(rogue, "drip", drip.url, meta)
            announce_rogue_root(rogue, "steady", steady.url, meta)
        roots = f"{sub_url}/api/roots"
        wait_for(lambda: {"drip", "steady"} <= set(requests.get(roots, timeout=5).json()), "the roots")
        for root in ("drip", "steady"):
            requests.post(f"{sub_url}/api/subscribe/{root}", timeout=30).raise_for_status()

        def timed_fetch() -> tuple[requests.Response, float]:
            start = time.monotonic()
            # A timeout of its own: without a minimum rate, this would wait for days.
            response = requests.get(f"{sub_url}/api/fetch/drip/x.b2nd", timeout=30)
            return response, time.monotonic() - start

        with ThreadPoolExecutor(1) as pool:
            dripped = pool.submit(timed_fetch)
            wait_for(drip_asked.is_set, "the subscriber to ask the dripping publisher")
            # Meanwhile, other reads are answered, a chunk coming slowly but steadily among them.
            assert np.array_equal(catmqtt.Client(sub_url).fetch("steady/x.b2nd"), values)
            response, seconds = dripped.result()
        assert response.status_code == 504, response.text
        error = response.json()["error"]
        assert error.startswith(f"publisher of root 'drip' at {drip.url} sent "), error
        assert "slower than fetch_min_rate (10000 bytes a second after the first 2 s)" in error
        assert seconds < 10
        # Nothing of it was kept, and the subscriber still serves.
        cached = requests.get(f"{sub_url}/api/cached/drip/x.b2nd", timeout=5).json()
        assert (cached["cached_chunks"], cached["cached_bytes"]) == (0, 0)
        assert requests.get(f"{sub_url}/api/stats", timeout=5).json()["total"]["fetched_chunks"] == 1
        assert d.procs["sub"].alive()
        assert "Traceback" not in d.procs["sub"].output
    finally:
        stopped.set()
        drip.stop()
        steady.stop()


def test_a_publisher_asking_to_wait_an_hour_is_not_waited_for(deployment):
    app = Flask("busy")

    @app.get("/api/chunk/<path:path>")
    def busy(path: str):
        return Response(
            json.dumps({"error": "busy", "status": 503}),
            status=503,
            mimetype="application/json",
            headers={"Retry-After": "3600"},
        )

    server = Server(app, "127.0.0.1", 0, 4).start()
    d = deployment
    sub_url = d.start_sub()
    try:
        with rogue_client(d.broker) as rogue:
            announce_rogue_root(rogue, "busy", server.url)
        wait_for(lambda: "busy" in requests.get(f"{sub_url}/api/roots", timeout=5).json(), "the busy root")
        requests.post(f"{sub_url}/api/subscribe/busy", timeout=30).raise_for_status()
        start = time.monotonic()
        # A timeout of its own: urllib3 would wait as the publisher says, up to 6 hours.
        response = requests.get(f"{sub_url}/api/fetch/busy/x.b2nd", timeout=30)
        assert response.status_code == 503
        assert response.json()["error"] == f"publisher of root 'busy' at {server.url} answered 503: busy"
        assert time.monotonic() - start < 10
    finally:
        server.stop()


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
