"""This module holds what the subscriber counts and how it tells it: the fetcher's
counters (`Stats`), the cache's figures with them (`Figures`: ``/metrics``,
``/api/stats`` and the summary of its status), and the thread that keeps that
summary current on MQTT (`Reporter`).

The metrics are read when they are asked for, not kept twice: `Figures` is a
prometheus_client collector that reads the counters of `Stats`, the cache's
usage (`Cache.usage`) and the bytes the app served (`catmqtt.metrics`) at each
scrape. Without a budget, ``catmqtt_cache_limit_bytes`` is left out (absent,
not NaN): a query like ``catmqtt_cache_bytes / catmqtt_cache_limit_bytes``
then gives nothing rather than a ratio to an infinite limit.

Threads: the fetcher's threads, and HTTP threads, count (`Stats._lock` guards
the counters; the histogram of fetch times takes a lock of prometheus_client's
own); HTTP threads read (scrapes, ``/api/stats``); the ``status-summary``
thread (`Reporter`) reads every few seconds and hands a changed summary to the
MQTT node. None of it holds a lock of this module while calling the cache.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..metrics import Metrics

if TYPE_CHECKING:
    from .cache import Cache

log = logging.getLogger(__name__)

STATS = ("fetched_chunks", "fetched_bytes", "cache_hits", "cache_misses", "kept_on_change")
# The buckets of the histogram of chunk fetches, in seconds: loopback to slow links.
FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds between two summaries on the status topic, at least.
SUMMARY_INTERVAL = 10.0


class Stats:
    """What a fetcher did, counted per dataset (``root/path``), and how long its
    fetches took (`fetch_seconds`, in no registry: `Figures` collects it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter] = defaultdict(Counter)
        self.fetch_seconds = Histogram(
            "catmqtt_fetch_seconds",
            "Seconds a chunk fetched from its publisher took, until it was all in and checked",
            buckets=FETCH_BUCKETS,
            registry=None,
        )

    def count(self, dataset: str, **counts: int) -> None:
        with self._lock:
            self._counts[dataset].update(counts)

    def snapshot(self) -> dict[str, Any]:
        """Return the counters: per dataset and in total."""
        with self._lock:
            datasets = {name: {k: c[k] for k in STATS} for name, c in sorted(self._counts.items())}
        total = {k: sum(d[k] for d in datasets.values()) for k in STATS}
        return {"total": total, "datasets": datasets}


class Figures(Collector):
    """The subscriber's figures, read from where they are kept: the fetcher's
    counters (`fetcher.stats()`, `fetcher.fetch_seconds`), the cache's usage and
    the bytes its app served (`metrics`)."""

    def __init__(self, cache: Cache, fetcher: Any, metrics: Metrics) -> None:
        self.cache = cache
        self.fetcher = fetcher
        self.metrics = metrics

    def stats(self) -> dict[str, Any]:
        """Return what ``/api/stats`` adds to the fetcher's counters: the cache's bytes,
        budget (None: none) and evictions, and the bytes served."""
        usage = self.cache.usage()
        return {
            "cache": {"bytes": usage.bytes, "limit": usage.limit, "evictions": usage.evictions},
            "served_bytes": self.metrics.served(),
        }

    def summary(self) -> dict[str, Any]:
        """Return the summary the subscriber's status carries."""
        total = self.fetcher.stats()["total"]
        usage = self.cache.usage()
        return {
            "cache_bytes": usage.bytes,
            "cache_limit": usage.limit,
            "hit_ratio": hit_ratio(total["cache_hits"], total["cache_misses"]),
            "upstream_bytes": total["fetched_bytes"],
            "served_bytes": self.metrics.served(),
        }

    def collect(self) -> Iterator[Metric]:
        total = self.fetcher.stats()["total"]
        usage = self.cache.usage()
        yield GaugeMetricFamily("catmqtt_cache_bytes", "Bytes of the chunks in the cache", value=usage.bytes)
        if usage.limit is not None:
            yield GaugeMetricFamily(
                "catmqtt_cache_limit_bytes", "The cache's budget in bytes (absent: none)", value=usage.limit
            )
        counters = (
            ("catmqtt_cache_hits", "Chunks read found in the cache", total["cache_hits"]),
            (
                "catmqtt_cache_misses",
                "Chunks read not in the cache (fetched, or joined a fetch)",
                total["cache_misses"],
            ),
            (
                "catmqtt_evictions",
                "Chunks evicted from the cache to keep it within its budget",
                usage.evictions,
            ),
            ("catmqtt_fetched_chunks", "Chunks fetched from publishers", total["fetched_chunks"]),
            ("catmqtt_upstream_bytes", "Bytes of chunks fetched from publishers", total["fetched_bytes"]),
        )
        for name, documentation, value in counters:
            yield CounterMetricFamily(name, documentation, value=value)
        yield from self.fetcher.fetch_seconds.collect()


def hit_ratio(hits: int, misses: int) -> float | None:
    """Return the share of chunk reads found in the cache, to four places; None before any."""
    reads = hits + misses
    return None if not reads else round(hits / reads, 4)


class Reporter:
    """Hands the subscriber's summary to its MQTT node (`publish`) when it changed,
    at most every `interval` seconds, from a thread of its own (``status-summary``)."""

    def __init__(
        self,
        summary: Callable[[], dict[str, Any]],
        publish: Callable[[dict[str, Any]], None],
        interval: float = SUMMARY_INTERVAL,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"the interval of status summaries must be positive, not {interval}")
        self.summary = summary
        self.publish = publish
        self.interval = interval
        self._stop = threading.Event()
        self._last: dict[str, Any] | None = None
        # How many times it looked, and how many summaries it handed over (written by its thread only).
        self.turns = self.published = 0
        self._thread = threading.Thread(target=self._run, name="status-summary", daemon=True)

    def first(self) -> dict[str, Any]:
        """Return the summary for the node's first status, and remember it as published."""
        self._last = self.summary()
        return self._last

    def start(self) -> Reporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                summary = self.summary()
            except Exception:
                # The cache may be closing, or its disk failing: the next turn tries again.
                log.exception("cannot make the status summary")
                continue
            if summary != self._last:
                self._last = summary
                self.publish(summary)
                self.published += 1
            self.turns += 1
