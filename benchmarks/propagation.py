"""How fast changes travel: file change at a publisher -> new etag at a subscriber.

Runs, for each broker (the embedded amqtt one, and Mosquitto when installed),
real `catmqtt` processes on loopback and measures:

- propagation: the time from a dataset file being rewritten at the publisher
  to its new etag being visible at the subscriber's REST API (median and p95
  over --changes rewrites);
- learning: the time for a fresh subscriber to learn a root of --datasets
  datasets (from `subscribe` to the whole list being served).

    python benchmarks/propagation.py [--changes 50] [--datasets 10000] [--json out.json]

Goals: median propagation under 0.5 s; 10,000 datasets learned in under 10 s
on the embedded broker.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import blosc2
import numpy as np
import requests

from catmqtt.storage import file_etag
from catmqtt.testing import MOSQUITTO, Procs, free_port, mosquitto_conf, wait_for


def start_broker(kind: str, procs: Procs) -> str:
    """Start a broker of `kind` (amqtt, or mosquitto with the shipped settings); return its URL."""
    if kind == "amqtt":
        return procs.broker()
    port = free_port()
    conf = procs.workdir / "mosquitto.conf"
    shipped = (Path(__file__).resolve().parent.parent / "brokerconf/mosquitto.conf").read_text()
    conf.write_text(mosquitto_conf(shipped, port))
    procs.start("mosquitto", [MOSQUITTO, "-c", conf], port=port)
    return f"mqtt://127.0.0.1:{port}"


def start_node(procs: Procs, role: str, broker: str, *args) -> str:
    """Start ``catmqtt <role> *args`` with a state directory of its own; return its URL."""
    port = free_port()
    statedir = procs.workdir / f"state-{role}-{port}"
    procs.node(role, (role, *args), broker, statedir, "--loglevel", "WARNING", port=port)
    return f"http://127.0.0.1:{port}"


def wait(predicate, what: str, timeout: float = 120.0, interval: float = 0.005) -> None:
    """Wait as `wait_for` does, polling every 5 ms by default: the figures are timed by these waits."""
    wait_for(predicate, what, timeout, interval=interval, ignore=(OSError, ValueError))


def propagation(kind: str, workdir: Path, changes: int) -> list[float]:
    root = workdir / "prop-root"
    root.mkdir()
    path = root / "prop.b2nd"
    blosc2.asarray(np.zeros(1000), urlpath=str(path), mode="w")
    with Procs(workdir, timeout=120) as procs:
        broker = start_broker(kind, procs)
        start_node(procs, "pub", broker, "prop", root)
        sub = start_node(procs, "sub", broker)
        wait(lambda: "prop" in requests.get(f"{sub}/api/roots", timeout=5).json(), "root prop")
        requests.post(f"{sub}/api/subscribe/prop", timeout=30).raise_for_status()
        times = []
        for i in range(1, changes + 1):
            blosc2.asarray(np.full(1000, float(i)), urlpath=str(path), mode="w")
            changed = time.monotonic()
            etag = file_etag(path)
            wait(
                lambda etag=etag: (
                    requests.get(f"{sub}/api/info/prop/prop.b2nd", timeout=5).json()["etag"] == etag
                ),
                "the new etag",
            )
            times.append(time.monotonic() - changed)
            # Let the publisher's watcher settle between changes.
            time.sleep(0.3)
        return times


def learning(kind: str, workdir: Path, datasets: int) -> tuple[float, float]:
    """Return (publisher scan and announce time, subscriber learn time)."""
    root = workdir / "many-root"
    for i in range(datasets):
        d = root / f"d{i // 1000:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.txt").write_text(f"dataset {i}\n")
    with Procs(workdir, timeout=120) as procs:
        broker = start_broker(kind, procs)
        started = time.monotonic()
        start_node(procs, "pub", broker, "many", root)
        watcher = start_node(procs, "sub", broker)
        wait(
            lambda: "many" in requests.get(f"{watcher}/api/roots", timeout=5).json(), "root many", timeout=600
        )
        announced = time.monotonic() - started
        fresh = start_node(procs, "sub", broker)
        wait(
            lambda: "many" in requests.get(f"{fresh}/api/roots", timeout=5).json(),
            "root many at a fresh subscriber",
        )
        begin = time.monotonic()
        requests.post(f"{fresh}/api/subscribe/many", timeout=600).raise_for_status()
        wait(
            lambda: len(requests.get(f"{fresh}/api/list/many", timeout=30).json()) == datasets,
            f"{datasets} datasets listed",
            timeout=600,
            interval=0.05,
        )
        return announced, time.monotonic() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--datasets", type=int, default=10_000)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    kinds = ["amqtt"] + (["mosquitto"] if MOSQUITTO else [])
    results = {}
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix=f"catmqtt-bench-{kind}-") as tmp:
            times = propagation(kind, Path(tmp), args.changes)
        with tempfile.TemporaryDirectory(prefix=f"catmqtt-bench-{kind}-") as tmp:
            announced, learned = learning(kind, Path(tmp), args.datasets)
        results[kind] = {
            "propagation_median_s": statistics.median(times),
            "propagation_p95_s": statistics.quantiles(times, n=20)[18] if len(times) >= 20 else max(times),
            "propagation_min_s": min(times),
            "propagation_max_s": max(times),
            "changes": len(times),
            "datasets": args.datasets,
            "publisher_scan_and_announce_s": announced,
            "subscriber_learn_s": learned,
        }
    print(
        f"{'broker':<10} {'median':>8} {'p95':>8} {'min-max':>14}   {'learn ' + str(args.datasets):>12}  "
        f"{'(publisher scan+announce)':>26}"
    )
    for kind, r in results.items():
        spread = f"{r['propagation_min_s']:.3f}-{r['propagation_max_s']:.3f}s"
        print(
            f"{kind:<10} {r['propagation_median_s']:>7.3f}s {r['propagation_p95_s']:>7.3f}s {spread:>14}"
            f"   {r['subscriber_learn_s']:>11.2f}s  {r['publisher_scan_and_announce_s']:>25.2f}s"
        )
    print("goals: median propagation < 0.5 s; 10,000 datasets learned < 10 s (amqtt)")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": os.uname().machine, "cpus": os.cpu_count(), **results}, indent=2)
        )


if __name__ == "__main__":
    main()
