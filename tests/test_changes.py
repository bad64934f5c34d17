"""Live changes of a root reach subscribers, and only changed chunks cross the link again."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future

import blosc2
import numpy as np
import pytest
import requests

import catmqtt
from catmqtt import storage
from catmqtt.errors import Changed, Unavailable
from catmqtt.subscriber.follower import Updates

from conftest import ChunkCounter, running, start_publisher, start_subscriber, wait_for


def etag_of(client: catmqtt.Client, path: str) -> str | None:
    try:
        return client.get_info(path)["etag"]
    except catmqtt.errors.NotFound:
        return None


def wait_for_version(client, root_dir, name: str) -> None:
    """Wait until the subscriber knows the version of `name` now on disk."""
    expected = storage.file_etag(root_dir / name)
    wait_for(lambda: etag_of(client, f"foo/{name}") == expected, f"the new version of {name}")


def test_new_changed_and_deleted_files_propagate(broker, tmp_path, root_dir):
    with running(broker, tmp_path, root_dir) as (pub, sub):
        client = catmqtt.Client(sub.url)
        (root_dir / "dir1/new.txt").write_text("fresh\n")
        wait_for(lambda: "dir1/new.txt" in client.get_list("foo"), "a new file to appear")
        assert client.fetch("foo/dir1/new.txt") == b"fresh\n"
        assert client.get_list("foo/dir1") == ["dir1/ds-2d.b2nd", "dir1/ds-3d.b2nd", "dir1/new.txt"]

        (root_dir / "dir1/new.txt").write_text("changed\n")
        wait_for(lambda: client.fetch("foo/dir1/new.txt") == b"changed\n", "the changed content")

        # The publisher's announcements, in the order it makes them.
        announced = []
        publish = pub.node.publish

        def recording(topic, payload, **kwargs):
            name = topic.rpartition("/ds/")[2]
            announced.append(name if payload else f"-{name}")
            return publish(topic, payload, **kwargs)

        pub.node.publish = recording
        (root_dir / "dir1/new.txt").rename(root_dir / "moved.txt")
        wait_for(
            lambda: {"moved.txt", "dir1/new.txt"} & set(client.get_list("foo")) == {"moved.txt"},
            "the file listed under its new name only",
        )
        # The old name goes first, so that no one sees the file under both.
        assert announced.index("-dir1/new.txt") < announced.index("moved.txt"), announced

        (root_dir / "dir2/ds-4d.b2nd").unlink()
        wait_for(lambda: "dir2/ds-4d.b2nd" not in client.get_list("foo"), "the deleted dataset to go")
        with pytest.raises(catmqtt.errors.NotFound):
            client.get_info("foo/dir2/ds-4d.b2nd")
        assert client.get_roots()["foo"]["online"]


def grow(path, extra: np.ndarray) -> None:
    """Append `extra` along axis 0, as a field station does: resize, then write the new part."""
    array = blosc2.open(str(path), mode="a")
    old = array.shape[0]
    array.resize((old + extra.shape[0], *array.shape[1:]))
    array[old:] = extra


@pytest.mark.parametrize(
    ("shape", "chunks", "added", "refetched"),
    [
        # 1-D: 1050 items in chunks of 100; 130 more fill chunk 10 and add 11.
        ((1050,), (100,), (130,), [10, 11]),
        # 2-D: rows grow from 25 to 45 in chunks of (10, 8); the last partial
        # chunk row (2) and the new one (3, 4) are fetched again, 3 chunks each.
        ((25, 24), (10, 8), (20, 24), [6, 7, 8, 9, 10, 11, 12, 13, 14]),
    ],
)
def test_append_refetches_only_the_last_and_new_chunks(
    broker, tmp_path, root_dir, shape, chunks, added, refetched
):
    rng = np.random.default_rng(1)
    data = rng.random(shape)
    blosc2.asarray(data, urlpath=str(root_dir / "grow.b2nd"), mode="w", chunks=chunks)
    counters = []
    with running(broker, tmp_path, root_dir, lambda app: counters.append(ChunkCounter(app))) as (_, sub):
        client = catmqtt.Client(sub.url)
        assert np.array_equal(client.fetch("foo/grow.b2nd"), data)
        nchunks = client.get_info("foo/grow.b2nd")["nchunks"]
        assert len(counters[0].requests) == nchunks
        counters[0].requests.clear()

        extra = rng.random(added)
        grow(root_dir / "grow.b2nd", extra)
        wait_for_version(client, root_dir, "grow.b2nd")
        assert np.array_equal(client.fetch("foo/grow.b2nd"), np.concatenate([data, extra]))
        assert sorted(int(n) for _, n in counters[0].requests) == refetched
        stats = requests.get(f"{client.urlbase}/api/stats", timeout=10).json()["datasets"]["foo/grow.b2nd"]
        assert stats["kept_on_change"] == nchunks - (
            len(refetched) - (client.get_info("foo/grow.b2nd")["nchunks"] - nchunks)
        )
        assert stats["fetched_chunks"] == nchunks + len(refetched)


def test_rewritten_chunk_is_the_only_one_refetched(broker, tmp_path, root_dir):
    data = np.arange(1000, dtype=np.int64)
    counters = []
    with running(broker, tmp_path, root_dir, lambda app: counters.append(ChunkCounter(app))) as (_, sub):
        client = catmqtt.Client(sub.url)
        assert np.array_equal(client.fetch("foo/ds-1d.b2nd"), data)
        counters[0].requests.clear()
        array = blosc2.open(str(root_dir / "ds-1d.b2nd"), mode="a")
        array[420:430] = -1
        data[420:430] = -1
        wait_for_version(client, root_dir, "ds-1d.b2nd")
        assert np.array_equal(client.fetch("foo/ds-1d.b2nd"), data)
        assert counters[0].requests == [("ds-1d.b2nd", "4")]


def test_plain_file_append_refetches_the_tail(broker, tmp_path, root_dir):
    big = root_dir / "log.bin"
    head = np.random.default_rng(2).bytes(3 * (1 << 20) + 1000)
    big.write_bytes(head)
    counters = []
    with running(broker, tmp_path, root_dir, lambda app: counters.append(ChunkCounter(app))) as (_, sub):
        client = catmqtt.Client(sub.url)
        assert client.fetch("foo/log.bin") == head
        counters[0].requests.clear()
        with open(big, "ab") as f:
            f.write(b"more lines\n" * 100)
        wait_for_version(client, root_dir, "log.bin")
        assert client.fetch("foo/log.bin") == head + b"more lines\n" * 100
        assert counters[0].requests == [("log.bin", "3")]


def test_a_fetch_never_mixes_two_versions(broker, tmp_path, root_dir):
    path = root_dir / "flip.b2nd"
    blosc2.full((2000,), 0, dtype=np.int32, urlpath=str(path), mode="w", chunks=(100,))
    # Versions a second apart each settle (a file is announced once left alone this long).
    with running(broker, tmp_path, root_dir, pub_settings={"settle": 0.2}) as (pub, sub):
        client = catmqtt.Client(sub.url)
        wait_for(lambda: "flip.b2nd" in client.get_list("foo"), "the dataset")
        stop = threading.Event()

        def writer():
            for value in range(1, 5):
                if stop.wait(1.0):
                    return
                blosc2.full((2000,), value, dtype=np.int32, urlpath=str(path), mode="w", chunks=(100,))

        thread = threading.Thread(target=writer)
        thread.start()
        seen = set()
        try:
            while thread.is_alive():
                try:
                    values = client.fetch("foo/flip.b2nd")
                except Unavailable:
                    # Refusing while a dataset changes under the read is fine.
                    continue
                assert len(np.unique(values)) == 1, "a fetch mixed two versions"
                seen.add(int(values[0]))
        finally:
            stop.set()
            thread.join()
        assert len(seen) > 1


def test_changes_while_subscriber_was_away(broker, tmp_path, root_dir):
    pub = start_publisher(broker, tmp_path / "pub", root_dir)
    try:
        sub = start_subscriber(broker, tmp_path / "sub")
        sub.follower.subscribe("foo")
        client = catmqtt.Client(sub.url)
        before = client.fetch("foo/dir1/ds-2d.b2nd")
        sub.stop()

        (root_dir / "dir1/ds-3d.b2nd").unlink()
        array = blosc2.open(str(root_dir / "dir1/ds-2d.b2nd"), mode="a")
        array[0, 0] = 999
        wait_for(lambda: "dir1/ds-3d.b2nd" not in pub.root.entries, "the publisher to see the change")

        sub = start_subscriber(broker, tmp_path / "sub")
        client = catmqtt.Client(sub.url)
        wait_for(lambda: "dir1/ds-3d.b2nd" not in client.get_list("foo"), "the deletion to be applied")
        wait_for_version(client, root_dir, "dir1/ds-2d.b2nd")
        after = client.fetch("foo/dir1/ds-2d.b2nd")
        assert after[0, 0] == 999 and np.array_equal(after[1:], before[1:])
        sub.stop()
    finally:
        pub.stop()


def test_damaged_cache_chunk_is_fetched_again(broker, tmp_path, root_dir):
    pub = start_publisher(broker, tmp_path / "pub", root_dir)
    try:
        sub = start_subscriber(broker, tmp_path / "sub")
        sub.follower.subscribe("foo")
        assert np.array_equal(catmqtt.Client(sub.url).fetch("foo/ds-1d.b2nd"), np.arange(1000))
        sub.stop()
        chunk_files = sorted((tmp_path / "sub/cache/foo/ds-1d.b2nd").glob("*.chunk"))
        assert len(chunk_files) == 10
        damaged = bytearray(chunk_files[3].read_bytes())
        damaged[-5:] = b"\xff" * 5
        chunk_files[3].write_bytes(bytes(damaged))

        sub = start_subscriber(broker, tmp_path / "sub")
        client = catmqtt.Client(sub.url)
        assert np.array_equal(client.fetch("foo/ds-1d.b2nd"), np.arange(1000))
        stats = requests.get(f"{sub.url}/api/stats", timeout=5).json()["total"]
        assert stats == {
            "fetched_chunks": 1,
            "fetched_bytes": stats["fetched_bytes"],
            "cache_hits": 9,
            "cache_misses": 1,
            "kept_on_change": 0,
        }
        sub.stop()
    finally:
        pub.stop()


def test_changes_while_publisher_was_down(deployment, root_dir):
    d = deployment
    d.serve_foo(root_dir)
    d.stop("pub-foo")
    (root_dir / "added.txt").write_text("added while down\n")
    blosc2.asarray(np.arange(5), urlpath=str(root_dir / "ds-1d.b2nd"), mode="w")
    d.start_pub("foo", root_dir)
    wait_for(lambda: "foo/added.txt" in d.cli("list", "foo").stdout, "the file added while down")
    wait_for(
        lambda: d.cli("show", "foo/ds-1d.b2nd").stdout == "[0 1 2 3 4]\n", "the dataset rewritten while down"
    )


def test_polling_watcher(broker, tmp_path, root_dir):
    pub = start_publisher(broker, tmp_path / "pub", root_dir, watch="poll")
    try:
        sub = start_subscriber(broker, tmp_path / "sub")
        try:
            sub.follower.subscribe("foo")
            client = catmqtt.Client(sub.url)
            (root_dir / "polled.txt").write_text("seen by polling\n")
            wait_for(lambda: "polled.txt" in client.get_list("foo"), "the new file, by polling")
            assert client.fetch("foo/polled.txt") == b"seen by polling\n"
        finally:
            sub.stop()
    finally:
        pub.stop()


def test_watching_off_leaves_changes_to_the_next_start(broker, tmp_path, root_dir):
    pub = start_publisher(broker, tmp_path / "pub", root_dir, watch="off")
    try:
        assert pub.watcher is None
        (root_dir / "later.txt").write_text("later\n")
        assert "later.txt" not in pub.root.entries
    finally:
        pub.stop()
    pub = start_publisher(broker, tmp_path / "pub", root_dir, watch="off")
    try:
        assert "later.txt" in pub.root.entries
    finally:
        pub.stop()


def mark_scan(marker) -> None:
    """Write `marker`, dated long ago so that it is listed at once: once it is,
    a scan has seen what was written before it."""
    marker.write_text("m\n")
    os.utime(marker, (0, 0))


def test_a_file_being_written_is_not_served_half_written(broker, tmp_path, root_dir):
    # A writer slower than the watcher's debounce.
    with running(broker, tmp_path, root_dir, pub_settings={"settle": 5.0}) as (pub, sub):
        client = catmqtt.Client(sub.url)
        with open(root_dir / "growing.txt", "w") as f:
            f.write("part1 \n")
            f.flush()
            mark_scan(root_dir / "marker.txt")
            wait_for(lambda: "marker.txt" in pub.root.entries, "a scan that saw the first part")
            assert "growing.txt" not in pub.root.entries
            assert "growing.txt" not in client.get_list("foo")
            with pytest.raises(catmqtt.errors.NotFound):
                client.fetch("foo/growing.txt")
            f.write("part2\n")
        wait_for(lambda: "growing.txt" in client.get_list("foo"), "the finished file", timeout=60)
        assert client.fetch("foo/growing.txt") == b"part1 \npart2\n"


def test_a_file_being_rewritten_is_served_whole_or_not_at_all(broker, tmp_path, root_dir):
    with running(broker, tmp_path, root_dir, pub_settings={"settle": 5.0}) as (pub, sub):
        client = catmqtt.Client(sub.url)
        old = (root_dir / "README.md").read_bytes()
        with open(root_dir / "README.md", "w") as f:
            f.write("new ")
            f.flush()
            mark_scan(root_dir / "marker.txt")
            wait_for(lambda: "marker.txt" in pub.root.entries, "a scan that saw the first part")
            # The old version is still announced, and served from the publisher's compressed copy.
            assert client.fetch("foo/README.md") == old
            f.write("version\n")
        wait_for(lambda: client.fetch("foo/README.md") == b"new version\n", "the new version", timeout=60)


def test_a_reader_never_removes_the_latest_update_of_a_dataset():
    # The MQTT thread records each dataset's latest update for readers to wait on.
    # A reader that removed the update it had waited for, with a get-then-pop,
    # removed the newer one instead when it was recorded between the two.
    updates = Updates()
    try:
        key = ("foo", "ds-1d.b2nd")
        waited, newer = Future(), Future()
        waited.set_result(None)

        class Recorded(dict):
            def get(self, k, *default):
                found = super().get(k, *default)
                # The MQTT thread records a newer update just after the reader's look.
                self[k] = newer
                return found

            def pop(self, k, *default):
                self[k] = newer
                return super().pop(k, *default)

        updates.latest = Recorded({key: waited})
        updates.settled(*key, timeout=5)
        assert updates.latest[key] is newer
        # The newer update, not applied in time, is a change under the read.
        with pytest.raises(Changed, match="foo/ds-1d.b2nd is being updated; try again") as raised:
            updates.settled(*key, timeout=0.01)
        assert raised.value.path == "foo/ds-1d.b2nd" and raised.value.status == 503
    finally:
        updates.close()
