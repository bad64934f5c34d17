"""What reading a publisher's answer as it comes costs a subscriber's chunk fetch.

Runs a broker and a publisher of one array of 4 MiB chunks on loopback, and
fetches its chunks with the subscriber's `Transport.get`, as the fetch
workers do: reading each answer's body as it comes, checking that it comes
at ``fetch_min_rate`` at least. The baseline, in the same run and
interleaved with it, reads each body in one read, as catmqtt did before
that check (a publisher sending a byte now and then then held a worker for
hours). Each figure is the median of `--reps` passes over every chunk.

    python benchmarks/chunkget.py [--reps 15] [--chunks 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import blosc2
import numpy as np
import requests
from fetch import Run

from catmqtt.subscriber.transport import Transport, Upstream
from catmqtt.web import tune_allocator

CHUNK_ITEMS = 1 << 19  # float64: 4 MiB


class OneRead(Transport):
    """The baseline: an answer's body in one read, and no check of how fast it comes."""

    def _body(self, response: requests.Response, limit: int, started: float, where: str) -> bytes:
        return response.raw.read(limit + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15, help="passes over the chunks, each way")
    parser.add_argument("--chunks", type=int, default=32, help="chunks of 4 MiB in the array")
    args = parser.parse_args()
    tune_allocator()
    with tempfile.TemporaryDirectory(prefix="catmqtt-chunkget-") as tmp:
        workdir = Path(tmp)
        (workdir / "root").mkdir()
        data = np.random.default_rng(1).random(args.chunks * CHUNK_ITEMS)
        blosc2.asarray(data, urlpath=str(workdir / "root/r.b2nd"), mode="w", chunks=(CHUNK_ITEMS,))
        with Run(workdir) as run:
            publisher = run.publisher(run.broker())
            source = Upstream("bench", "r.b2nd", {}, f"http://127.0.0.1:{publisher.port}")
            ways = {
                "one read (baseline)": OneRead(8, 30, 0),
                "as it comes (fetch_min_rate)": Transport(8, 30, 1000),
            }
            limit = (4 << 20) + 4096
            times: dict[str, list[float]] = {name: [] for name in ways}
            try:
                for transport in ways.values():
                    # Warm: the publisher's page cache, both connections.
                    for n in range(args.chunks):
                        transport.get(source, "chunk/r.b2nd", limit, nchunk=n)
                for _ in range(args.reps):
                    for name, transport in ways.items():
                        start = time.perf_counter()
                        for n in range(args.chunks):
                            transport.get(source, "chunk/r.b2nd", limit, nchunk=n)
                        times[name].append((time.perf_counter() - start) / args.chunks)
            finally:
                for transport in ways.values():
                    transport.close()
    base = statistics.median(times["one read (baseline)"])
    print(
        f"GET of a 4 MiB chunk from a publisher on loopback, median of {args.reps} passes of {args.chunks}:"
    )
    for name, figures in times.items():
        median = statistics.median(figures)
        print(f"  {name:30} {median * 1000:7.3f} ms   {median / base:.2f}x the baseline")


if __name__ == "__main__":
    main()
