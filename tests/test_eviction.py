"""The cache's budget: sizes, least recently used chunks evicted first, never a
chunk being read or pinned, and an index that stays true at any crash."""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import blosc2
import numpy as np
import pytest
import requests

from catmqtt import config, storage
from catmqtt.errors import ConfigError
from catmqtt.subscriber.cache import Cache

from conftest import MOSQUITTO, Broker, Deployment, run_cli, running, wait_for

ITEMS = 16384  # int64 items a chunk: 128 KiB, which random data does not shrink
NCHUNKS = 32
BUDGET = 2 << 20


@pytest.fixture(scope="module")
def one_broker(tmp_path_factory):
    """One broker for the module: what is evicted does not depend on its kind."""
    b = Broker("mosquitto" if MOSQUITTO else "amqtt", tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A root of incompressible arrays: ``ds.b2nd`` (NCHUNKS chunks), and small ones
    under directories whose names share a prefix."""
    root = tmp_path_factory.mktemp("root")
    rng = np.random.default_rng(0)
    blosc2.asarray(
        rng.integers(0, 2**62, ITEMS * NCHUNKS),
        chunks=(ITEMS,),
        blocks=(4096,),
        urlpath=str(root / "ds.b2nd"),
    )
    for name in ("keep/a.b2nd", "keepx/b.b2nd", "k_ep/c.b2nd", "k%p/d.b2nd"):
        (root / name).parent.mkdir(exist_ok=True)
        blosc2.asarray(
            rng.integers(0, 2**62, ITEMS * 4), chunks=(ITEMS,), blocks=(4096,), urlpath=str(root / name)
        )
    return root


@pytest.fixture
def deployment(one_broker, tmp_path):
    """Nodes as processes, on the module's broker."""
    d = Deployment(one_broker, tmp_path)
    yield d
    d.stop_all()


def expected(root: Path, path: str = "ds.b2nd") -> np.ndarray:
    return blosc2.open(str(root / path))[:]


def fetch(url: str, path: str, start: int, stop: int) -> np.ndarray:
    r = requests.get(
        f"{url}/api/fetch/foo/{path}",
        params={"slice": f"{start}:{stop}"},
        headers={"Accept": "application/x-npy"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content))


def read_chunk(url: str, n: int, path: str = "ds.b2nd") -> np.ndarray:
    return fetch(url, path, n * ITEMS, (n + 1) * ITEMS)


def stats(url: str) -> dict:
    return requests.get(f"{url}/api/stats", timeout=5).json()["total"]


def indexed(statedir: Path, path: str = "ds.b2nd") -> dict[int, tuple[str, int]]:
    """Return {chunk number: (digest, nbytes)} of the chunks the index names."""
    with sqlite3.connect(statedir / "cache.sqlite") as db:
        rows = db.execute("SELECT nchunk, digest, nbytes FROM chunks WHERE path=?", (path,)).fetchall()
    return {n: (digest, nbytes) for n, digest, nbytes in rows}


def disk_bytes(statedir: Path) -> int:
    """Return the bytes of the chunk files under the cache (some going as they are counted)."""
    total = 0
    for f in (statedir / "cache").rglob("*.chunk"):
        with contextlib.suppress(FileNotFoundError):
            total += f.stat().st_size
    return total


def check_on_disk(statedir: Path, root: Path) -> int:
    """Check that every chunk the index names is whole on disk, with its digest and the
    publisher's data; return how many there are."""
    rows = indexed(statedir)
    if rows:
        cached = blosc2.open(str(statedir / "cache" / "foo" / "ds.b2nd"), mode="r").schunk
        source = blosc2.open(str(root / "ds.b2nd"), mode="r").schunk
        for n, (digest, _) in rows.items():
            data = cached.get_chunk(n)
            assert storage.chunk_digest(data) == digest, f"chunk {n}"
            assert blosc2.decompress2(data) == blosc2.decompress2(source.get_chunk(n)), f"chunk {n}"
    return len(rows)


# Sizes


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("500MB", 500_000_000),
        ("500mb", 500_000_000),
        ("20GiB", 20 << 30),
        ("1.5GB", 1_500_000_000),
        ("1 KiB", 1024),
        ("2kB", 2000),
        ("4TB", 4 * 10**12),
        ("1000000", 1_000_000),
        (1_000_000, 1_000_000),
        ("0", 0),
        ("12B", 12),
    ],
)
def test_sizes(text, size):
    assert config.parse_size(text, "min_free") == size


@pytest.mark.parametrize(
    "text",
    ["-5", -5, "12XB", "", "MB", "1e9", "1.2.3GB", "5 M B", True, 1.5, None, [1], "9" * 400 + ".5"]
    # Digits of other scripts, which int() takes.
    + ["\u0663", "\uff11\uff12MB"],
)
def test_bad_sizes(text):
    with pytest.raises(ValueError, match="min_free must be a size in bytes, like 500MB"):
        config.parse_size(text, "min_free")


@pytest.mark.parametrize("text", ["1025PiB", "1000000PiB", 10**40, (1 << 60) + 1, "9" * 30])
def test_sizes_over_1024_pib_are_refused(text):
    # Mistakes, and beyond the integers a status summary carries.
    with pytest.raises(ValueError, match="is more than the largest size taken, 1024PiB"):
        config.parse_size(text, "min_free")
    assert config.parse_size("1024PiB", "min_free") == 1 << 60


@pytest.mark.parametrize("text", ["0", "500", "1000kB", 1048575])
def test_budgets_below_one_mib_are_refused(text):
    with pytest.raises(ValueError, match="less than the least budget of 1MiB"):
        config.parse_cache_size(text)


def test_settings_hold_the_sizes_in_bytes(tmp_path):
    s = config.node_settings({"subscriber": {"cache_size": "2MiB", "min_free": "10MB"}}, "subscriber")
    assert (s["cache_size"], s["min_free"]) == (2 << 20, 10_000_000)
    s = config.node_settings({}, "subscriber")
    assert (s["cache_size"], s["min_free"]) == (None, 1 << 30)
    with pytest.raises(ConfigError, match="cache_size must be a size in bytes"):
        config.node_settings({"subscriber": {"cache_size": "12XB"}}, "subscriber")


@pytest.mark.parametrize(
    ("command", "size", "message"),
    [
        (
            "sub",
            "12XB",
            "Error: cache_size must be a size in bytes, like 500MB, 20GiB or 1000000, not '12XB'",
        ),
        ("up", "-5", "Error: cache_size must be a size in bytes, like 500MB, 20GiB or 1000000, not '-5'"),
        ("sub", "500", "Error: cache_size '500' is 500 bytes, less than the least budget of 1MiB"),
    ],
)
def test_a_bad_budget_stops_the_start(tmp_path, command, size, message):
    result = run_cli(command, f"--cache-size={size}", "--statedir", tmp_path / "state", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "state").exists()


# Which chunks go


def test_pinned_chunks_are_never_candidates(tmp_path):
    cache = Cache.open(tmp_path)
    paths = ["keep/a", "keepx/b", "k_ep/c", "k%p/d", "kee", "top"]
    with cache.index.transaction() as db:
        for i, path in enumerate(paths):
            db.execute("INSERT INTO datasets VALUES ('foo', ?, 'e1', '{}')", (path,))
            db.execute("INSERT INTO chunks VALUES ('foo', ?, 0, 'e1', 'd', 10, ?)", (path, float(i)))
        # A chunk of an old version is left to the update that replaces it.
        db.execute("INSERT INTO chunks VALUES ('foo', 'top', 1, 'e0', 'd', 10, 0)")
        db.execute("INSERT INTO datasets VALUES ('bar', 'top', 'e1', '{}')")
        db.execute("INSERT INTO chunks VALUES ('bar', 'top', 0, 'e1', 'd', 10, 99)")

    def candidates(*pins):
        with cache.index.transaction() as db:
            db.execute("DELETE FROM pins")
            db.executemany("INSERT INTO pins VALUES (?, ?)", pins)
        return [(root, path) for root, path, *_ in cache.chunks.lru(100, 0)]

    everything = [("foo", p) for p in paths] + [("bar", "top")]
    assert candidates() == everything
    assert candidates(("foo", "keep")) == [c for c in everything if c[1] != "keep/a"]
    assert candidates(("foo", "k_ep")) == [c for c in everything if c[1] != "k_ep/c"]
    assert candidates(("foo", "k%p/d"), ("foo", "kee")) == [
        c for c in everything if c[1] not in ("k%p/d", "kee")
    ]
    assert candidates(("foo", "")) == [("bar", "top")]
    assert candidates(("bar", "")) == everything[:-1]
    assert cache.chunks.lru(2, 3) == [("foo", "k%p/d", 0, 3.0, 10), ("foo", "kee", 0, 4.0, 10)]
    cache.close()


def test_a_chunk_pinned_after_it_was_chosen_stays(tmp_path):
    cache = Cache.open(tmp_path)
    meta = {"etag": "e1"}
    with cache.index.transaction() as db:
        db.execute("INSERT INTO datasets VALUES ('foo', 'dir/a', 'e1', ?)", (json.dumps(meta),))
        db.execute("INSERT INTO chunks VALUES ('foo', 'dir/a', 0, 'e1', 'd', 10, 1.0)")
    chosen = cache.chunks.lru(10, 0)
    assert [c[:3] for c in chosen] == [("foo", "dir/a", 0)]
    # Pinned between the choice and the eviction, as a client may.
    cache.index.query("INSERT INTO pins VALUES ('foo', 'dir')")
    assert cache.chunks.evict("foo", "dir/a", meta, [(0, 1.0)]) == []
    assert cache.index.query("SELECT nchunk FROM chunks") == [(0,)]
    cache.close()


def test_usage_is_kept_by_every_change_of_the_index(tmp_path):
    cache = Cache.open(tmp_path)
    db_rows = [("foo", "a", n, "e", "d", 100 + n, 0.0) for n in range(5)]
    with cache.index.transaction() as db:
        db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)", db_rows)
    assert cache.usage() == (510, None, 0)
    cache.index.query("INSERT OR REPLACE INTO chunks VALUES ('foo', 'a', 0, 'e', 'd', 7, 0)")
    assert cache.usage().bytes == 417
    cache.index.query("DELETE FROM chunks WHERE nchunk > 2")
    assert cache.usage().bytes == 7 + 101 + 102
    with pytest.raises(RuntimeError), cache.index.transaction() as db:
        db.execute("DELETE FROM chunks")
        raise RuntimeError("rolled back")
    assert cache.usage().bytes == 210
    cache.close()
    cache = Cache.open(tmp_path)
    cache.start_eviction(5 << 20, 0)
    assert cache.usage() == (210, 5 << 20, 0)
    cache.close()


# A subscriber with a budget


def test_least_recently_read_chunks_go_first_and_usage_is_exact(one_broker, tmp_path, data_root):
    with running(one_broker, tmp_path, data_root, cache_size="1MiB") as (_, sub):
        url, statedir = sub.url, tmp_path / "sub"
        size = None
        for n in (0, 1, 2, 0):
            read_chunk(url, n)
            wait_for(lambda n=n: n in indexed(statedir), f"chunk {n} stored")
            size = indexed(statedir)[n][1]
        fits = (1 << 20) // size
        # Fill the budget, then one more: chunk 1, the least recently read, goes.
        n = 3
        while len(indexed(statedir)) < fits:
            read_chunk(url, n)
            wait_for(lambda n=n: n in indexed(statedir), f"chunk {n} stored")
            n += 1
        cached = sum(nbytes for _, nbytes in indexed(statedir).values())
        assert sub.cache.usage() == (cached, 1 << 20, 0)
        read_chunk(url, n)
        wait_for(lambda: n in indexed(statedir), f"chunk {n} stored")
        assert 1 not in indexed(statedir) and {0, 2} <= set(indexed(statedir))
        read_chunk(url, n + 1)
        wait_for(lambda: n + 1 in indexed(statedir), f"chunk {n + 1} stored")
        assert 2 not in indexed(statedir) and 0 in indexed(statedir)
        usage = sub.cache.usage()
        assert usage.bytes == sum(nbytes for _, nbytes in indexed(statedir).values()) <= 1 << 20
        assert usage.evictions == n + 2 - len(indexed(statedir)) >= 2
        assert disk_bytes(statedir) == usage.bytes
        # An evicted chunk reads again, right.
        assert np.array_equal(
            fetch(url, "ds.b2nd", ITEMS - 5, ITEMS + 5), expected(data_root)[ITEMS - 5 : ITEMS + 5]
        )
        wait_for(lambda: 1 in indexed(statedir), "chunk 1 stored again")
        before = sub.cache.usage().bytes
    cache = Cache.open(statedir)
    assert cache.usage() == (before, None, 0)
    cache.close()


def test_a_chunk_larger_than_the_budget_gets_507(one_broker, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    # 2 MiB of incompressible bytes in one chunk.
    data = np.random.default_rng(1).integers(0, 2**62, 1 << 18)
    blosc2.asarray(data, chunks=(1 << 18,), blocks=(1 << 14,), urlpath=str(root / "big.b2nd"))
    with running(one_broker, tmp_path, root, cache_size="1MiB") as (_, sub):
        r = requests.get(f"{sub.url}/api/chunk/foo/big.b2nd", params={"nchunk": 0}, timeout=30)
        assert r.status_code == 507, r.text
        assert r.json()["error"] == (
            f"chunk 0 of foo/big.b2nd is {r.json()['error'].split()[5]} bytes, more than the cache's"
            " budget of 1048576 bytes: raise subscriber.cache_size (--cache-size)"
        )
        # A selection streamed from the publisher is still answered, and nothing is cached.
        assert np.array_equal(fetch(sub.url, "big.b2nd", 10, 20), data[10:20])
        assert sub.cache.usage().bytes == 0


def test_pinned_datasets_stay(one_broker, tmp_path, data_root):
    with running(one_broker, tmp_path, data_root, cache_size="1MiB") as (_, sub):
        url, statedir = sub.url, tmp_path / "sub"
        sub.cache.index.query("INSERT INTO pins VALUES ('foo', 'keep')")
        for n in range(4):
            read_chunk(url, n, "keep/a.b2nd")
        wait_for(lambda: len(indexed(statedir, "keep/a.b2nd")) == 4, "the pinned chunks stored")
        for n in range(12):
            read_chunk(url, n)
            read_chunk(url, n % 4, "keepx/b.b2nd")
        wait_for(lambda: sub.cache.usage().evictions >= 8, "evictions")
        assert len(indexed(statedir, "keep/a.b2nd")) == 4
        assert sub.cache.usage().bytes <= 1 << 20


def following_with_budget(deployment, data_root: Path) -> tuple[str, Path, np.ndarray]:
    """Publish `data_root` as foo, and follow it with a subscriber process of budget
    BUDGET; return its URL, its state directory and the data of ds.b2nd."""
    deployment.start_pub("foo", data_root)
    url = deployment.start_sub("sub", "--cache-size", str(BUDGET))
    deployment.wait_root("foo")
    assert deployment.cli("subscribe", "foo").returncode == 0
    return url, deployment.workdir / "sub", expected(data_root)


def test_reads_stay_right_while_chunks_are_evicted(deployment, data_root):
    """Clients read chunks and slices across chunks in a loop, twice the budget of them."""
    url, statedir, truth = following_with_budget(deployment, data_root)
    source = blosc2.open(str(data_root / "ds.b2nd"), mode="r").schunk
    errors: list[str] = []
    peak = [0]
    stop = time.monotonic() + 8

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop and not errors:
            n = rng.randrange(NCHUNKS // 2) if rng.random() < 0.5 else rng.randrange(NCHUNKS)
            try:
                if rng.random() < 0.3:
                    r = requests.get(f"{url}/api/chunk/foo/ds.b2nd", params={"nchunk": n}, timeout=30)
                    assert r.status_code == 200, r.text
                    assert blosc2.decompress2(r.content) == blosc2.decompress2(source.get_chunk(n))
                else:
                    start = n * ITEMS + rng.randrange(-100, 100) if n else 0
                    got = fetch(url, "ds.b2nd", start, start + rng.choice((10, 200, ITEMS)))
                    assert np.array_equal(got, truth[start : start + len(got)]), f"slice at {start}"
            except (AssertionError, OSError) as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            peak[0] = max(peak[0], disk_bytes(statedir))
            t.join(0.05)
    assert not errors, errors[:3]
    chunk = max(nbytes for _, nbytes in indexed(statedir).values())
    assert peak[0] <= BUDGET + 8 * chunk
    assert sum(nbytes for _, nbytes in indexed(statedir).values()) <= BUDGET
    assert stats(url)["fetched_chunks"] > NCHUNKS


def test_a_read_that_fails_gives_its_chunks_back_to_eviction(deployment, data_root):
    """A read of cached chunks and missing ones, cut short by its publisher gone, holds
    the cached ones no more: they are evicted for the next reads, which are cached."""
    url = deployment.start_sub("sub", "--cache-size", "1MiB")
    deployment.start_pub("foo", data_root)
    deployment.wait_root("foo")
    assert deployment.cli("subscribe", "foo").returncode == 0
    statedir = deployment.workdir / "sub"
    held = [n for n in range(NCHUNKS) if (n + 1) * ITEMS * 8 <= 900_000]
    for n in held:
        read_chunk(url, n)
    wait_for(lambda: set(held) <= set(indexed(statedir)), "the first chunks cached")
    deployment.stop("pub-foo")
    deployment.wait_root("foo", online=False)
    # The cached chunks and two more: the read fails for the two.
    stop = (held[-1] + 3) * ITEMS
    r = requests.get(f"{url}/api/fetch/foo/ds.b2nd", params={"slice": f"0:{stop}"}, timeout=60)
    assert r.status_code in (502, 503), r.text
    deployment.start_pub("foo", data_root)
    deployment.wait_root("foo")
    later = list(range(held[-1] + 1, NCHUNKS))
    for n in later:
        read_chunk(url, n)
    # Stored: the chunks the failed read had claimed were evicted to make room.
    wait_for(lambda: set(later[-3:]) <= set(indexed(statedir)), "the last chunks cached")


def test_the_index_stays_true_when_killed_while_evicting(deployment, data_root):
    url, statedir, truth = following_with_budget(deployment, data_root)
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            n = rng.randrange(NCHUNKS)
            try:
                fetch(url, "ds.b2nd", n * ITEMS, (n + 1) * ITEMS)
            except (OSError, AssertionError):
                return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        # Killed once eviction is well under way, at a chunk fetched at random.
        fetched = BUDGET // (ITEMS * 8) + random.randrange(8, 40)
        wait_for(lambda: stats(url)["fetched_chunks"] >= fetched, f"{fetched} chunks fetched")
        deployment.stop("sub", signal.SIGKILL)
        assert len(indexed(statedir)) < fetched - 8
    finally:
        stop.set()
        for t in threads:
            t.join()
    try:
        assert check_on_disk(statedir, data_root) > 0
        unreadable = False
    except RuntimeError:
        # Killed while Blosc2 rewrote the container's offsets, in place (README, "Failures").
        unreadable = True
    url = deployment.start_sub("sub", "--cache-size", str(BUDGET))
    deployment.wait_root("foo")
    assert np.array_equal(fetch(url, "ds.b2nd", 0, ITEMS * NCHUNKS // 4), truth[: ITEMS * NCHUNKS // 4])
    if unreadable:
        # Its cache started again, said so: nothing of it is served.
        assert "is unreadable (" in deployment.procs["sub"].output
    deployment.stop("sub")
    check_on_disk(statedir, data_root)
    assert sum(nbytes for _, nbytes in indexed(statedir).values()) <= BUDGET


def test_a_container_left_unreadable_by_a_kill_is_started_again(deployment, data_root):
    """Killed while Blosc2 rewrote a container's offsets in place (seen once in CI), the
    container cannot be opened: the restarted subscriber says so, forgets its chunks,
    and serves the publisher's data."""
    url, statedir, truth = following_with_budget(deployment, data_root)
    assert np.array_equal(fetch(url, "ds.b2nd", 0, 4 * ITEMS), truth[: 4 * ITEMS])
    wait_for(lambda: len(indexed(statedir)) == 4, "the chunks indexed")
    deployment.stop("sub", signal.SIGKILL)
    offsets = statedir / "cache" / "foo" / "ds.b2nd" / "chunks.b2frame"
    offsets.write_bytes(offsets.read_bytes()[: offsets.stat().st_size // 2])
    url = deployment.start_sub("sub", "--cache-size", str(BUDGET))
    deployment.wait_root("foo")
    assert np.array_equal(fetch(url, "ds.b2nd", ITEMS, 3 * ITEMS), truth[ITEMS : 3 * ITEMS])
    assert "cache container of foo/ds.b2nd is unreadable (" in deployment.procs["sub"].output
    deployment.stop("sub")
    assert check_on_disk(statedir, data_root) == 2


def test_min_free_evicts_without_a_budget(one_broker, tmp_path, data_root, monkeypatch, caplog):
    from catmqtt.subscriber import eviction

    with running(one_broker, tmp_path, data_root) as (_, sub):
        # A disk with 1 GiB and 600 kB free before the cache writes anything.
        total = 10 << 30
        free = (1 << 30) + 600_000

        def disk_usage(path):
            left = free - sub.cache.usage().bytes
            return shutil._ntuple_diskusage(total, total - left, left)

        monkeypatch.setattr(eviction.shutil, "disk_usage", disk_usage)
        statedir = tmp_path / "sub"
        for n in range(8):
            read_chunk(sub.url, n)
            wait_for(lambda n=n: n in indexed(statedir), f"chunk {n} stored")
        usage = sub.cache.usage()
        assert usage.bytes <= 600_000 and usage.evictions >= 4 and usage.limit is None
        # Said once, not at every pass.
        assert caplog.text.count("to keep 1073741824 bytes free on the disk of") == 1
        assert "(subscriber.min_free)" in caplog.text


def test_a_download_larger_than_the_budget_gets_507(one_broker, tmp_path, data_root):
    # A download is built from the cache, whole: all its chunks at once.
    with running(one_broker, tmp_path, data_root, cache_size="1MiB") as (_, sub):
        r = requests.get(f"{sub.url}/api/download/foo/ds.b2nd", timeout=60)
        assert r.status_code == 507, r.text
        assert "more than its budget of 1048576 bytes (subscriber.cache_size" in r.json()["error"]
        assert "download it with a progress bar" in r.json()["error"]
        assert sub.cache.usage().bytes <= 1 << 20
        # The failed download holds nothing: other chunks are cached in its place.
        cached = set(indexed(tmp_path / "sub"))
        n = min(set(range(NCHUNKS)) - cached)
        r = requests.get(f"{sub.url}/api/chunk/foo/ds.b2nd", params={"nchunk": n}, timeout=60)
        assert r.status_code == 200, r.text
        assert n in indexed(tmp_path / "sub")
