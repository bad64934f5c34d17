"""Benchmark: an HDF5 dataset fetched through a publisher and a subscriber, against h5py reading it.

Writes a gzip-chunked float32 dataset (``--size`` MiB, 1 GiB by default),
publishes the file with ``catmqtt pub`` and fetches it with a ``catmqtt sub``,
both real processes on loopback with an embedded broker, then prints the time
of each selection read by h5py directly and fetched cold (nothing cached by
the publisher or the subscriber) and warm (everything cached), with ratios.

    python benchmarks/hdf5.py --size 256
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import blosc2
import h5py
import numpy as np
import requests

import catmqtt
from catmqtt.testing import Procs, wait_for

COLUMNS = 1024
CHUNK_ROWS = 256  # 256 rows of 1024 float32: 1 MiB chunks
SELECTIONS = {
    "whole": "",
    "row band": "{third}:{third_1000}",
    "column stripe": ":, 100:110",
    "strided": "::16, ::-4",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="dataset size in MiB (default 1024)")
    parser.add_argument(
        "--workdir", type=Path, help="where to put the file and state (default: a temporary dir)"
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="catmqtt-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    h5file = workdir / f"gzip-{args.size}MiB.h5"
    if not h5file.exists():
        seconds, _ = timed(write_file, h5file, args.size)
        print(f"wrote {h5file} ({h5file.stat().st_size / 2**20:.0f} MiB on disk) in {seconds:.1f} s")
    rows = args.size * 2**20 // (COLUMNS * 4)
    third = rows // 3
    selections = {k: v.format(third=third, third_1000=third + 1000) for k, v in SELECTIONS.items()}
    # Both sides read the file from the page cache.
    with open(h5file, "rb") as f:
        while f.read(1 << 24):
            pass
    print(
        f"{os.cpu_count()} cores (load {os.getloadavg()[0]:.1f}), Python {sys.version.split()[0]},"
        f" h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}, blosc2 {blosc2.__version__}"
    )
    heads = ("MiB", "h5py s", "cold s", "cold/h5py", "warm s", "warm/h5py")
    print(f"{'selection':14}", *(f"{h:>9}" for h in heads))
    for label, selection in selections.items():
        with h5py.File(h5file, "r") as f:
            h5_seconds, expected = timed(h5py_read, f["data"], selection)
        with deployment(workdir, h5file) as url:
            client = catmqtt.Client(url)
            cold, first = timed(client.fetch, "bench/data.b2nd", selection)
            warm, second = timed(client.fetch, "bench/data.b2nd", selection)
        assert np.array_equal(first, expected) and np.array_equal(second, expected), label
        figures = (expected.nbytes / 2**20, h5_seconds, cold, cold / h5_seconds, warm, warm / h5_seconds)
        print(f"{label:14}", *(f"{x:9.2f}" for x in figures))
    if args.workdir is None:
        shutil.rmtree(workdir)


def write_file(path: Path, size: int) -> None:
    """Write `size` MiB of smooth, noisy float32 data, gzip-compressed in 1 MiB chunks."""
    rows = size * 2**20 // (COLUMNS * 4)
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        dset = f.create_dataset(
            "data", shape=(rows, COLUMNS), dtype="f4", chunks=(CHUNK_ROWS, COLUMNS), compression="gzip"
        )
        for start in range(0, rows, 4096):
            n = min(4096, rows - start)
            x = np.arange(start, start + n)[:, None] * 1e-3 + np.arange(COLUMNS)[None, :] * 1e-2
            dset[start : start + n] = (np.sin(x) * 100 + rng.normal(0, 1, (n, COLUMNS))).round(1)


def h5py_read(dset: h5py.Dataset, selection: str) -> np.ndarray:
    """Read `selection` (slices only) with h5py, which takes positive steps only: flip after."""
    key = []
    flip = []
    parts = [p.strip() for p in selection.split(",") if p.strip()]
    for axis, (part, n) in enumerate(zip(parts, dset.shape, strict=False)):
        wanted = slice(*(int(v) if v.strip() else None for v in part.split(":")))
        if wanted.step is not None and wanted.step < 0:
            indices = range(n)[wanted]
            key.append(slice(indices[-1], indices[0] + 1, -wanted.step) if indices else slice(0, 0))
            flip.append(axis)
        else:
            key.append(wanted)
    data = dset[tuple(key)] if key else dset[()]
    return np.flip(data, axis=flip) if flip else data


def timed(func: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """Return how many seconds ``func(*args)`` took, and what it returned."""
    start = time.perf_counter()
    result = func(*args)
    return time.perf_counter() - start, result


@contextmanager
def deployment(workdir: Path, h5file: Path) -> Iterator[str]:
    """Run a broker, a publisher of the file as ``bench`` and a subscriber, each a fresh process;
    yield the subscriber's URL."""
    state = workdir / "state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir()
    with Procs(state) as procs:
        quiet = ("--loglevel", "WARNING")
        broker = procs.broker(*quiet)
        procs.node("pub", ("pub", "bench", h5file), broker, state / "pub", *quiet)
        sub = procs.node("sub", ("sub",), broker, state / "sub", *quiet)
        url = f"http://127.0.0.1:{sub.port}"
        wait_for(
            lambda: requests.get(f"{url}/api/roots", timeout=5).json()["bench"]["online"],
            "the root",
            60,
            ignore=(OSError, KeyError),
            procs=[sub],
        )
        requests.post(f"{url}/api/subscribe/bench", timeout=30).raise_for_status()
        yield url


if __name__ == "__main__":
    main()
