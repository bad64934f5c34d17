"""The cache's budget under load: hit ratio, cost of eviction, a cached read's p99, disk use.

Creates a root with `ws` (an int64 array that does not compress, `--chunks`
chunks of 256 KiB: the working set) and `hot` (1,000 items), runs a broker,
a publisher and subscribers as separate processes on loopback, and for each
of `--runs` runs (medians printed):

- a subscriber without a budget (the baseline), then one whose budget is half
  the working set (``--cache-size``), each fed for `--seconds` by 4 clients
  reading whole chunks of `ws` picked at random (uniformly: a cyclic scan of
  twice the budget gets no hits from LRU at all), while a probe reads a
  cached 10-element slice of `hot` back to back;
- the hit ratio: 1 - chunks fetched / chunks read, against the best LRU can
  do (an LRU cache of as many chunks as the budget holds, simulated on the
  trace of the reads in the order they were answered);
- the probe's p50 and p99, with the budget and without (goal: within 2x);
- the peak bytes of chunk files on disk (sampled every 20 ms) against the
  budget, and against the budget plus one chunk per fetch worker;
- the cost of eviction per chunk: `Chunks.evict` timed in this process on a
  cache of the same chunks, in batches of 32 (index rows and Blosc2's
  ``update_special``).

    python benchmarks/eviction.py [--chunks 128] [--seconds 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import suppress
from pathlib import Path

import blosc2
import numpy as np
import requests

from catmqtt import storage
from catmqtt.subscriber.cache import Cache
from catmqtt.testing import Procs, wait_for

ITEMS = 32768  # int64 items a chunk: 256 KiB
CLIENTS = 4
WORKERS = 8  # the subscriber's fetch_workers (default)


def make_root(root: Path, nchunks: int) -> None:
    root.mkdir()
    data = np.random.default_rng(0).integers(0, 2**62, ITEMS * nchunks)
    blosc2.asarray(data, chunks=(ITEMS,), blocks=(8192,), urlpath=str(root / "ws.b2nd"))
    blosc2.asarray(np.arange(1000), urlpath=str(root / "hot.b2nd"))


def load(url: str, seed: int, nchunks: int, until: float) -> list[tuple[float, int]]:
    """Read random whole chunks until `until` (time.time()); return (time answered, chunk)."""
    rng = np.random.default_rng(seed)
    session = requests.Session()
    trace = []
    while time.time() < until:
        n = int(rng.integers(nchunks))
        r = session.get(f"{url}/api/fetch/bench/ws.b2nd", params={"slice": f"{n * ITEMS}:{(n + 1) * ITEMS}"})
        r.raise_for_status()
        trace.append((time.time(), n))
    return trace


def probe(url: str, until: float) -> list[float]:
    """Read a cached 10-element slice back to back until `until`; return the seconds each took."""
    session = requests.Session()
    times = []
    while time.time() < until:
        start = time.perf_counter()
        session.get(f"{url}/api/fetch/bench/hot.b2nd", params={"slice": "500:510"}).raise_for_status()
        times.append(time.perf_counter() - start)
    return times


def lru_hits(trace: list[int], capacity: int) -> int:
    """Return how many reads of `trace` an LRU cache of `capacity` chunks hits."""
    cache: collections.OrderedDict[int, None] = collections.OrderedDict()
    hits = 0
    for n in trace:
        if n in cache:
            hits += 1
            cache.move_to_end(n)
        else:
            cache[n] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits


def disk_bytes(statedir: Path) -> int:
    total = 0
    for f in (statedir / "cache").rglob("*.chunk"):
        with suppress(FileNotFoundError):
            total += f.stat().st_size
    return total


def phase(run: Procs, broker: str, statedir: Path, nchunks: int, seconds: float, *extra: str) -> dict:
    """Run one subscriber under load; return what it did."""
    proc = run.node(statedir.name, ("sub",), broker, statedir, "--loglevel", "WARNING", *extra)
    url = f"http://127.0.0.1:{proc.port}"
    wait_for(lambda: "bench" in requests.get(f"{url}/api/roots").json(), "the root", 120, procs=[proc])
    requests.post(f"{url}/api/subscribe/bench").raise_for_status()
    requests.get(f"{url}/api/fetch/bench/hot.b2nd", params={"slice": "500:510"}).raise_for_status()
    until = time.time() + seconds
    peak = 0
    with ProcessPoolExecutor(CLIENTS + 1) as pool:
        loads = [pool.submit(load, url, seed, nchunks, until) for seed in range(CLIENTS)]
        probed = pool.submit(probe, url, until)
        while not probed.done():
            peak = max(peak, disk_bytes(statedir))
            with suppress(TimeoutError):
                probed.result(0.02)
        trace = [n for _, n in sorted(t for f in loads for t in f.result())]
        times = sorted(probed.result())
    stats = requests.get(f"{url}/api/stats").json()["datasets"]["bench/ws.b2nd"]
    run.stop(proc)
    return {
        "reads": len(trace),
        "trace": trace,
        "fetched": stats["fetched_chunks"],
        "p50": times[len(times) // 2],
        "p99": times[int(len(times) * 0.99)],
        "peak_disk": peak,
    }


def eviction_cost(workdir: Path, url: str, nchunks: int) -> float:
    """Return the seconds `Chunks.evict` takes per chunk, in batches of 32, on a cache
    of the publisher's chunks."""
    meta = requests.get(f"{url}/api/info/ws.b2nd").json()
    cache = Cache.open(workdir / "cost")
    cache.set_dataset("bench", "ws.b2nd", meta)
    session = requests.Session()
    for n in range(nchunks):
        data = session.get(f"{url}/api/chunk/ws.b2nd", params={"nchunk": n}).content
        cache.chunks.store_chunk("bench", "ws.b2nd", meta, n, data, storage.chunk_digest(data), url)
    rows = cache.index.query("SELECT nchunk, last_access FROM chunks ORDER BY nchunk")
    start = time.perf_counter()
    for i in range(0, len(rows), 32):
        cache.chunks.evict("bench", "ws.b2nd", meta, rows[i : i + 32])
    spent = time.perf_counter() - start
    assert cache.usage().bytes == 0
    cache.close()
    return spent / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=128, help="chunks of 256 KiB in the working set")
    parser.add_argument("--seconds", type=float, default=10, help="seconds of load in each phase")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    nchunks = args.chunks
    with tempfile.TemporaryDirectory(prefix="catmqtt-eviction-") as tmp:
        workdir = Path(tmp)
        make_root(workdir / "root", nchunks)
        chunk = blosc2.open(str(workdir / "root" / "ws.b2nd")).schunk.cbytes // nchunks
        budget = nchunks * chunk // 2
        print(f"working set {nchunks} chunks of {chunk:,} bytes; budget {budget:,} bytes", flush=True)
        results: dict[str, list[float]] = collections.defaultdict(list)
        with Procs(workdir, timeout=120) as run:
            broker = run.broker()
            pub = run.node(
                "pub", ("pub", "bench", workdir / "root"), broker, workdir / "pub", "--loglevel", "WARNING"
            )
            pub_url = f"http://127.0.0.1:{pub.port}"
            results["evict_ms_per_chunk"] = [1000 * eviction_cost(workdir, pub_url, nchunks)]
            for i in range(args.runs):
                base = phase(run, broker, workdir / f"base{i}", nchunks, args.seconds)
                bound = phase(
                    run, broker, workdir / f"bound{i}", nchunks, args.seconds, "--cache-size", str(budget)
                )
                capacity = budget // chunk
                best = lru_hits(bound["trace"], capacity) / bound["reads"]
                hit = 1 - bound["fetched"] / bound["reads"]
                results["hit_ratio"].append(hit)
                results["lru_best"].append(best)
                results["hit_vs_best"].append(hit / best)
                results["p50_base_ms"].append(1000 * base["p50"])
                results["p50_budget_ms"].append(1000 * bound["p50"])
                results["p99_base_ms"].append(1000 * base["p99"])
                results["p99_budget_ms"].append(1000 * bound["p99"])
                results["p99_ratio"].append(bound["p99"] / base["p99"])
                results["reads_base"].append(base["reads"])
                results["reads_budget"].append(bound["reads"])
                results["peak_disk_vs_budget"].append(bound["peak_disk"] / budget)
                results["peak_disk_over_budget_chunks"].append((bound["peak_disk"] - budget) / chunk)
                print(
                    f"run {i + 1}: " + ", ".join(f"{k} {v[-1]:.3g}" for k, v in results.items()), flush=True
                )
        print("\nmedians:")
        for key, values in results.items():
            print(f"  {key:32s} {statistics.median(values):10.3f}")
        print(f"  (allowed: peak disk over the budget by {WORKERS} chunks, one per fetch worker)")


if __name__ == "__main__":
    main()
