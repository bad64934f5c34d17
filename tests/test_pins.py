"""Pins (mirrored roots, directories and datasets) and forgetting roots, with real
processes: a broker, a publisher, a subscriber and the ``catmqtt`` command."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator

import blosc2
import numpy as np
import pytest
import requests
from test_progress import on_terminal

import catmqtt
from catmqtt import config, storage
from catmqtt.errors import ConfigError

from conftest import Broker, ChunkCounter, Deployment, run_cli, running, wait_for

# The sample root's datasets under dir1.
DIR1 = ["dir1/ds-2d.b2nd", "dir1/ds-3d.b2nd"]


@pytest.fixture(scope="module")
def amqtt(tmp_path_factory) -> Iterator[Broker]:
    """One embedded broker for the module: pins do not depend on the broker."""
    b = Broker("amqtt", tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture
def d(amqtt, tmp_path) -> Iterator[Deployment]:
    d = Deployment(amqtt, tmp_path)
    yield d
    d.stop_all()


def pins(d: Deployment) -> list[dict]:
    result = d.cli("pins", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def fetched(d: Deployment) -> int:
    return requests.get(f"{d.url('sub')}/api/stats", timeout=10).json()["total"]["fetched_chunks"]


def nchunks(d: Deployment, paths: list[str]) -> int:
    client = catmqtt.Client(d.url("sub"))
    return sum(client.get_info(f"foo/{p}")["nchunks"] for p in paths)


def test_pin_wait_then_read_everything_with_the_publisher_gone(d, root_dir):
    d.serve_foo(root_dir)
    paths = [p.removeprefix("foo/") for p in d.cli("list", "foo").stdout.split()]
    result = d.cli("pin", "--wait", "foo")
    # Not a terminal: no progress bar, nothing but the answer.
    assert (result.returncode, result.stdout, result.stderr) == (0, "Ok\n", "")
    [pin] = pins(d)
    assert pin["done"] and pin["cached"] == pin["total"] > 0 and pin["error"] is None
    assert (pin["root"], pin["path"], pin["datasets"]) == ("foo", "", len(paths))
    assert fetched(d) == nchunks(d, paths)
    assert (
        d.cli("pins").stdout
        == f"foo: {config.format_size(pin['total'])} of {config.format_size(pin['total'])}\n"
    )

    d.stop("pub-foo")
    d.wait_root("foo", online=False)
    # Pins outlive a restart.
    d.stop("sub")
    d.start_sub()
    assert pins(d) == [pin]
    client = catmqtt.Client(d.url("sub"))
    for path in paths:
        data = client.fetch(f"foo/{path}")
        if path.endswith(".b2nd"):
            assert np.array_equal(data, blosc2.open(str(root_dir / path))[()])
        elif path == "README.md":
            assert data == (root_dir / path).read_bytes()
    assert fetched(d) == 0


def test_changes_of_pinned_datasets_are_fetched_without_a_read(d, root_dir):
    d.serve_foo(root_dir)
    assert d.cli("pin", "--wait", "foo/dir1").stdout == "Ok\n"
    before = fetched(d)
    assert before == nchunks(d, DIR1)
    # One chunk rewritten, and a dataset new under the pinned directory.
    array = blosc2.open(str(root_dir / "dir1/ds-2d.b2nd"), mode="a")
    expected = array[()]
    expected[0, 0] = 7777
    array[0, 0] = 7777
    fresh = np.arange(300, dtype=np.int16)
    blosc2.asarray(fresh, urlpath=str(root_dir / "dir1/new.b2nd"), mode="w", chunks=(100,))
    etag = storage.file_etag(root_dir / "dir1/ds-2d.b2nd")

    def caught_up():
        [pin] = pins(d)
        info = requests.get(f"{d.url('sub')}/api/info/foo/dir1/ds-2d.b2nd", timeout=10).json()
        return pin["done"] and pin["datasets"] == 3 and info["etag"] == etag

    wait_for(caught_up, "the changed chunk and the new dataset cached")
    # Only the changed chunk came again, and the new dataset's three.
    assert fetched(d) == before + 1 + 3
    d.stop("pub-foo")
    client = catmqtt.Client(d.url("sub"))
    assert np.array_equal(client.fetch("foo/dir1/ds-2d.b2nd"), expected)
    assert np.array_equal(client.fetch("foo/dir1/new.b2nd"), fresh)


def test_prefetch_keeps_to_its_rate_and_gives_way_to_reads(d, root_dir, tmp_path):
    rate, chunk = 200_000, 50_000
    # Random doubles, that do not compress: 16 chunks of 50 kB, and twice as many.
    rng = np.random.default_rng(3)
    for name, n in (("big.b2nd", 16), ("bigger.b2nd", 32)):
        data = rng.random(n * chunk // 8)
        blosc2.asarray(data, urlpath=str(root_dir / name), mode="w", chunks=(chunk // 8,))
    conf = tmp_path / "catmqtt.yaml"
    conf.write_text("subscriber:\n  prefetch_rate: 200kB\n  cache_size: 1MiB\n")
    d.start_pub("foo", root_dir)
    d.start_sub("sub", "--conf", conf)
    d.wait_root("foo")
    # What can never be cached whole within the budget is not pinned.
    result = d.cli("pin", "foo/bigger.b2nd")
    assert result.returncode == 1
    assert re.fullmatch(
        r"Error: pinning foo/bigger.b2nd would keep 1\.\d MiB pinned, over the cache's budget of 1\.0 MiB"
        r" \(subscriber.cache_size\): pin less, or raise the budget\n",
        result.stderr,
    ), result.stderr
    client = catmqtt.Client(d.url("sub"))
    assert client.pins() == []
    start = time.monotonic()
    assert client.pin("foo/big.b2nd") == "Ok"
    samples = []

    def sampled() -> bool:
        [pin] = client.pins()
        samples.append((time.monotonic() - start, pin["cached"]))
        return samples[-1][0] > 2.5 and samples[-1][1] >= chunk

    wait_for(sampled, "2.5 s of prefetching, a chunk at least")
    # A read of a dataset not pinned does not wait for the rate.
    assert np.array_equal(client.fetch("foo/ds-1d.b2nd"), np.arange(1000))
    for elapsed, cached in samples:
        # The first chunk goes at once; a generous second of slack.
        assert cached <= rate * (elapsed + 1) + chunk * 1.1, samples

    # Restarted (without a rate), the subscriber goes on with what is pinned.
    d.stop("sub")
    d.start_sub()
    wait_for(lambda: catmqtt.Client(d.url("sub")).pins()[0]["done"], "the rest of the pin cached")


def test_an_unpinned_dataset_is_fetched_no_further(d, root_dir, tmp_path):
    # 40 chunks of 50 kB that do not compress, at 100 kB/s: 20 s to fetch whole.
    data = np.random.default_rng(4).random(40 * 50_000 // 8)
    blosc2.asarray(data, urlpath=str(root_dir / "big.b2nd"), mode="w", chunks=(50_000 // 8,))
    conf = tmp_path / "catmqtt.yaml"
    conf.write_text("subscriber:\n  prefetch_rate: 100kB\n")
    d.start_pub("foo", root_dir)
    d.start_sub("sub", "--conf", conf)
    d.wait_root("foo")
    client = catmqtt.Client(d.url("sub"))
    client.pin("foo/big.b2nd")
    wait_for(lambda: client.pins()[0]["cached"] > 0, "the first chunks of the pin")
    client.unpin("foo/big.b2nd")
    stopped_at = client.stats()["datasets"]["foo/big.b2nd"]["fetched_chunks"]
    # Pinned now, a dataset that comes after it: the prefetcher gets to it once it left big.b2nd.
    assert client.pin("foo/ds-1d.b2nd", wait=True)["done"]
    assert client.stats()["datasets"]["foo/big.b2nd"]["fetched_chunks"] <= stopped_at + 1


def test_a_pin_of_a_dataset_gone_says_so(d, root_dir):
    d.serve_foo(root_dir)
    client = catmqtt.Client(d.url("sub"))
    assert client.pin("foo/ds-1d.b2nd", wait=True)["done"]
    (root_dir / "ds-1d.b2nd").unlink()
    gone = "no dataset or directory 'ds-1d.b2nd' in root 'foo' any more: unpin it"
    wait_for(lambda: client.pins()[0]["error"] == gone, "the pin told gone")
    assert not client.pins()[0]["done"]
    with pytest.raises(catmqtt.errors.NotFound, match="no dataset or directory 'ds-1d.b2nd' in root"):
        client.pin("foo/ds-1d.b2nd", wait=True)
    assert client.unpin("foo/ds-1d.b2nd") == "Ok"


def test_pins_over_a_lowered_budget_are_told(d, root_dir):
    data = np.random.default_rng(5).random(300_000)
    blosc2.asarray(data, urlpath=str(root_dir / "big.b2nd"), mode="w", chunks=(50_000,))
    d.start_pub("foo", root_dir)
    d.start_sub("sub", "--cache-size", "4MiB")
    d.wait_root("foo")
    client = catmqtt.Client(d.url("sub"))
    assert client.pin("foo/dir1", wait=True)["done"]
    assert client.pin("foo/big.b2nd", wait=False) == "Ok"
    # Restarted with a budget that the pins do not fit (about 2 MiB pinned).
    d.stop("sub")
    d.start_sub("sub", "--cache-size", "1MiB")
    over = "MiB, over the cache's budget of 1.0 MiB (subscriber.cache_size): unpin some, or raise"
    wait_for(lambda: over in d.procs["sub"].output, "the warning at start")
    wait_for(lambda: all(p["error"] and over in p["error"] for p in client.pins()), "the pins told")
    # What is whole stays so, and is told whole.
    assert next(p for p in client.pins() if p["path"] == "dir1")["done"]
    assert over in d.cli("pins").stdout


def test_prefetch_waits_for_the_reads_under_way(amqtt, tmp_path, root_dir):
    counters = []

    def slow(app) -> None:
        counters.append(ChunkCounter(app, delay=0.2))

    with running(amqtt, tmp_path, root_dir, slow) as (_, sub):
        client = catmqtt.Client(sub.url)
        reading = threading.Thread(target=client.fetch, args=("foo/ds-1d.b2nd",))
        reading.start()
        try:
            wait_for(lambda: counters[0].requests, "the read to ask the publisher")
            assert client.pin("foo/dir1/ds-2d.b2nd") == "Ok"
            wait_for(lambda: client.pins()[0]["done"], "the pin cached")
        finally:
            reading.join()
    paths = [path for path, _ in counters[0].requests]
    # Each of the read's 10 chunks asked for before any of the pin's.
    assert paths[:10] == ["ds-1d.b2nd"] * 10 and set(paths[10:]) == {"dir1/ds-2d.b2nd"}, paths


def test_pin_unpin_and_bad_input(d, root_dir):
    d.start_pub("foo", root_dir)
    d.start_sub()
    d.wait_root("foo")
    assert d.cli("roots").stdout == "foo\n"
    # Pinning subscribes; pinning twice is pinning once.
    for _ in range(2):
        result = d.cli("pin", "foo/dir1/")
        assert (result.returncode, result.stdout) == (0, "Ok\n"), result.stderr
    assert d.cli("roots").stdout == "foo (subscribed)\n"
    assert d.cli("pin", "foo/ds-1d.b2nd").stdout == "Ok\n"
    wait_for(lambda: all(p["done"] for p in pins(d)), "the pins cached")
    listed = d.cli("pins").stdout.splitlines()
    assert [line.split(":")[0] for line in listed] == ["foo/dir1", "foo/ds-1d.b2nd"]

    for args, message in [
        (("pin", "nope"), "Error: no root 'nope' is known (see 'catmqtt roots')\n"),
        (("pin", "foo/nope"), "Error: no dataset or directory 'nope' in root 'foo'\n"),
        (("pin", "foo/dir"), "Error: no dataset or directory 'dir' in root 'foo'\n"),
        (("pin", "b@d/x"), "Error: invalid root name 'b@d'"),
        (("unpin", "foo"), "Error: foo is not pinned (see 'catmqtt pins')\n"),
        (("forget", "foo"), "Error: root 'foo' has pins (foo/dir1, foo/ds-1d.b2nd): unpin them first"),
        (("forget", "nope"), "Error: no root 'nope' is known"),
    ]:
        result = d.cli(*args)
        assert result.returncode == 1 and result.stderr.startswith(message), (args, result.stderr)
        assert result.stdout == ""
    # Nothing was lost.
    assert [p["path"] for p in pins(d)] == ["dir1", "ds-1d.b2nd"]
    assert d.cli("roots").stdout == "foo (subscribed)\n"

    assert d.cli("unpin", "foo/dir1").stdout == "Ok\n"
    assert [p["path"] for p in pins(d)] == ["ds-1d.b2nd"]
    assert d.cli("unpin", "foo/ds-1d.b2nd").stdout == "Ok\n"
    assert d.cli("pins").stdout == ""


def test_forget_with_the_publisher_online_and_offline(d, root_dir):
    d.serve_foo(root_dir)
    assert d.cli("show", "foo/ds-1d.b2nd[:3]").stdout == "[0 1 2]\n"
    cached = d.workdir / "sub" / "cache" / "foo"
    assert cached.is_dir()
    result = d.cli("forget", "foo")
    assert (result.returncode, result.stdout) == (0, "Ok\n"), result.stderr
    # Online: still listed, not subscribed; nothing of it cached.
    assert d.cli("roots").stdout == "foo\n"
    assert not cached.exists()
    assert "not subscribed" in d.cli("list", "foo").stderr
    # Subscribed again, it is fetched again.
    assert d.cli("subscribe", "foo").stdout == "Ok\n"
    before = fetched(d)
    assert d.cli("show", "foo/ds-1d.b2nd[:3]").stdout == "[0 1 2]\n"
    assert fetched(d) == before + 1

    d.stop("pub-foo")
    d.wait_root("foo", online=False)
    assert d.cli("roots").stdout == "foo (subscribed) (offline)\n"
    # Its publisher offline, what is pinned and not cached cannot come: said at once.
    result = d.cli("pin", "--wait", "foo/dir1")
    assert result.returncode == 1
    assert "the publisher of root 'foo' is offline" in result.stderr, result.stderr
    listed = d.cli("pins").stdout
    assert listed.startswith("foo/dir1: 0 B of 1.8 KiB (the publisher of root 'foo' is offline"), listed
    assert d.cli("unpin", "foo/dir1").stdout == "Ok\n"
    assert d.cli("forget", "foo").stdout == "Ok\n"
    # Offline: forgotten.
    assert d.cli("roots").stdout == ""
    assert d.cli("forget", "foo").returncode == 1


def test_pin_wait_draws_a_bar_on_a_terminal(d, root_dir, tmp_path):
    d.serve_foo(root_dir)
    status, written = on_terminal("pin", "--wait", "foo/dir1", "--sub", d.url("sub"), cwd=tmp_path)
    assert status == 0, written
    assert "pin foo/dir1: 100%" in written and "B/s" in written
    assert written.rstrip().endswith("Ok")


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        (1, 1),
        ("1000", 1000),
        ("500MB", 500_000_000),
        ("20GiB", 20 << 30),
        ("1.5 kB", 1500),
        ("2mib", 2 << 20),
    ],
)
def test_prefetch_rates(text, rate):
    assert (
        config.node_settings({"subscriber": {"prefetch_rate": text}}, "subscriber")["prefetch_rate"] == rate
    )


@pytest.mark.parametrize("text", ["-5", "12XB", "0", 0, "", "MB", "1e3", True, [1], "0.1"])
def test_bad_prefetch_rates(text):
    with pytest.raises(ConfigError, match="^prefetch_rate must be"):
        config.node_settings({"subscriber": {"prefetch_rate": text}}, "subscriber")


def test_bad_prefetch_rate_stops_the_subscriber_at_start(tmp_path):
    conf = tmp_path / "catmqtt.yaml"
    conf.write_text("subscriber:\n  prefetch_rate: 12XB\n")
    result = run_cli("sub", "--conf", str(conf), "--statedir", str(tmp_path / "sub"))
    assert result.returncode == 1
    assert result.stderr.startswith("Error: prefetch_rate must be a size in bytes, like 500MB, 20GiB")
    assert "not '12XB'" in result.stderr and result.stderr.count("\n") == 1
