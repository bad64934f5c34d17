"""Metrics: ``/metrics`` of a real subscriber and publisher (parsed with
prometheus_client's parser, counters moving as reads say they should),
``catmqtt stats``, and the summary on the subscriber's status topic seen by a
real MQTT client."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as paho
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from catmqtt import config
from catmqtt.errors import BadRequest
from catmqtt.mqtt import Node
from catmqtt.schema import loads, parse_node
from catmqtt.subscriber import Subscriber
from catmqtt.subscriber.accounts import Accounts
from catmqtt.subscriber.metrics import Reporter
from catmqtt.topics import node_topic

from conftest import Broker, free_port, run_cli, running, start_publisher, wait_for
from test_views import node, node_with_accounts  # noqa: F401 - the subscriber fixtures

DATASET = "ds-1d.b2nd"
# Whole chunks 0, 1 and 2 of ds-1d.b2nd (100 items a chunk): none fetched in parts.
SLICE = "0:300"


@pytest.fixture(scope="module")
def amqtt(tmp_path_factory):
    """One embedded broker for the module's tests."""
    broker = Broker("amqtt", tmp_path_factory.mktemp("broker")).start()
    yield broker
    broker.stop()


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Return the samples of `url`'s /metrics, by name and labels."""
    response = requests.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def chunk_sizes(pub, path: str, numbers) -> int:
    return sum(len(pub.root.chunk(path, n)[0]) for n in numbers)


def served_since(url: str, before: dict, nbytes: int, what: str) -> dict:
    """Wait until the subscriber at `url` counts `nbytes` more served than in `before`
    (a scrape); return that scrape."""

    def counted():
        now = scrape(url)
        return now if moved(before, now, "catmqtt_served_bytes_total") == nbytes else None

    return wait_for(counted, f"{what} counted")


def test_reads_move_the_counters_as_they_should(amqtt, tmp_path, root_dir):
    with running(amqtt, tmp_path, root_dir) as (pub, sub):
        url, fetch = sub.url, f"{sub.url}/api/fetch/foo/{DATASET}"
        start, pub_start = scrape(url), scrape(pub.url)
        assert value(start, "catmqtt_cache_bytes") == 0
        # No budget: no limit, rather than NaN.
        assert ("catmqtt_cache_limit_bytes", frozenset()) not in start

        cold = requests.get(fetch, params={"slice": SLICE}, timeout=30)
        assert cold.status_code == 200
        upstream = chunk_sizes(pub, DATASET, range(3))

        after_cold = served_since(url, start, len(cold.content), "the cold read")
        assert moved(start, after_cold, "catmqtt_cache_misses_total") == 3
        assert moved(start, after_cold, "catmqtt_cache_hits_total") == 0
        assert moved(start, after_cold, "catmqtt_upstream_bytes_total") == upstream
        assert moved(start, after_cold, "catmqtt_fetch_seconds_count") == 3
        assert value(after_cold, "catmqtt_fetch_seconds_bucket", le="+Inf") == 3
        assert value(after_cold, "catmqtt_fetch_seconds_sum") > 0
        assert moved(start, after_cold, "catmqtt_requests_total", endpoint="fetch", status="200") == 1
        assert value(after_cold, "catmqtt_evictions_total") == 0
        wait_for(lambda: value(scrape(url), "catmqtt_cache_bytes") == upstream, "the chunks written")

        warm = requests.get(fetch, params={"slice": SLICE}, timeout=30)
        assert warm.content == cold.content

        after_warm = served_since(url, after_cold, len(warm.content), "the warm read")
        assert moved(after_cold, after_warm, "catmqtt_cache_hits_total") == 3
        assert moved(after_cold, after_warm, "catmqtt_cache_misses_total") == 0
        assert moved(after_cold, after_warm, "catmqtt_upstream_bytes_total") == 0
        assert moved(after_cold, after_warm, "catmqtt_fetch_seconds_count") == 0

        # The publisher: a chunk request for each miss, and what it sent.
        pub_now = scrape(pub.url)
        assert moved(pub_start, pub_now, "catmqtt_requests_total", endpoint="chunk", status="200") == 3
        assert moved(pub_start, pub_now, "catmqtt_served_bytes_total") >= upstream
        requests.get(f"{pub.url}/api/info/no-such.b2nd", timeout=10)
        requests.get(f"{pub.url}/no/such/endpoint", timeout=10)
        pub_after = scrape(pub.url)
        assert moved(pub_now, pub_after, "catmqtt_requests_total", endpoint="info", status="404") == 1
        assert moved(pub_now, pub_after, "catmqtt_requests_total", endpoint="none", status="404") == 1


def test_streamed_and_file_answers_count_what_is_sent(amqtt, tmp_path, root_dir):
    with running(amqtt, tmp_path, root_dir) as (pub, sub):
        for endpoint, params in (("chunks", {"nchunks": "0-9"}), ("download", {})):
            before = scrape(sub.url)
            # A file (sent by waitress's I/O loop) and a stream of frames (a generator).
            body = requests.get(f"{sub.url}/api/{endpoint}/foo/{DATASET}", params=params, timeout=30)
            assert body.status_code == 200 and len(body.content) > 0

            def counted(before=before, body=body):
                return moved(before, scrape(sub.url), "catmqtt_served_bytes_total") == len(body.content)

            wait_for(counted, f"the bytes of /api/{endpoint} counted")


def test_metrics_need_credentials_with_accounts(node_with_accounts, tmp_path):  # noqa: F811
    client = node_with_accounts.client
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.get_json()["status"] == 401
    # An agent token, as Prometheus sends it (authorization: credentials_file), not an admin's.
    accounts = Accounts(tmp_path / "sub")
    try:
        agent = accounts.create_agent("prometheus")
    finally:
        accounts.close()
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {agent}"})
    assert answer.status_code == 200 and answer.headers["Content-Type"] == CONTENT_TYPE_LATEST
    names = {family.name for family in text_string_to_metric_families(answer.text)}
    assert {
        "catmqtt_cache_bytes",
        "catmqtt_cache_hits",
        "catmqtt_cache_misses",
        "catmqtt_evictions",
        "catmqtt_upstream_bytes",
        "catmqtt_served_bytes",
        "catmqtt_fetch_seconds",
        "catmqtt_requests",
    } <= names


def test_stats_api_adds_the_cache_and_served_bytes(node):  # noqa: F811
    client = node.client
    read = client.get("/api/fetch/foo/ds-1d.b2nd", query_string={"slice": "0:10"})
    # Counted as it is taken: all of it here.
    assert read.status_code == 200 and read.data
    stats = client.get("/api/stats").get_json()
    assert stats["total"]["cache_hits"] == 1 and stats["total"]["cache_misses"] == 0
    assert stats["cache"]["limit"] is None and stats["cache"]["evictions"] == 0
    assert stats["cache"]["bytes"] > 0 and stats["served_bytes"] == len(read.data)


def test_catmqtt_stats(amqtt, tmp_path, root_dir):
    with running(amqtt, tmp_path, root_dir) as (pub, sub):
        cold = requests.get(f"{sub.url}/api/fetch/foo/{DATASET}", params={"slice": SLICE}, timeout=30)
        assert cold.status_code == 200
        upstream = chunk_sizes(pub, DATASET, range(3))
        wait_for(lambda: sub.cache.usage().bytes == upstream, "the chunks written")
        warm = requests.get(f"{sub.url}/api/fetch/foo/{DATASET}", params={"slice": "0:10"}, timeout=30)
        served = len(cold.content) + len(warm.content)
        metrics = sub.app.config["CATMQTT_METRICS"]
        wait_for(lambda: metrics.served() == served, "the reads counted")
        result = run_cli("stats", sub=sub.url)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[:3] == ["cache hits:   1 chunks", "cache misses: 3 chunks", "hit ratio:    25.0 %"]
        kib = f"{upstream / 1024:.1f} KiB ({upstream} bytes)"
        assert lines[3] == f"upstream:     {kib} fetched from publishers"
        # What the two reads sent (the stats request is counted once it is sent).
        assert served < 1024 and lines[4] == f"served:       {served} bytes sent to clients"
        assert lines[5:] == [
            f"cache:        {kib} of no limit",
            "evictions:    0 chunks",
        ]
        as_json = run_cli("stats", "--json", sub=sub.url)
        stats = json.loads(as_json.stdout)
        assert stats["total"]["fetched_bytes"] == upstream and stats["cache"]["bytes"] == upstream
    gone = run_cli("stats", sub=f"http://127.0.0.1:{free_port()}")
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.startswith("Error: cannot reach the subscriber") and len(gone.stderr.splitlines()) == 1


class StatusWatcher:
    """A real MQTT client subscribed to one status topic, keeping what comes and when."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self.lock = threading.Lock()
        self.topic = topic
        self.seen: list[tuple[float, dict]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="watcher", protocol=paho.MQTTv311)
        self.client.on_message = self._message
        self.client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        # Subscribed before the node starts: amqtt may drop a client that connects meanwhile.
        wait_for(subscribed.is_set, f"the watcher of {topic} subscribed")

    def _message(self, client, userdata, message) -> None:
        if message.topic != self.topic:
            return
        obj = loads(message.payload)
        with self.lock:
            self.seen.append((time.monotonic(), obj))

    def summaries(self) -> list[tuple[float, dict]]:
        """Return (when, summary) of the "online" statuses seen, each summary once where it
        came again at once: a node publishes its status again when it reconnects, and a
        watcher that reconnects gets the retained one again (both seen under load)."""
        with self.lock:
            online = [(t, obj.get("summary")) for t, obj in self.seen if obj and obj["status"] == "online"]
        return [s for i, s in enumerate(online) if i == 0 or s[1] != online[i - 1][1]]

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def kept_node(broker: Broker, name: str) -> tuple[Node, StatusWatcher]:
    """Start a node, watched, whose first connection the broker keeps.

    amqtt 0.12 drops a client it has just accepted when the subscriptions of
    another change meanwhile ("dictionary changed size during iteration", seen
    under load). paho then sends the statuses in flight again after the new
    connection's own, the broker holds an older one, and the node rightly puts
    its status back: not what the tests are about, so another node is started.
    """
    for attempt in range(3):
        connections: list[None] = []
        s = config.node_settings({}, "subscriber", broker=broker.url)
        node_id = f"{name}-{attempt}"
        started = Node.for_node(
            "subscriber", node_id, s, "http://127.0.0.1:9", on_connect=lambda c=connections: c.append(None)
        )
        watcher = StatusWatcher(broker, started.status_topic)
        started.start()
        # Its first status back: the broker serves the connection (past where amqtt drops it).
        wait_for(lambda n=started: n._unechoed == [n._current], "the first status back")
        wait_for(watcher.summaries, "the first status")
        if len(connections) == 1:
            return started, watcher
        started.stop()
        watcher.stop()
    raise AssertionError("the broker dropped the node as it connected, three times")


def test_summaries_replaced_at_once_are_not_taken_for_someone_elses(amqtt, caplog):
    """A node's earlier status coming back after it published a newer one is its own,
    not someone else's to put right: publishing it again would repeat a summary."""
    quick, watcher = kept_node(amqtt, "quick")
    try:
        # Connected: a summary is published at once (before, it waits for the connection).
        assert quick.connected.is_set()
        # Fewer than the statuses a node remembers (UNECHOED): a summary a second is usual.
        for n in range(10):
            quick.set_summary({"n": n})
        wait_for(lambda: watcher.summaries()[-1][1] == {"n": 9}, "the last summary")
        # Every status published came back, the last included.
        wait_for(lambda: quick._unechoed == [quick._current], "the statuses back from the broker")
        assert [summary for _, summary in watcher.summaries()] == [None, *({"n": n} for n in range(10))]
        # Of this node: one started before it may have put its status back.
        assert f"changed or cleared {quick.status_topic};" not in caplog.text
    finally:
        quick.stop()
        watcher.stop()


def test_status_summary_follows_reads_at_most_every_interval(amqtt, tmp_path, root_dir):
    interval = 0.5
    pub = start_publisher(amqtt, tmp_path / "pub", root_dir)
    s = config.node_settings(
        {}, "subscriber", broker=amqtt.url, http="127.0.0.1:0", statedir=tmp_path / "sub"
    )
    watcher = StatusWatcher(amqtt, node_topic(s["prefix"], "subscriber", "sub-summary"))
    sub = Subscriber(s, "sub-summary", summary_interval=interval)
    try:
        sub.start()
        wait_for(lambda: sub.reader.roots().get("foo", {}).get("online"), "root foo online")
        first = wait_for(watcher.summaries, "the first status")[0][1]
        assert first == {
            "cache_bytes": 0,
            "cache_limit": None,
            "hit_ratio": None,
            "upstream_bytes": 0,
            "served_bytes": 0,
        }
        sub.follower.subscribe("foo")
        fetch = f"{sub.url}/api/fetch/foo/{DATASET}"
        assert requests.get(fetch, params={"slice": SLICE}, timeout=30).status_code == 200
        upstream = chunk_sizes(pub, DATASET, range(3))

        def summary_says(check):
            return lambda: any(check(summary) for _, summary in watcher.summaries())

        wait_for(summary_says(lambda s: s["cache_bytes"] == upstream == s["upstream_bytes"]), "the cold read")
        assert requests.get(fetch, params={"slice": SLICE}, timeout=30).status_code == 200
        wait_for(summary_says(lambda s: s["hit_ratio"] == 0.5), "the warm read")
        # Nothing changes now: three more turns publish nothing.
        reporter = sub.reporter
        turns, published = reporter.turns, reporter.published
        wait_for(lambda: reporter.turns >= turns + 3, "three more turns")
        assert reporter.published == published
        wait_for(lambda: len(watcher.summaries()) == published + 1, "every summary published")
        # The first status went out when the node connected, whenever that was; the
        # reporter's summaries follow one another not more often than the interval
        # (less what delivery may shift).
        seen = watcher.summaries()[1:]
        assert len(seen) >= 2, seen
        for (before, _), (after, _) in zip(seen, seen[1:], strict=False):
            assert after - before > interval * 0.8, seen
        for _, obj in watcher.seen:
            parse_node(obj, "subscriber", "sub-summary")
    finally:
        sub.stop()
        watcher.stop()
        pub.stop()


def test_reporter_refuses_an_interval_that_is_not_positive():
    with pytest.raises(ValueError, match="must be positive"):
        Reporter(dict, print, 0)


GOOD = {"cache_bytes": 1, "cache_limit": 2, "hit_ratio": 0.5, "upstream_bytes": 3, "served_bytes": 4}


@pytest.mark.parametrize(
    "summary",
    [
        GOOD,
        {**GOOD, "cache_limit": None, "hit_ratio": None},
        {**GOOD, "hit_ratio": 1},
        {},
        # Fields of later versions: numbers or null.
        {**GOOD, "pinned_bytes": 5, "rate": 0.25, "later": None},
    ],
)
def test_status_summaries_accepted(summary):
    status = {"status": "online", "url": "http://127.0.0.1:8002", "summary": summary}
    assert parse_node(status, "subscriber", "s1")["summary"] == summary


@pytest.mark.parametrize(
    "summary",
    [
        None,
        [1, 2],
        "full",
        {**GOOD, "cache_bytes": -1},
        {**GOOD, "cache_bytes": 1.5},
        {**GOOD, "cache_bytes": True},
        {**GOOD, "cache_bytes": None},
        {**GOOD, "served_bytes": "4"},
        {**GOOD, "upstream_bytes": 1 << 63},
        {**GOOD, "cache_limit": -2},
        {**GOOD, "hit_ratio": 1.5},
        {**GOOD, "hit_ratio": -0.1},
        {**GOOD, "hit_ratio": float("nan")},
        {**GOOD, "later": float("inf")},
        {**GOOD, "later": "text"},
        {**GOOD, "later": {"nested": 1}},
        {**GOOD, "x" * 65: 1},
        {f"field{i}": i for i in range(17)},
    ],
)
def test_status_summaries_refused(summary):
    status = {"status": "online", "url": "http://127.0.0.1:8002", "summary": summary}
    with pytest.raises(BadRequest, match="summary"):
        parse_node(status, "subscriber", "s1")
