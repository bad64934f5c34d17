"""Cold slices through a subscriber whose publisher is behind a slow link.

Creates the `random` array of benchmarks/fetch.py (4 MiB chunks that do not
compress), puts a link proxy between subscriber and publisher (a one-way
delay each way, and one bandwidth shared by every connection, first come
first served), and prints, against one GET of a whole chunk through the same
link (what a fetch of whole chunks waits for), the time of cold
1,000-element slices, each in a chunk of its own:

- paused: the next slice once the chunk of the previous one is whole in the
  cache (a user looking at each answer);
- back to back: the next slice as soon as the previous one is answered.

    python benchmarks/slowlink.py [--mbit 100] [--rtt 10] [--slices 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import blosc2
import numpy as np
import requests
from fetch import CHUNK, Run

from catmqtt.testing import free_port, wait_for

LINK_PROXY = """
import asyncio, sys
listen, target, rate, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
link = {"free": 0.0}

async def pump(reader, writer, paced):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def deliver():
        while (item := await queue.get()) is not None:
            await asyncio.sleep(max(0.0, item[0] - loop.time()))
            writer.write(item[1])
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(16384):
            due = loop.time()
            if paced:
                link["free"] = max(due, link["free"]) + len(data) / rate
                due = link["free"]
            queue.put_nowait((due + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait(None)
    try:
        await sender
    except ConnectionError:
        pass

async def handle(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pump(client_reader, server_writer, False), pump(server_reader, client_writer, True))

async def main():
    async with await asyncio.start_server(handle, "127.0.0.1", listen) as server:
        await server.serve_forever()

asyncio.run(main())
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mbit", type=float, default=100, help="link bandwidth (Mbit/s)")
    parser.add_argument("--rtt", type=float, default=10, help="link round-trip time (ms)")
    parser.add_argument("--slices", type=int, default=10, help="cold slices of each kind")
    args = parser.parse_args()
    per_chunk = CHUNK // 8
    n = (2 * args.slices + 4) * per_chunk

    with tempfile.TemporaryDirectory(prefix="catmqtt-slowlink-") as tmp:
        workdir = Path(tmp)
        (workdir / "root").mkdir()
        data = np.random.default_rng(0).random(n)
        blosc2.asarray(data, chunks=(per_chunk,), urlpath=str(workdir / "root" / "random.b2nd"), mode="w")
        with Run(workdir) as run:
            broker = run.broker()
            link_port = free_port()
            # Subscribers reach the publisher through the link.
            pub = run.publisher(broker, "--urlbase", f"http://127.0.0.1:{link_port}")
            rate, delay = args.mbit * 1e6 / 8, args.rtt / 2000
            run.start(
                "link", [sys.executable, "-c", LINK_PROXY, link_port, pub.port, rate, delay], port=link_port
            )
            _, client = run.subscriber("sub", broker, workdir / "sub")
            dataset = "bench/random.b2nd"
            client.get_info(dataset)
            session = requests.Session()
            url = f"http://127.0.0.1:{link_port}/api/chunk/random.b2nd"
            whole = []
            for k in range(n // per_chunk - 3, n // per_chunk):
                start = time.perf_counter()
                assert len(session.get(url, params={"nchunk": k}, timeout=120).content) > 0
                whole.append(time.perf_counter() - start)

            def fetched() -> int:
                stats = requests.get(f"{client.urlbase}/api/stats", timeout=10).json()
                return stats["total"]["fetched_chunks"]

            times: dict[str, list[float]] = {"paused": [], "back to back": []}
            # When each paused slice's chunk had come whole (polled every 5 ms).
            complete: list[float] = []
            chunks = iter(range(1, 2 * args.slices + 1))
            for kind, slices in times.items():
                for _ in range(args.slices):
                    offset = next(chunks) * per_chunk + 1_000
                    start = time.perf_counter()
                    got = client.fetch(dataset, f"{offset}:{offset + 1_000}")
                    slices.append(time.perf_counter() - start)
                    assert np.array_equal(got, data[offset : offset + 1_000])
                    if kind == "paused":
                        count = len(slices)
                        wait_for(
                            lambda count=count: fetched() >= count,
                            "a chunk to come whole",
                            600,
                            interval=0.005,
                        )
                        complete.append(time.perf_counter() - start)
            wait_for(lambda: fetched() >= 2 * args.slices, "the chunks to come whole", 600)
            stats = requests.get(f"{client.urlbase}/api/stats", timeout=10).json()["total"]

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1e3:.0f} ms ({min(values) * 1e3:.0f}-{max(values) * 1e3:.0f})"

    print(f"\nlink: {args.mbit:g} Mbit/s, {args.rtt:g} ms round trip; medians (min-max)")
    print(f"one whole chunk through the link   {ms(whole)}")
    for kind, values in times.items():
        ratio = statistics.median(values) / statistics.median(whole)
        print(f"cold slice 1,000 items, {kind:12s} {ms(values)}  {ratio:.2f}x")
    ratio = statistics.median(complete) / statistics.median(whole)
    print(f"its chunk fetched whole, paused      {ms(complete)}  {ratio:.2f}x")
    print(f"bytes fetched for {stats['fetched_chunks']} chunks: {stats['fetched_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
