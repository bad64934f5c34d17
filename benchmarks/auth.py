"""The cost of accounts on a warm 10-element slice: the same request to a
subscriber without accounts, and to one with them, with a session token (an
HMAC check and one SQLite read per request) and with an agent token (a
SHA-256 and one SQLite read).

Runs a broker, a publisher and two subscribers as processes on loopback;
warms both caches, then times `--requests` GETs of ``/api/fetch`` over one
kept-alive connection per run, the three kinds taking turns, `--runs`
times, and prints the median time per request of each run's median, and
the ratios to no accounts (the goal is at most 1.05).

    python benchmarks/auth.py [--runs 7] [--requests 400]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blosc2
import numpy as np
import requests

from catmqtt.testing import Procs, catmqtt_cmd, free_port, wait_for

SLICE = "/api/fetch/foo/a.b2nd?slice=1000:1010"


def per_request(session: requests.Session, url: str, headers: dict[str, str], n: int) -> float:
    """Return the median seconds of `n` GETs of the slice."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        response = session.get(url + SLICE, headers=headers)
        times.append(time.perf_counter() - start)
        assert response.status_code == 200, response.text
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Procs(Path(tmp)) as procs:
        work = Path(tmp)
        (work / "root").mkdir()
        blosc2.asarray(np.arange(1_000_000, dtype=np.float64), urlpath=str(work / "root/a.b2nd"), mode="w")
        broker = procs.broker()
        procs.node("pub", ("pub", "foo", work / "root"), broker, work / "pub")
        plain_port, auth_port = free_port(), free_port()
        procs.node("plain", ("sub",), broker, work / "plain", port=plain_port)
        state = work / "auth"
        subprocess.run(
            catmqtt_cmd("user", "add", "admin", "--admin", "--statedir", state),
            input="pw\n",
            text=True,
            check=True,
        )
        agent = subprocess.run(
            catmqtt_cmd("token", "create", "bench", "--statedir", state),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        secret = os.urandom(16).hex()
        procs.node("auth", ("sub",), broker, state, port=auth_port, env={"CATMQTT_SECRET": secret})
        plain, auth = f"http://127.0.0.1:{plain_port}", f"http://127.0.0.1:{auth_port}"
        session_token = requests.post(
            f"{auth}/auth/login", json={"username": "admin", "password": "pw"}
        ).json()["token"]
        kinds = {
            "no accounts": (plain, {}),
            "session token": (auth, {"Authorization": f"Bearer {session_token}"}),
            "agent token": (auth, {"Authorization": f"Bearer {agent}"}),
        }
        for url, headers in (kinds["no accounts"], kinds["session token"]):

            def subscribed(url=url, headers=headers) -> bool:
                roots = requests.get(f"{url}/api/roots", headers=headers).json()
                if "foo" not in roots:
                    return False
                return requests.post(f"{url}/api/subscribe/foo", headers=headers).ok

            wait_for(subscribed, f"foo subscribed at {url}")
            wait_for(
                lambda url=url, headers=headers: requests.get(url + SLICE, headers=headers).ok, "a first read"
            )
        medians: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(args.runs):
            for kind, (url, headers) in kinds.items():
                with requests.Session() as session:
                    per_request(session, url, headers, 20)
                    medians[kind].append(per_request(session, url, headers, args.requests))
        checks = check_cost(state, secret.encode(), session_token, agent)
    base = statistics.median(medians["no accounts"])
    print(f"warm 10-element slice, {args.runs} runs of {args.requests} requests (median of run medians)")
    for kind, values in medians.items():
        median = statistics.median(values)
        runs = " ".join(f"{v * 1e6:.0f}" for v in values)
        print(f"  {kind:14} {median * 1e6:7.0f} us  x{median / base:.3f}   (runs: {runs})")
    for kind, seconds in checks.items():
        print(f"  {kind} check alone: {seconds * 1e6:.0f} us, {seconds / base:.1%} of a request")


def check_cost(
    statedir: Path, secret: bytes, session_token: str, agent: str, n: int = 2000
) -> dict[str, float]:
    """Return the median seconds that checking each kind of token takes, in this process."""
    from catmqtt.subscriber.accounts import Accounts
    from catmqtt.subscriber.tokens import parse_token

    accounts = Accounts(statedir)
    checks = {
        "session token": lambda: accounts.of_session(parse_token(secret, session_token, time.time())),
        "agent token": lambda: accounts.of_agent(agent),
    }
    costs = {}
    for kind, check in checks.items():
        times = []
        for _ in range(n):
            start = time.perf_counter()
            assert check() is not None
            times.append(time.perf_counter() - start)
        costs[kind] = statistics.median(times)
    return costs


if __name__ == "__main__":
    sys.exit(main())
