"""Fixtures that start real things: brokers, publishers, subscribers, the CLI."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion

from catmqtt import config
from catmqtt.publisher import Publisher
from catmqtt.subscriber import Subscriber
from catmqtt.subscriber.flights import FetchSettings
from catmqtt.testing import (  # noqa: F401 (the tests import them from here)
    DEADLINE,
    MOSQUITTO,
    Proc,
    Procs,
    catmqtt_cmd,
    free_port,
    mosquitto_conf,
    port_open,
    wait_for,
)
from catmqtt.tools.sample import write_sample

REPO = Path(__file__).resolve().parent.parent


def run_cli(
    *args: str, sub: str | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """Run one client command to completion."""
    extra = ["--sub", sub] if sub else []
    return subprocess.run(
        catmqtt_cmd(*args, *extra),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@contextmanager
def rogue_client(broker) -> Iterator[paho.Client]:
    """An MQTT client that anyone could run against an anonymous broker."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="rogue", protocol=paho.MQTTv311)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    # Publishing before the broker's acknowledgement fails ("not currently connected").
    wait_for(client.is_connected, "the rogue client to connect")
    try:
        yield client
    finally:
        client.loop_stop()
        client.disconnect()


def publish(client: paho.Client, topic: str, payload: bytes | str) -> None:
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)


class Broker:
    """A running MQTT broker: the embedded amqtt one or a Mosquitto."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.proc: Proc | None = None

    def start(self) -> Broker:
        log = self.workdir / f"{self.kind}-broker.log"
        if self.kind == "amqtt":
            args = catmqtt_cmd("broker", "--listen", f"127.0.0.1:{self.port}", "--ws", "off")
        else:
            # The shipped configuration, on a free port and without websockets.
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(mosquitto_conf((REPO / "brokerconf/mosquitto.conf").read_text(), self.port))
            args = [MOSQUITTO, "-c", str(conf)]
        self.proc = Proc(args, log, port=self.port).wait_port()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.stop(sig)


def _brokers() -> list:
    return [
        "amqtt",
        pytest.param(
            "mosquitto",
            marks=[
                pytest.mark.mosquitto,
                pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed"),
            ],
        ),
    ]


@pytest.fixture(params=_brokers())
def broker(request, tmp_path) -> Iterator[Broker]:
    """A fresh broker of each kind for each test."""
    b = Broker(request.param, tmp_path).start()
    yield b
    b.stop()


@pytest.fixture(scope="module", params=_brokers())
def module_broker(request, tmp_path_factory) -> Iterator[Broker]:
    """A broker of each kind shared by the tests of a module."""
    b = Broker(request.param, tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


class ChunkCounter:
    """Counts the chunk fetches a publisher receives (requests for a whole chunk,
    or for some of its blocks first), and apart the byte ranges asked for to
    complete chunks; can hold each request a while."""

    def __init__(self, app, delay: float = 0.0) -> None:
        self.requests: list[tuple[str, str]] = []
        self.ranges: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

        @app.before_request
        def count():
            from flask import request

            if request.path.startswith("/api/chunk/"):
                chunk = (request.path.removeprefix("/api/chunk/"), request.args["nchunk"])
                with self.lock:
                    if "Range" in request.headers:
                        self.ranges.append((*chunk, request.headers["Range"]))
                    else:
                        self.requests.append(chunk)
                # A slow link, not a wait: it keeps requests in flight long enough to overlap.
                time.sleep(delay)


def up_on_free_ports(workdir: Path) -> tuple[Proc, int, int, int]:
    """Start ``catmqtt up`` in `workdir` on free loopback ports, its websockets off, and
    wait until it serves or stops; return it and its MQTT, publisher and subscriber ports.

    A port found free may be taken before ``catmqtt up`` binds it (by an outgoing
    connection's ephemeral port): then it is started again, on other ports."""
    for attempt in range(3):
        mqtt, pub, sub = free_port(), free_port(), free_port()
        up = Proc(
            catmqtt_cmd(
                "up",
                "--listen",
                f"127.0.0.1:{mqtt}",
                "--ws",
                "off",
                "--pub-http",
                f"127.0.0.1:{pub}",
                "--sub-http",
                f"127.0.0.1:{sub}",
            ),
            workdir / ("up.log" if attempt == 0 else f"up-{attempt}.log"),
            cwd=workdir,
        )
        wait_for(lambda up=up: "Press Ctrl+C to stop." in up.output or not up.alive(), "catmqtt up")
        if up.alive() or "address already in use" not in up.output:
            break
    return up, mqtt, pub, sub


def start_publisher(broker, statedir, root_dir, instrument=None, **settings) -> Publisher:
    """Start a publisher of `root_dir` as foo in this process; `instrument(app)` may add hooks."""
    s = config.node_settings(
        {}, "publisher", broker=broker.url, http="127.0.0.1:0", statedir=statedir, **settings
    )
    pub = Publisher("foo", root_dir, s)
    if instrument is not None:
        instrument(pub.app)
    return pub.start()


def start_subscriber(broker, statedir, fetch: dict | None = None, **settings) -> Subscriber:
    """Start a subscriber in this process and wait until it sees root foo online;
    `fetch` sets fields of its fetcher's FetchSettings that are not settings of its own."""
    s = config.node_settings(
        {}, "subscriber", broker=broker.url, http="127.0.0.1:0", statedir=statedir, **settings
    )
    tuned = (
        None
        if fetch is None
        else FetchSettings(s["fetch_workers"], s["fetch_timeout"], s["fetch_min_rate"], **fetch)
    )
    sub = Subscriber(s, "sub-test", tuned).start()
    wait_for(lambda: sub.reader.roots().get("foo", {}).get("online"), "root foo online")
    return sub


@contextmanager
def running(broker, tmp_path, root_dir, instrument=None, pub_settings: dict | None = None, **sub_settings):
    """Run a publisher of `root_dir` as foo (with `pub_settings`) and a subscriber
    following it (with `sub_settings`), in this process."""
    pub = start_publisher(broker, tmp_path / "pub", root_dir, instrument, **(pub_settings or {}))
    try:
        sub = start_subscriber(broker, tmp_path / "sub", **sub_settings)
        try:
            sub.follower.subscribe("foo")
            yield pub, sub
        finally:
            sub.stop()
    finally:
        pub.stop()


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """The sample root, written once; tests must not change it."""
    return write_sample(tmp_path_factory.mktemp("sample") / "root")


class Deployment:
    """Publishers and subscribers of one broker, each a real `catmqtt` process."""

    def __init__(self, broker: Broker, workdir: Path) -> None:
        self.broker = broker
        self.workdir = workdir
        self.harness = Procs(workdir)
        self.procs: dict[str, Proc] = {}
        self.ports: dict[str, int] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start_pub(
        self, name: str, root: Path, *extra: str, key: str | None = None, env: dict | None = None
    ) -> str:
        return self._start(key or f"pub-{name}", ("pub", name, root), extra, env)

    def start_sub(self, key: str = "sub", *extra: str, env: dict | None = None) -> str:
        return self._start(key, ("sub",), extra, env)

    def _start(self, key: str, command: tuple, extra: tuple, env: dict | None) -> str:
        """Start a node on its own port and state directory (a restart reuses both); return its URL.

        `extra` options come last, so that they override the node's.
        """
        port = self.ports.setdefault(key, free_port())
        self.procs[key] = self.harness.node(
            key, command, self.broker.url, self.workdir / key, *extra, port=port, env=env
        )
        return self.url(key)

    def stop(self, key: str, sig: int = signal.SIGINT) -> int:
        return self.harness.stop(self.procs.pop(key), sig)

    def stop_all(self) -> None:
        self.procs.clear()
        self.harness.stop_all()

    def cli(self, *args: str, key: str = "sub", cwd: Path | None = None) -> subprocess.CompletedProcess:
        return run_cli(*args, sub=self.url(key), cwd=cwd)

    def serve_foo(self, root: Path) -> None:
        """Publish `root` as foo, start a subscriber, and subscribe it to foo."""
        self.start_pub("foo", root)
        self.start_sub()
        self.wait_root("foo")
        result = self.cli("subscribe", "foo")
        assert result.stdout == "Ok\n", result.stderr

    def wait_root(self, root: str, key: str = "sub", online: bool = True) -> None:
        def ready():
            roots = requests.get(f"{self.url(key)}/api/roots", timeout=5).json()
            return root in roots and roots[root]["online"] == online

        # The node asked must stay up meanwhile.
        asked = [self.procs[key]] if key in self.procs else []
        wait_for(ready, f"root {root!r} (online={online}) at {key}", procs=asked)


@pytest.fixture
def deployment(broker, tmp_path) -> Iterator[Deployment]:
    """An empty deployment on a fresh broker; the test starts what it needs."""
    d = Deployment(broker, tmp_path)
    yield d
    d.stop_all()


@contextmanager
def following(broker, workdir: Path, root: Path) -> Iterator[Deployment]:
    """Publish `root` as ``foo`` with one subscriber following it, as processes."""
    d = Deployment(broker, workdir)
    try:
        d.start_pub("foo", root)
        d.start_sub()
        d.wait_root("foo")
        requests.post(f"{d.url('sub')}/api/subscribe/foo", timeout=30).raise_for_status()
        yield d
    finally:
        d.stop_all()


@pytest.fixture(scope="module")
def foo(module_broker, sample_root, tmp_path_factory) -> Iterator[Deployment]:
    """The sample root published as ``foo`` and one subscriber following it, shared by a module."""
    with following(module_broker, tmp_path_factory.mktemp("foo"), sample_root) as d:
        yield d


@pytest.fixture
def root_dir(tmp_path, sample_root) -> Path:
    """A private copy of the sample root, free to change."""
    return Path(shutil.copytree(sample_root, tmp_path / "root"))
