"""A subscriber whose state directory's disk fills up: 507s naming it, nothing wrong cached, nothing lost."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import blosc2
import numpy as np
import pytest
import requests

import catmqtt
from catmqtt import storage
from catmqtt.errors import InsufficientStorage
from catmqtt.subscriber.cache import Cache
from catmqtt.subscriber.chunks import ACCESS_FLUSH

from conftest import MOSQUITTO, Broker, Deployment

CHUNK = 131072  # float64 items: 1 MiB chunks, incompressible


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for the test; skipped where mounting is not permitted (not root)."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small disk to fill")
    mount = ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mountpoint)]
    result = subprocess.run(mount, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {result.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


def fill(directory: Path) -> Path:
    """Fill the disk of `directory` to its last byte; return the file that does it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    block = bytes(1 << 20)
    try:
        while block:
            try:
                os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
    assert shutil.disk_usage(directory).free == 0
    return filler


def test_full_disk(tmp_path, root_dir, small_disk):
    data = np.random.default_rng(5).random(24 * CHUNK)
    blosc2.asarray(data, urlpath=str(root_dir / "big.b2nd"), mode="w", chunks=(CHUNK,))
    statedir = small_disk / "sub"
    d = Deployment(Broker("mosquitto" if MOSQUITTO else "amqtt", tmp_path).start(), tmp_path)
    try:
        pub_url = d.start_pub("foo", root_dir)
        # The disk fills for real, not because min_free (1 GiB) says so.
        conf = tmp_path / "catmqtt.yaml"
        conf.write_text("subscriber:\n  min_free: 0\n")
        sub_url = d.start_sub("sub", "--statedir", statedir, "--conf", conf)
        d.wait_root("foo")
        client = catmqtt.Client(sub_url)
        client.subscribe("foo")
        # Cached before the disk fills (a chunk request waits for its chunk's write):
        # chunks 0 to 3 of big, and ds-1d.
        assert np.array_equal(client.fetch("foo/big.b2nd", slice(0, 4 * CHUNK)), data[: 4 * CHUNK])
        for nchunk in range(4):
            client.get_chunk("foo/big.b2nd", nchunk)
        assert requests.get(f"{sub_url}/api/download/foo/ds-1d.b2nd", timeout=30).status_code == 200

        filler = fill(small_disk)
        full = f"no space left on device in {statedir}"
        # What must be written first (chunks to the cache, a download's temporary
        # file): a 507 naming the state directory.
        for endpoint in (
            "chunk/foo/big.b2nd?nchunk=10",
            "download/foo/big.b2nd",
            "download/foo/ds-1d.b2nd",
            "fetch/foo/ds-hello.b2frame",
        ):
            response = requests.get(f"{sub_url}/api/{endpoint}", timeout=30)
            assert response.status_code == 507, response.text
            assert response.json() == {"error": response.json()["error"], "status": 507}
            assert full in response.json()["error"]
        with pytest.raises(InsufficientStorage, match=full):
            client.get_chunk("foo/big.b2nd", 11)
        # An array's selection is answered from the chunks as they come, not from the cache.
        assert np.array_equal(
            client.fetch("foo/big.b2nd", slice(12 * CHUNK, 12 * CHUNK + 10)), data[12 * CHUNK :][:10]
        )
        # The cache is still served, also once its access times could not be written.
        started = time.monotonic()
        while time.monotonic() - started < ACCESS_FLUSH + 1:
            assert np.array_equal(
                client.fetch("foo/big.b2nd", slice(CHUNK - 5, CHUNK + 5)), data[CHUNK - 5 : CHUNK + 5]
            )
            assert np.array_equal(client.fetch("foo/ds-1d.b2nd", slice(990, None)), np.arange(990, 1000))
        assert d.procs["sub"].alive()

        filler.unlink()
        published = requests.get(f"{pub_url}/api/chunk/big.b2nd", params={"nchunk": 10}, timeout=30).content
        assert client.get_chunk("foo/big.b2nd", 10) == published
        assert client.fetch("foo/ds-hello.b2frame", slice(0, 12)) == b"Hello world!"
        sub_log = d.procs["sub"].output
        assert f"cannot store chunk 12 of foo/big.b2nd in the cache: {full}" in sub_log
        assert "GET /api/download/foo/ds-1d.b2nd: " in sub_log
        assert "Traceback" not in sub_log

        # After a restart without the publisher: what was cached is there, and right.
        d.stop("sub", signal.SIGINT)
        d.stop("pub-foo")
        with sqlite3.connect(statedir / "cache.sqlite") as db:
            rows = db.execute("SELECT nchunk, digest FROM chunks WHERE path='big.b2nd'").fetchall()
        container = blosc2.open(str(statedir / "cache/foo/big.b2nd"))
        for nchunk, digest in rows:
            assert storage.chunk_digest(container.schunk.get_chunk(nchunk)) == digest
        assert {0, 1, 2, 3, 10} <= {nchunk for nchunk, _ in rows}
        client = catmqtt.Client(d.start_sub("sub", "--statedir", statedir, "--conf", conf))
        for nchunk in (0, 1, 2, 3, 10):
            part = slice(nchunk * CHUNK, (nchunk + 1) * CHUNK)
            assert np.array_equal(client.fetch("foo/big.b2nd", part), data[part])
        assert np.array_equal(client.fetch("foo/ds-1d.b2nd"), np.arange(1000))
    finally:
        d.stop_all()
        d.broker.stop()


def test_failed_commit_leaves_the_index_usable(tmp_path):
    """A COMMIT can fail (on a full disk, where SQLite writes its log): the
    transaction is rolled back, not left open for every later one to fail on."""
    cache = Cache.open(tmp_path)
    try:
        # A deferred constraint makes the COMMIT itself fail, as a full disk can.
        cache.index.query("PRAGMA foreign_keys = ON")
        cache.index.query("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        cache.index.query(
            "CREATE TABLE child (id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
        )
        with pytest.raises(sqlite3.IntegrityError), cache.index.transaction() as db:
            db.execute("INSERT INTO child VALUES (1)")
        assert not cache.index._db.in_transaction
        cache.set_root("foo", {"name": "foo", "url": "http://x"})
        cache.catalogue.set_subscribed("foo", True)
    finally:
        cache.close()
    assert Cache.open(tmp_path).catalogue.subscribed() == ["foo"]
