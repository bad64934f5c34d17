"""This module holds `Subscriber`, which puts the subscriber's parts together:
its constructor only keeps the settings; `bind` opens the cache and binds the
HTTP port, `start` (binding first if need be) serves and connects to the broker.

Threads: `bind`, `start` and `stop` are called by the thread that runs the
subscriber (the command's main thread), never at once; what each part
starts, and which thread owns what, is in ``docs/architecture.rst``.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import signing
from ..assemble import release_gil
from ..mqtt import Node
from ..web import Server
from .accounts import Accounts, load_secret
from .answers import Answers
from .app import create_app
from .cache import Cache
from .flights import Fetcher, FetchSettings
from .follower import Follower
from .guard import Guard
from .large import Budget, Builders
from .metrics import SUMMARY_INTERVAL, Reporter
from .pins import Pins
from .reader import Reader
from .relay import Relays
from .trust import Trust

log = logging.getLogger(__name__)

# The key a subscriber signs what it republishes with, made once in its state
# directory unless subscriber.sign_key names one.
RELAY_KEY = "relay.key"


class Subscriber:
    """A subscriber: MQTT follower, chunk cache and HTTP server.

    `fetch` tunes its fetcher beyond the settings (by default, the settings'
    ``fetch_workers``, ``fetch_timeout`` and ``fetch_min_rate``); `summary_interval`
    is the least number of seconds between two summaries of its cache on its status
    topic.
    """

    def __init__(
        self,
        settings: dict[str, Any],
        node_id: str,
        fetch: FetchSettings | None = None,
        summary_interval: float = SUMMARY_INTERVAL,
    ) -> None:
        self.settings = settings
        self.node_id = node_id
        self.summary_interval = summary_interval
        self.fetch = fetch or FetchSettings(
            settings["fetch_workers"], settings["fetch_timeout"], settings["fetch_min_rate"]
        )
        self.url: str | None = None
        self.node: Node | None = None
        self.relays: Relays | None = None
        self._stops: list = []

    def bind(self) -> Subscriber:
        """Open the cache and bind the HTTP server's socket, which start() does if not
        done yet: call it first for a busy port to fail before anything runs."""
        if self.url is None:
            self._undone_on_failure(self._bind)
        return self

    def start(self) -> Subscriber:
        """Bind, then serve HTTP and follow MQTT."""
        self.bind()
        self._undone_on_failure(self._start)
        log.info("subscriber serving at %s (state in %s)", self.url, self.settings["statedir"])
        return self

    def _undone_on_failure(self, step) -> None:
        try:
            step()
        except BaseException:
            self.stop()
            raise

    def _bind(self) -> None:
        settings = self.settings
        # Chunks are decoded on many threads at once (HTTP threads, builders).
        release_gil()
        self.cache = Cache.open(settings["statedir"])
        self._stops.append(self.cache.close)
        self.cache.start_eviction(settings["cache_size"], settings["min_free"])
        tmpdir = settings["statedir"] / "tmp"
        tmpdir.mkdir(exist_ok=True)
        # What a killed subscriber left: nothing else writes here.
        for stale in tmpdir.iterdir():
            stale.unlink()
        self.fetcher = Fetcher(self.cache, self.fetch)
        self._stops.append(self.fetcher.close)
        # At most half the HTTP threads answer large requests, the rest stay for small ones.
        large_threads = max(1, settings["http_threads"] // 2)
        budget = Budget(large_threads, settings["max_stream_bytes"], settings["max_temp_bytes"])
        builders = Builders(large_threads)
        self._stops.append(builders.close)
        # Messages come once the node connects, in start: the follower is made before.
        self.follower = Follower(
            settings["prefix"],
            self.cache,
            Trust(settings["trust"], self.cache.catalogue),
            self.fetcher,
            _Later(self),
        )
        self._stops.append(self.follower.close)
        self.reader = Reader(self.cache, self.fetcher, self.follower, settings["max_fetch_bytes"])
        self.answers = Answers(self.reader, budget, builders, tmpdir)
        self.pins = Pins(self.reader, settings["prefetch_rate"])
        self.app = create_app(self.reader, self.follower, self.answers, self.cache.dir, self.pins)
        secret = load_secret(settings["statedir"], settings["auth"])
        accounts = None if secret is None else Accounts(settings["statedir"])
        Guard(settings, accounts, secret).install(self.app)
        self.server = Server.for_node(self.app, settings)
        self._stops.append(self.server.stop)
        self.url = settings["urlbase"] or self.server.url
        if settings["republish"]:
            key = settings["sign_key"]
            signer = (
                signing.load(key)
                if key is not None
                else signing.load_or_generate(settings["statedir"] / RELAY_KEY)
            )
            self.relays = Relays(
                settings["republish"], settings, self.node_id, self.url, self.follower, signer
            )
        self.app.config["CATMQTT_RELAYS"] = self.relays

    def _start(self) -> None:
        self.node = Node.for_node(
            "subscriber",
            self.node_id,
            self.settings,
            self.url,
            on_connect=self.follower.on_connect,
            on_message=self.follower.on_message,
        )
        figures = self.app.config["CATMQTT_FIGURES"]
        self.reporter = Reporter(figures.summary, self.node.set_summary, self.summary_interval)
        self.node.set_summary(self.reporter.first())
        self.server.start()
        self.pins.start()
        self._stops.append(self.pins.close)
        self.node.start()
        self._stops.append(self.node.stop)
        self.reporter.start()
        self._stops.append(self.reporter.stop)
        if self.relays is not None:
            self.relays.start()
            self._stops.append(self.relays.close)

    def stop(self) -> None:
        """Stop what `bind` and `start` started, the last first."""
        while self._stops:
            self._stops.pop()()
        self.url = None


class _Later:
    """The subscriber's MQTT node, for the follower made before it (see `follower.Topics`)."""

    def __init__(self, subscriber: Subscriber) -> None:
        self._subscriber = subscriber

    @property
    def connected(self):
        return self._subscriber.node.connected

    def subscribe(self, topic_filter: str) -> None:
        self._subscriber.node.subscribe(topic_filter)

    def unsubscribe(self, topic_filter: str) -> None:
        self._subscriber.node.unsubscribe(topic_filter)
