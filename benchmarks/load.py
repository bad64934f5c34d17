"""Fair service under load: a small cached read while many clients fetch whole arrays.

Creates a root with `big` (a ~320 MB float64 array that does not compress,
4 MiB chunks) and `small` (1,000 items), runs a broker, a publisher and a
subscriber as separate processes on loopback, caches both arrays, and then,
for `--seconds` (30) at a time:

- 200 clients fetch the whole of `big` again and again, half as ``.npy``,
  half in the Blosc2 format; 20 of them are slow readers (about 1 MB/s).
  A client told 503 waits what Retry-After says and asks again;
- 150 connections each send half a request and then nothing (reconnecting
  when the subscriber closes them);
- a probe reads a cached 10-element slice of `small`, 5 times a second, each
  time on a new connection (10 s timeout).

It prints the probe's p50/p99, its failures, the subscriber's peak RSS and
its peak temporary disk (files open or present under its ``tmp``
directory, unlinked ones included), and what the clients got. With
`--runs N` the subscriber is restarted before each run, and the figures are
medians over the runs.

    python benchmarks/load.py [--runs 3] [--seconds 30] [--clients 200]
"""

from __future__ import annotations

import argparse
import http.client
import io
import multiprocessing
import os
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import blosc2
import numpy as np
import requests
from fetch import CHUNK, Run

from catmqtt.testing import Proc, wait_for

NPY = "application/x-npy"
CFRAME = "application/x-blosc2-cframe"
BIG = 40_000_000  # float64 items: 320 MB
SLOW_RATE = 1 << 20  # bytes per second a slow reader takes
HALF_SENT = 150
PROBE_HZ = 5
PROBE_TIMEOUT = 10.0


def make_root(root: Path) -> np.ndarray:
    root.mkdir(parents=True)
    per_chunk = CHUNK // 8
    path = str(root / "big.b2nd")
    big = blosc2.empty((BIG,), dtype=np.float64, chunks=(per_chunk,), urlpath=path, mode="w")
    rng = np.random.default_rng(0)
    for start in range(0, BIG, 8 * per_chunk):
        stop = min(BIG, start + 8 * per_chunk)
        big[start:stop] = rng.random(stop - start)
    small = np.arange(1_000, dtype=np.float64)
    blosc2.asarray(small, urlpath=str(root / "small.b2nd"), mode="w")
    return small


def fetcher(port: int, npy: bool, slow: bool, deadline: float, counts: Counter, lock: threading.Lock) -> None:
    """Fetch the whole of `big` until `deadline`; count what comes back."""
    buffer = bytearray(256 << 10)
    headers = {"Accept": NPY if npy else CFRAME}
    kind = ("npy" if npy else "b2") + (" slow" if slow else "")
    while (left := deadline - time.monotonic()) > 0:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=max(left, 1))
        outcome = "done"
        try:
            conn.request("GET", "/api/fetch/bench/big.b2nd", headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                outcome = str(response.status)
                retry = float(response.getheader("Retry-After") or 0)
                response.read()
                time.sleep(max(0.0, min(retry, deadline - time.monotonic())))
            else:
                while time.monotonic() < deadline:
                    n = response.readinto(buffer)
                    if not n:
                        break
                    if slow:
                        time.sleep(n / SLOW_RATE)
                else:
                    outcome = "unfinished"
        except (OSError, http.client.HTTPException) as exc:
            outcome = type(exc).__name__
        finally:
            conn.close()
        with lock:
            counts[f"{kind}: {outcome}"] += 1


def half_sender(port: int, deadline: float, counts: Counter, lock: threading.Lock) -> None:
    """Hold a connection with half a request until `deadline`, reconnecting when it is closed."""
    while (left := deadline - time.monotonic()) > 0:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=left) as sock:
                sock.sendall(b"GET /api/fetch/bench/big.b2nd HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                with lock:
                    counts["half-sent: sent"] += 1
                # The subscriber closing the connection ends the wait.
                sock.settimeout(max(deadline - time.monotonic(), 0.01))
                sock.recv(1)
        except TimeoutError:
            return
        except OSError:
            time.sleep(0.1)


def load(
    port: int, clients: int, slow: int, formats: str, seconds: float, results: multiprocessing.Queue
) -> None:
    """Run the clients and half-sent requests for `seconds`; put what they got on `results`."""
    counts: Counter = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=fetcher,
            args=(
                port,
                formats == "npy" or (formats == "both" and i % 2 == 0),
                i < slow,
                deadline,
                counts,
                lock,
            ),
        )
        for i in range(clients)
    ] + [threading.Thread(target=half_sender, args=(port, deadline, counts, lock)) for _ in range(HALF_SENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(dict(counts))


def open_temp_bytes(pid: int, tmpdir: Path) -> int:
    """Return the bytes of the files under `tmpdir`, present or open (unlinked too) in process `pid`."""
    files: dict[tuple[int, int], int] = {}
    try:
        for entry in os.scandir(tmpdir):
            st = entry.stat()
            files[st.st_dev, st.st_ino] = st.st_size
    except FileNotFoundError:
        pass
    fds = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fds):
        try:
            if os.readlink(fds / fd).startswith(str(tmpdir)):
                st = os.stat(fds / fd)
                files[st.st_dev, st.st_ino] = st.st_size
        except OSError:
            continue
    return sum(files.values())


def probe(
    url: str, expected: np.ndarray, times: list[tuple[float, float]], failures: Counter, t0: float
) -> None:
    start = time.perf_counter()
    try:
        response = requests.get(url, headers={"Accept": NPY}, timeout=PROBE_TIMEOUT)
        if response.status_code != 200:
            failures[f"HTTP {response.status_code}"] += 1
        elif not np.array_equal(np.load(io.BytesIO(response.content)), expected):
            failures["wrong values"] += 1
    except requests.RequestException as exc:
        failures[type(exc).__name__] += 1
    times.append((time.perf_counter() - start, start - t0))


def one_run(sub: Proc, tmpdir: Path, small: np.ndarray, args: argparse.Namespace) -> dict:
    port = sub.port
    results: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    loader = multiprocessing.get_context("spawn").Process(
        target=load, args=(port, args.clients, args.slow, args.formats, args.seconds, results)
    )
    loader.start()
    url = f"http://127.0.0.1:{port}/api/fetch/bench/small.b2nd?slice=500:510"
    times: list[tuple[float, float]] = []
    failures: Counter = Counter()
    probes = []
    peak_tmp = 0
    start = time.monotonic()
    t0 = time.perf_counter()
    tick = 0
    # The probes keep their schedule, whatever the answers take.
    while (now := time.monotonic()) < start + args.seconds:
        if now >= start + tick / PROBE_HZ:
            thread = threading.Thread(target=probe, args=(url, small[500:510], times, failures, t0))
            thread.start()
            probes.append(thread)
            tick += 1
        peak_tmp = max(peak_tmp, open_temp_bytes(sub.pid, tmpdir))
        time.sleep(0.02)
    for thread in probes:
        thread.join()
    clients = results.get(timeout=120)
    loader.join()
    times.sort()
    return {
        "p50": times[len(times) // 2][0],
        "p99": times[min(len(times) - 1, int(len(times) * 0.99))][0],
        "slowest": sorted(times[-6:], key=lambda t: t[1]),
        "probes": len(times),
        "failures": sum(failures.values()),
        "failure kinds": dict(failures),
        "rss": sub.peak_rss_mb(),
        "tmp": peak_tmp / 1e6,
        "clients": clients,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="runs, each with a fresh subscriber process")
    parser.add_argument("--seconds", type=float, default=30, help="length of each run")
    parser.add_argument("--clients", type=int, default=200, help="clients fetching the whole array")
    parser.add_argument("--slow", type=int, default=20, help="how many of them read slowly")
    parser.add_argument(
        "--formats", choices=["both", "npy", "b2"], default="both", help="what the clients ask for"
    )
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory(prefix="catmqtt-load-") as tmp:
        workdir = Path(tmp)
        print(f"creating a {BIG * 8 / 1e6:.0f} MB array...", flush=True)
        small = make_root(workdir / "root")
        with Run(workdir) as run:
            broker = run.broker()
            run.publisher(broker)
            statedir = workdir / "sub"
            # Everything cached first, by a subscriber of its own: the runs measure serving, not fetching.
            proc, client = run.subscriber("sub", broker, statedir)
            requests.get(f"{client.urlbase}/api/download/bench/big.b2nd", timeout=600).raise_for_status()
            assert client.fetch("bench/small.b2nd", "500:510").shape == (10,)
            run.stop(proc)
            for i in range(args.runs):
                proc, client = run.subscriber("sub", broker, statedir)
                wait_for(
                    lambda c=client: c.fetch("bench/small.b2nd", "500:510") is not None,
                    "a first probe",
                    600,
                    procs=[proc],
                )
                result = one_run(proc, statedir / "tmp", small, args)
                runs.append(result)
                print(
                    f"run {i + 1}: probe p50 {result['p50'] * 1e3:.0f} ms, p99 {result['p99'] * 1e3:.0f} ms,"
                    f" {result['failures']} failures of {result['probes']} {result['failure kinds'] or ''};"
                    f" peak RSS {result['rss']:.0f} MB; peak temporary disk {result['tmp']:.0f} MB",
                    flush=True,
                )
                slowest = ", ".join(f"{took * 1e3:.0f} ms at {at:.1f} s" for took, at in result["slowest"])
                print(f"    slowest probes: {slowest}")
                for what, count in sorted(result["clients"].items()):
                    print(f"    {what}: {count}")
                run.stop(proc)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(
        f"\n{args.clients} clients ({args.slow} slow) and {HALF_SENT} half-sent requests, {args.seconds:g} s,"
        f" median of {len(runs)} run(s):"
    )
    print(f"probe p50 / p99        {med('p50') * 1e3:.0f} / {med('p99') * 1e3:.0f} ms   goal p99 <= 100 ms")
    print(f"probe failures         {med('failures'):.0f} of {med('probes'):.0f}   goal 0")
    print(f"subscriber peak RSS    {med('rss'):.0f} MB   goal <= 500 MB")
    print(f"peak temporary disk    {med('tmp'):.0f} MB   goal <= 1000 MB")


if __name__ == "__main__":
    main()
