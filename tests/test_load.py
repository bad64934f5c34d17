"""Large answers under load, with real processes: their budget and its 503s,
half-sent requests, streams that fail midway, temporary files.

How fast small reads are answered meanwhile is measured by benchmarks/load.py.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import blosc2
import numpy as np
import pytest
import requests

import catmqtt
from catmqtt.errors import Busy, CatmqttError, TooLarge, Unavailable
from catmqtt.subscriber.large import Budget

from conftest import DEADLINE, MOSQUITTO, Broker, Deployment, run_cli, wait_for

# big: 160 MB of float64 in 8 MB chunks (little on disk: they compress well);
# rnd and cut: 48 MB that do not compress.
ITEMS = 20_000_000
RANDOM = 6_000_000
CHUNK = 1_000_000
NPY = {"Accept": "application/x-npy"}
# Two HTTP threads for large answers, memory for one at a time, half-sent
# requests dropped after 2 s.
CONF = "subscriber:\n  http_threads: 4\n  max_stream_bytes: 1\n  http_timeout: 2\n"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> Iterator[Deployment]:
    """A subscriber (configured by CONF) following root foo: big.b2nd, rnd.b2nd and cut.b2nd."""
    workdir = tmp_path_factory.mktemp("load")
    root = workdir / "root"
    root.mkdir()
    blosc2.asarray(
        np.arange(ITEMS, dtype=np.float64), urlpath=str(root / "big.b2nd"), mode="w", chunks=(CHUNK,)
    )
    for name in ("rnd.b2nd", "cut.b2nd"):
        data = np.random.default_rng(7).random(RANDOM)
        blosc2.asarray(data, urlpath=str(root / name), mode="w", chunks=(CHUNK,))
    (workdir / "catmqtt.yaml").write_text(CONF)
    # What a subscriber killed while it built an answer leaves behind.
    (workdir / "sub" / "tmp").mkdir(parents=True)
    (workdir / "sub" / "tmp" / "left.b2nd").write_bytes(b"x" * 1000)
    broker = Broker("mosquitto" if MOSQUITTO else "amqtt", workdir).start()
    d = Deployment(broker, workdir)
    try:
        d.start_pub("foo", root)
        d.start_sub("sub", "--conf", workdir / "catmqtt.yaml")
        d.wait_root("foo")
        catmqtt.Client(d.url("sub")).subscribe("foo")
        yield d
    finally:
        d.stop_all()
        broker.stop()


def large(d: Deployment) -> dict:
    return requests.get(f"{d.url('sub')}/api/stats", timeout=10).json()["large"]


def open_temp_files(d: Deployment) -> list[str]:
    """Return the files under the subscriber's tmp directory that it has open (unlinked ones too)."""
    fds = Path(f"/proc/{d.procs['sub'].popen.pid}/fd")
    tmpdir = str(d.workdir / "sub" / "tmp")
    targets = []
    for fd in os.listdir(fds):
        try:
            targets.append(os.readlink(fds / fd))
        except OSError:
            continue
    return [t for t in targets if t.startswith(tmpdir)]


def test_a_large_request_past_the_budget_gets_busy_and_small_ones_are_answered(loaded):
    url = f"{loaded.url('sub')}/api/fetch/foo/big.b2nd"
    # One .npy stream, read only in part, holds all the memory large answers may take.
    with requests.get(url, headers=NPY, stream=True, timeout=DEADLINE) as held:
        assert held.status_code == 200
        assert int(held.headers["Content-Length"]) > ITEMS * 8
        held.raw.read(1 << 20)
        busy: list[requests.Response] = []
        waiting = threading.Thread(
            target=lambda: busy.append(requests.get(url, headers=NPY, timeout=DEADLINE))
        )
        waiting.start()
        # While the next one waits for its share, small reads are answered...
        wait_for(lambda: large(loaded)["threads_used"] == 2, "the second large request to wait")
        small = requests.get(url, params={"slice": "10:20"}, headers=NPY, timeout=DEADLINE)
        assert small.status_code == 200
        # ... and, every HTTP thread for large answers taken, one more large one is told at once.
        other = requests.get(url, headers=NPY, timeout=DEADLINE)
        assert other.status_code == 503 and 5 <= int(other.headers["Retry-After"]) <= 9
        assert "every HTTP thread for large answers is taken" in other.json()["error"]
        waiting.join(DEADLINE)
        assert busy[0].status_code == 503
        # Told to come back after 5 to 9 s, so that clients told at once do not come back at once.
        retry = busy[0].headers["Retry-After"]
        assert 5 <= int(retry) <= 9
        why = "large answers hold all the memory or disk they may"
        error = f"the subscriber is busy: {why}; try again in {retry} s"
        assert busy[0].json() == {"error": error, "status": 503}
    # Once the first is closed, its share is back.
    wait_for(lambda: large(loaded)["memory_used"] == 0, "the stream's memory to be given back")
    stats = large(loaded)
    assert stats["busy"] >= 2 and stats["threads_used"] == 0
    answer = requests.get(url, params={"slice": "::1000"}, headers=NPY, timeout=DEADLINE)
    assert answer.status_code == 200


def test_half_sent_requests_lock_nobody_out_and_are_dropped(loaded):
    port = int(loaded.url("sub").rsplit(":", 1)[1])
    # More than the 100 connections waitress takes by default.
    held = [socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) for _ in range(150)]
    try:
        for sock in held:
            sock.sendall(b"GET /api/roots HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        roots = requests.get(f"{loaded.url('sub')}/api/roots", timeout=DEADLINE)
        assert roots.status_code == 200 and "foo" in roots.json()
        # After http_timeout (2 s), the subscriber closes them, without an answer.
        for sock in held:
            assert sock.recv(1) == b""
    finally:
        for sock in held:
            sock.close()


def test_a_stream_that_fails_midway_ends_with_the_servers_error(loaded):
    client = catmqtt.Client(loaded.url("sub"))
    assert client.fetch("foo/cut.b2nd", slice(0, 10)).shape == (10,)
    # Every chunk cached, and checked once by this subscriber...
    assert requests.get(f"{loaded.url('sub')}/api/download/foo/cut.b2nd", timeout=DEADLINE).ok
    # ... then the last one lost from its disk: it is found missing only once the stream is under way.
    container = loaded.workdir / "sub" / "cache" / "foo" / "cut.b2nd"
    (container / f"{RANDOM // CHUNK - 1:08d}.chunk").unlink()
    message = "internal error (RuntimeError); the server's log has the details"
    # A fifth of chunks that do not compress: the client asks for the selection as .npy.
    with pytest.raises(CatmqttError, match=re.escape(message)) as raised:
        client.fetch("foo/cut.b2nd", slice(None, None, 5))
    assert raised.value.status == 500 and not isinstance(raised.value, Unavailable)
    result = run_cli("show", "foo/cut.b2nd[::5]", sub=loaded.url("sub"))
    assert (result.returncode, result.stderr) == (1, f"Error: {message}\n")
    # Any HTTP client sees the stream cut short of its Content-Length.
    url = f"{loaded.url('sub')}/api/fetch/foo/cut.b2nd?slice=::2"
    with requests.get(url, headers=NPY, stream=True, timeout=DEADLINE) as cut:
        assert cut.status_code == 200
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            cut.content  # noqa: B018
    # A Blosc2 answer is built whole before its status: the error is a plain JSON one.
    built = requests.get(url, timeout=DEADLINE)
    assert built.status_code == 500 and built.json() == {"error": message, "status": 500}
    assert (
        "the answer for foo/cut.b2nd failed midway, and ends with its error: internal error"
        in loaded.procs["sub"].output
    )


def test_temporary_files_are_unlinked_counted_and_closed(loaded):
    assert not (loaded.workdir / "sub" / "tmp" / "left.b2nd").exists()
    sub = loaded.url("sub")
    built = requests.get(f"{sub}/api/fetch/foo/big.b2nd", params={"slice": "1::3"}, timeout=DEADLINE)
    assert built.status_code == 200
    assert np.array_equal(
        blosc2.ndarray_from_cframe(built.content)[:], np.arange(1, ITEMS, 3, dtype=np.float64)
    )
    # A download (larger than what sockets buffer) read in part, the connection
    # then closed; one read whole.
    with requests.get(f"{sub}/api/download/foo/rnd.b2nd", stream=True, timeout=DEADLINE) as part:
        part.raw.read(1 << 16)
        assert large(loaded)["disk_used"] > 0
        assert open_temp_files(loaded)
    whole = requests.get(f"{sub}/api/download/foo/rnd.b2nd", timeout=DEADLINE)
    expected = np.random.default_rng(7).random(RANDOM)
    assert np.array_equal(blosc2.ndarray_from_cframe(whole.content)[:], expected)
    wait_for(lambda: large(loaded)["disk_used"] == 0, "the temporary disk to be given back")
    wait_for(lambda: not open_temp_files(loaded), "the temporary files to be closed")
    assert not os.listdir(loaded.workdir / "sub" / "tmp")
    assert 0 < large(loaded)["disk_peak"] <= large(loaded)["disk_limit"]


def test_a_selection_too_large_for_the_temporary_disk_gets_413(tmp_path, root_dir):
    conf = tmp_path / "catmqtt.yaml"
    conf.write_text("subscriber:\n  max_temp_bytes: 2000000\n")
    blosc2.asarray(np.random.default_rng(1).random(2 * CHUNK), urlpath=str(root_dir / "rnd.b2nd"), mode="w")
    broker = Broker("mosquitto" if MOSQUITTO else "amqtt", tmp_path).start()
    d = Deployment(broker, tmp_path)
    try:
        d.start_pub("foo", root_dir)
        d.start_sub("sub", "--conf", conf)
        d.wait_root("foo")
        catmqtt.Client(d.url("sub")).subscribe("foo")
        response = requests.get(f"{d.url('sub')}/api/fetch/foo/rnd.b2nd", timeout=DEADLINE)
        assert response.status_code == 413
        assert "over this subscriber's max_temp_bytes (2000000)" in response.json()["error"]
        # The same as .npy needs no disk; a small dataset's download fits.
        assert requests.get(f"{d.url('sub')}/api/fetch/foo/rnd.b2nd", headers=NPY, timeout=DEADLINE).ok
        assert requests.get(f"{d.url('sub')}/api/download/foo/ds-1d.b2nd", timeout=DEADLINE).ok
    finally:
        d.stop_all()
        broker.stop()


def test_the_budget_admits_what_fits_and_tells_the_rest_to_come_back():
    budget = Budget(threads=2, memory=10, disk=100, wait=0)
    first = budget.enter(memory=5, disk=60)
    with pytest.raises(Busy, match="large answers hold all the memory or disk they may") as busy:
        budget.enter(memory=6)
    assert 5 <= busy.value.retry_after <= 9 and busy.value.status == 503
    with pytest.raises(Busy, match="large answers hold all the memory or disk"):
        budget.enter(memory=1, disk=41)
    second = budget.enter(memory=5, disk=40)
    with pytest.raises(Busy, match="every HTTP thread for large answers is taken"):
        budget.enter(memory=0)
    with pytest.raises(TooLarge, match=re.escape("over this subscriber's max_temp_bytes (100): raise it")):
        budget.enter(memory=0, disk=101)
    # A built file keeps its disk only; the thread and the memory are free again.
    first.keep_only_disk(30)
    stats = budget.stats()
    assert stats.pop("busy") == 3
    assert stats == {
        **{"threads_used": 1, "memory_used": 5, "disk_used": 70},
        **{"threads_peak": 2, "memory_peak": 10, "disk_peak": 100},
        **{"threads_limit": 2, "memory_limit": 10, "disk_limit": 100},
    }
    for grant in (first, second, first):
        grant.release()
    assert [budget.stats()[f"{key}_used"] for key in ("threads", "memory", "disk")] == [0, 0, 0]
    # One answer alone may need more memory than the limit.
    budget.enter(memory=11).release()
