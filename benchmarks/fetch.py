"""Fetch speed and memory through a subscriber, against the local-read and wire limits.

Creates a root with two 1-D float64 arrays (`linspace`, which compresses
well, and `random`, which does not; 4 MiB chunks), runs a broker, a publisher
and subscribers as separate processes on loopback, and prints, per array,
each figure with its reference measured in the same run:

- local read: ``blosc2.open(path)[...]`` of the same selection;
- wire: one plain loopback HTTP GET of the dataset's compressed bytes,
  served from memory (the transfer floor);
- for the slices: the same client without its chunk cache, and
  python-blosc2's ``C2Array`` with its chunk cache (``blosc2.open(URLPath(...),
  lazy=True)``) reading the same subscriber, in this process and in a new
  one (after its imports), and with ``Client(plain_http=True)`` there; and in
  a new process, one GET of the dataset's metadata with requests (one round
  trip, as a first read of a few items makes).

    python benchmarks/fetch.py [--size 100000000] [--reps 3] [--json out.json]

`--size` is the number of elements per array (100 million: 800 MB each).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import blosc2
import numpy as np
import requests

import catmqtt
from catmqtt.testing import Proc, Procs, free_port, wait_for

CHUNK = 4 << 20  # bytes
WIRE_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
blobs = {name: open(path, "rb").read() for name, path in zip(sys.argv[2::2], sys.argv[3::2])}
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        blob = blobs[self.path.strip("/")]
        self.send_response(200)
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def timed(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# A first read in a process of its own, timed after the imports a program reading data has made.
NEW_PROCESS = """
import sys, time
import blosc2, numpy, requests, catmqtt
catmqtt.Client  # loads the client library
url, dataset, start, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
began = time.perf_counter()
{read}
print(time.perf_counter() - began)
"""
FIRST_READS = {
    "catmqtt": "catmqtt.Client(url).fetch(dataset, slice(start, stop))",
    # Through http.client, as the command line does, rather than requests.
    "catmqtt_plain": "catmqtt.Client(url, plain_http=True).fetch(dataset, slice(start, stop))",
    "blosc2": "blosc2.open(blosc2.URLPath(dataset, urlbase=url), lazy=True)[start:stop]",
    # The floor of a first read: one round trip, as requests makes it.
    "get": "requests.get(f'{url}/api/info/{dataset}').content",
}


def in_new_process(reader: str, urlbase: str, dataset: str, start: int, stop: int) -> float:
    """Time the first read of `start:stop` by `reader` (a key of FIRST_READS) in a new process."""
    code = NEW_PROCESS.format(read=FIRST_READS[reader])
    args = [sys.executable, "-c", code, urlbase, dataset, str(start), str(stop)]
    return float(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


def fetch_range(job: tuple[str, str, str]) -> None:
    """Fetch one selection as a client process of its own does."""
    urlbase, dataset, selection = job
    with catmqtt.Client(urlbase) as client:
        client.fetch(dataset, selection)


def make_root(root: Path, size: int) -> dict[str, Path]:
    root.mkdir(parents=True)
    per_chunk = CHUNK // 8
    paths = {}
    rng = np.random.default_rng(0)
    for name in ("linspace", "random"):
        path = paths[name] = root / f"{name}.b2nd"
        array = blosc2.empty((size,), dtype=np.float64, chunks=(per_chunk,), urlpath=str(path), mode="w")
        for start in range(0, size, 8 * per_chunk):
            stop = min(size, start + 8 * per_chunk)
            if name == "linspace":
                array[start:stop] = np.linspace(start / size, stop / size, stop - start, endpoint=False)
            else:
                array[start:stop] = rng.random(stop - start)
    return paths


class Run(Procs):
    """The processes of the benchmark, and their peak memory."""

    def __init__(self, workdir: Path) -> None:
        # A publisher of a large root may take a while to listen.
        super().__init__(workdir, timeout=120)
        self.rss: dict[str, float] = {}

    def publisher(self, broker: str, *extra: str) -> Proc:
        """Start a publisher of `<workdir>/root` as root bench, with `extra` options."""
        return self.node(
            "publisher", ("pub", "bench", self.workdir / "root"), broker, self.workdir / "pub",
            "--loglevel", "WARNING", *extra,
        )  # fmt: skip

    def subscriber(self, name: str, broker: str, statedir: Path) -> tuple[Proc, catmqtt.Client]:
        """Start a subscriber, wait until it sees root bench, and subscribe it."""
        proc = self.node(name, ("sub",), broker, statedir, "--loglevel", "WARNING")
        client = catmqtt.Client(f"http://127.0.0.1:{proc.port}")
        wait_for(lambda: "bench" in client.get_roots(), "the subscriber to see the root", 600, procs=[proc])
        client.subscribe("bench")
        return proc, client

    def note_rss(self, role: str, proc: Proc) -> None:
        self.rss[role] = max(self.rss.get(role, 0.0), proc.peak_rss_mb())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000_000, help="elements per array")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each figure")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    n, reps = args.size, args.reps
    per_chunk = CHUNK // 8

    with tempfile.TemporaryDirectory(prefix="catmqtt-fetch-") as tmp:
        workdir = Path(tmp)
        print(f"creating two arrays of {n:,} float64 ({n * 8 / 1e6:,.0f} MB each)...", flush=True)
        paths = make_root(workdir / "root", n)
        # Setup writes must not be written back to disk during the timed fetches.
        os.sync()
        with Run(workdir) as run:
            broker = run.broker()
            pub = run.publisher(broker)
            wire_args = [x for name, path in paths.items() for x in (name, path)]
            wire = free_port()
            run.start("wire", [sys.executable, "-c", WIRE_SERVER, wire, *wire_args], port=wire)

            def subscriber(tag: str) -> tuple[Proc, catmqtt.Client]:
                return run.subscriber(f"sub-{tag}", broker, workdir / f"sub-{tag}")

            results = {}
            for name, path in paths.items():
                dataset = f"bench/{name}.b2nd"
                local = blosc2.open(str(path))
                r = results[name] = {}
                r["cratio"] = round(local.schunk.cratio, 2)
                session = requests.Session()

                def references(r=r, local=local, name=name, session=session) -> None:
                    """Time the limits, before and after the figures: a burst of
                    load from elsewhere then skews the ratios less."""
                    r.setdefault("local_whole", []).extend(timed(lambda: local[...], reps))
                    url = f"http://127.0.0.1:{wire}/{name}"
                    r.setdefault("wire_whole", []).extend(
                        timed(lambda: session.get(url, stream=True).raw.read(), reps)
                    )
                    r.setdefault("local_near_whole", []).extend(timed(lambda: local[1 : n - 1], reps))

                references()

                cold = []
                for rep in range(reps):
                    # Nor the cache files of the previous repetition.
                    os.sync()
                    proc, client = subscriber(f"{name}-{rep}")
                    if rep == 0:
                        # Cold slices: each in a chunk nobody fetched yet.
                        offsets = [k * per_chunk for k in range(1, min(reps * 5, n // per_chunk - 1) + 1)]
                        r["slice_cold"] = []
                        for offset in offsets:
                            start = time.perf_counter()
                            client.fetch(dataset, f"{offset + 1_000}:{offset + 2_000}")
                            r["slice_cold"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    whole = client.fetch(dataset)
                    cold.append(time.perf_counter() - start)
                    assert whole.shape == (n,)
                    del whole
                    if rep < reps - 1:
                        run.note_rss("subscriber", proc)
                        run.stop(proc)
                r["whole_cold"] = cold
                r["whole_warm"] = timed(lambda client=client, d=dataset: client.fetch(d), reps)
                # Twice, so that the client fetches the chunk whole into its cache.
                for _ in range(2):
                    client.fetch(dataset, "1000:2000")
                etag = client.get_info(dataset)["etag"]
                wait_for(
                    lambda client=client, d=dataset, e=etag: (d, e, 0) in client.chunk_cache,
                    "chunk 0 to come into the client's cache",
                    600,
                )
                r["slice_warm"] = timed(
                    lambda client=client, d=dataset: client.fetch(d, "1000:2000"), reps * 5
                )
                with catmqtt.Client(client.urlbase, cache_bytes=0) as uncached:
                    r["slice_warm_uncached"] = timed(
                        lambda c=uncached, d=dataset: c.fetch(d, "1000:2000"), reps * 5
                    )
                remote = blosc2.open(blosc2.URLPath(dataset, urlbase=client.urlbase), lazy=True)
                r["slice_warm_blosc2"] = timed(lambda a=remote: a[1000:2000], reps * 5)
                for reader in FIRST_READS:
                    r[f"slice_new_{reader}"] = []
                for _ in range(reps * 3):
                    for reader in FIRST_READS:
                        t = in_new_process(reader, client.urlbase, dataset, 1000, 2000)
                        r[f"slice_new_{reader}"].append(t)
                r["near_whole_warm"] = timed(
                    lambda client=client, d=dataset: client.fetch(d, f"1:{n - 1}"), reps
                )

                tenth = n // 10
                one = timed(lambda client=client, d=dataset, t=tenth: client.fetch(d, f"0:{t}"), reps)
                r["one_client_mbps"] = tenth * 8 / statistics.median(one) / 1e6
                aggregate = []
                # Eight clients are eight processes, as eight users would be.
                # Spawned, not forked: this process runs threads.
                with ProcessPoolExecutor(8, mp_context=multiprocessing.get_context("spawn")) as pool:
                    list(pool.map(fetch_range, [(client.urlbase, dataset, "0:1")] * 8))
                    for _ in range(reps):
                        jobs = [(client.urlbase, dataset, f"{i * tenth}:{(i + 1) * tenth}") for i in range(8)]
                        start = time.perf_counter()
                        list(pool.map(fetch_range, jobs))
                        aggregate.append(8 * tenth * 8 / (time.perf_counter() - start) / 1e6)
                r["eight_clients_mbps"] = statistics.median(aggregate)
                run.note_rss("subscriber", proc)
                run.stop(proc)
                references()
            run.note_rss("publisher", pub)

    report(results, run.rss, n, args.json)


def report(results: dict, rss: dict, n: int, json_path: str | None) -> None:
    med = statistics.median

    def spread(times: list[float], unit: float = 1.0, fmt: str = "{:.3f}") -> str:
        low, mid, high = (fmt.format(v * unit) for v in (min(times), med(times), max(times)))
        return f"{mid} ({low}-{high})"

    def slice_row(r: dict, figure: str, ref: str | None = None, label: str = "blosc2") -> tuple[str, str]:
        ratio = f"{med(r[figure]) / med(r[ref]):.2f}x {label}" if ref else ""
        return spread(r[figure], 1e3, "{:.2f}"), ratio

    rows = []
    for name, r in results.items():
        ref = "local" if name == "linspace" else "wire"
        whole_ref = med(r["local_whole"] if ref == "local" else r["wire_whole"])
        near_ref = med(r["local_near_whole"] if ref == "local" else r["wire_whole"])
        goals = {"linspace": (2.5, 1.5, 2.0), "random": (1.5, 1.2, 1.5)}[name]
        rows += [
            (name, "local read, whole (s)", spread(r["local_whole"]), "", ""),
            (name, "wire, whole (s)", spread(r["wire_whole"]), "", ""),
            (
                name,
                "whole, cold (s)",
                spread(r["whole_cold"]),
                f"{med(r['whole_cold']) / whole_ref:.2f}x {ref}",
                f"<= {goals[0]}x",
            ),
            (
                name,
                "whole, warm (s)",
                spread(r["whole_warm"]),
                f"{med(r['whole_warm']) / whole_ref:.2f}x {ref}",
                f"<= {goals[1]}x",
            ),
            (name, "slice 1000:2000, cold (ms)", spread(r["slice_cold"], 1e3, "{:.1f}"), "", "<= 10 ms"),
            (
                name,
                "slice 1000:2000, warm (ms)",
                *slice_row(r, "slice_warm", "slice_warm_blosc2"),
                "<= 0.5 ms",
            ),
            (name, "  without the client cache", *slice_row(r, "slice_warm_uncached"), "<= 3 ms"),
            (name, "  blosc2 C2Array, lazy", *slice_row(r, "slice_warm_blosc2"), ""),
            (
                name,
                "slice 1000:2000, new process (ms)",
                *slice_row(r, "slice_new_catmqtt", "slice_new_get", "one GET"),
                "<= 5 ms",
            ),
            (
                name,
                "  Client(plain_http=True)",
                *slice_row(r, "slice_new_catmqtt_plain", "slice_new_get", "one GET"),
                "<= 5 ms",
            ),
            (name, "  blosc2 C2Array, lazy", *slice_row(r, "slice_new_blosc2"), ""),
            (name, "  one GET of /api/info", *slice_row(r, "slice_new_get"), ""),
            (
                name,
                "slice 1:N-1, warm (s)",
                spread(r["near_whole_warm"]),
                f"{med(r['near_whole_warm']) / near_ref:.2f}x {ref}",
                f"<= {goals[2]}x",
            ),
            (
                name,
                "8 clients / 1 client (MB/s)",
                f"{r['eight_clients_mbps']:.0f} / {r['one_client_mbps']:.0f}",
                f"{r['eight_clients_mbps'] / r['one_client_mbps']:.2f}x",
                ">= 1.5x",
            ),
        ]
    rows += [
        ("all", "subscriber peak RSS (MB)", f"{rss.get('subscriber', 0):.0f}", "", "<= 300"),
        ("all", "publisher peak RSS (MB)", f"{rss.get('publisher', 0):.0f}", "", "<= 200"),
    ]
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    print(
        f"\n{n:,} float64 per array; median (min-max); cratio "
        + ", ".join(f"{k} {r['cratio']}" for k, r in results.items())
    )
    for row in rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)))
    if json_path:
        Path(json_path).write_text(
            json.dumps(
                {
                    "size": n,
                    "machine": os.uname().machine,
                    "cpus": os.cpu_count(),
                    "results": results,
                    "rss_mb": rss,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
