"""This module follows roots on MQTT: it is fed each message's topic and payload,
and keeps what they announce in the cache.

Threads and what each owns:

- The MQTT thread calls `Follower.on_connect` and `Follower.on_message`. It
  is the only writer of the node statuses (`Statuses`) and of the table of
  each dataset's latest update (`Updates.latest`).
- One worker, ``updates``, applies the updates in the order they came: it is
  the only caller of `Cache.set_dataset` (which reads, then writes), so that
  a dataset's metadata and its cached chunks change together, and the MQTT
  thread never waits on a dataset's lock (a long download holds it).
- HTTP threads subscribe and unsubscribe, and wait for the updates of the
  datasets they read (`Follower.settled`).
- The callbacks of `Follower.on_change` (`pins`', a relay's) are called on
  the ``updates`` worker with each dataset whose update was applied; those
  of `Follower.on_root` (a relay's), with each root whose announcement was
  recorded.

``Follower._lock`` (a condition) guards the roots subscribed to, the
datasets seen since the last connection and the roots awaiting a check of
their index; it is never held while the cache is called.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

from .. import storage
from ..dtypes import array_dtype
from ..errors import BadRequest, CatmqttError, Changed, NotFound
from ..mqtt import LogThrottle
from ..schema import (
    MAX_PAYLOAD,
    MAX_STATUS_PAYLOAD,
    DatasetMeta,
    has_manifest,
    loads,
    parse_dataset,
    parse_root,
)
from ..topics import node_topic, parse_root_name, parse_topic, root_topic
from .cache import Cache
from .flights import Fetcher
from .statuses import Statuses
from .trust import Trust

log = logging.getLogger(__name__)

# How long a subscription waits for the broker to replay a root's datasets.
SNAPSHOT_WAIT = 10.0


class Topics(Protocol):
    """The MQTT connection the follower subscribes through (a `mqtt.Node`)."""

    connected: threading.Event

    def subscribe(self, topic_filter: str) -> None: ...

    def unsubscribe(self, topic_filter: str) -> None: ...


class Updates:
    """Dataset updates, applied in order on one worker; the latest per dataset.

    `latest` is written by the MQTT thread only (one done future a dataset
    stays), and read by HTTP threads: a reader that removed a done entry with
    a get-then-pop could remove a newer update recorded between the two.
    """

    def __init__(self) -> None:
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="updates")
        self.latest: dict[tuple[str, str], Future] = {}

    def submit(self, func: Callable[..., None], *args: Any) -> Future:
        return self._worker.submit(_guarded, func, *args)

    def record(self, root: str, path: str, func: Callable[..., None], *args: Any) -> None:
        """Apply `func(*args)`, an update of dataset `root/path`, after the updates before it."""
        self.latest[(root, path)] = self.submit(func, *args)

    def settled(self, root: str, path: str, timeout: float) -> None:
        """Wait until the latest update of a dataset is applied; raise Changed after `timeout` s."""
        latest = self.latest.get((root, path))
        if latest is None:
            return
        try:
            latest.result(timeout=timeout)
        except FutureTimeout:
            raise Changed(f"{root}/{path}", f"{root}/{path} is being updated; try again") from None

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)


def _guarded(func: Callable[..., None], *args: Any) -> None:
    try:
        func(*args)
    except Exception:
        log.exception("error applying an update of %s", "/".join(map(str, args[:2])))


class Follower:
    """What MQTT says of roots, datasets and nodes, checked and kept in the cache."""

    def __init__(self, prefix: str, cache: Cache, trust: Trust, fetcher: Fetcher, topics: Topics) -> None:
        self.prefix = prefix
        self.cache = cache
        self.catalogue = cache.catalogue
        self.trust = trust
        self.fetcher = fetcher
        self.topics = topics
        self.statuses = Statuses(lambda: {name: r["info"] for name, r in self.catalogue.roots().items()})
        self.updates = Updates()
        self._lock = threading.Condition()
        self._subscribed = set(self.catalogue.subscribed())
        # Datasets announced in the current connection's snapshot, per root.
        self._seen: dict[str, set[str]] = {}
        # Roots whose index awaits a check against the snapshot after (re)connecting.
        self._unreconciled: set[str] = set()
        self._ignored = LogThrottle(log)
        # The status topics of publishers asked for again (see _on_root), until one comes
        # (the MQTT thread's own).
        self._asked: set[str] = set()
        # Told (root, path) of each dataset whose update was applied, and the name
        # of each root whose announcement was recorded.
        self.on_change: list[Callable[[str, str], None]] = []
        self.on_root: list[Callable[[str], None]] = []

    def close(self) -> None:
        self.updates.close()

    # On the MQTT thread

    def on_connect(self) -> None:
        # A new connection subscribes anew.
        self._asked.clear()
        with self._lock:
            subscribed = sorted(self._subscribed)
            self._seen = {name: set() for name in subscribed}
            self._unreconciled = set(subscribed)
        self.topics.subscribe(f"{self.prefix}/roots/+")
        self.topics.subscribe(f"{self.prefix}/nodes/#")
        for name in subscribed:
            self.topics.subscribe(f"{root_topic(self.prefix, name)}/ds/#")

    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            what = parse_topic(self.prefix, topic)
            obj = loads(payload, MAX_STATUS_PAYLOAD if what.kind == "node" else MAX_PAYLOAD)
            if what.kind == "root":
                self._on_root(topic, what.name, obj)
            elif what.kind == "dataset" and self.subscribed(what.name):
                self._on_dataset(topic, what.name, what.path, obj)
            elif what.kind == "node":
                if topic in self._asked:
                    self._asked.discard(topic)
                    self.topics.unsubscribe(topic)
                self.statuses.record(topic, what.name, what.path, obj)
        except BadRequest as exc:
            self._ignored.warning("ignoring the message on %r: %s", topic, exc)

    def _on_root(self, topic: str, name: str, obj: dict[str, Any] | None) -> None:
        try:
            last = self.catalogue.root(name)["info"]
        except NotFound:
            last = None
        # Checked before its key may be pinned: junk pins nothing.
        info = None if obj is None or obj.get("deleted") is True else parse_root(obj, name)
        self.trust.check(topic, name, obj, last, pin=info is not None)
        moved = self.cache.set_root(name, info)
        if moved:
            log.warning(
                "root %r is now served from %s: cached chunks of %d datasets without a manifest dropped",
                name,
                info["url"],
                len(moved),
            )
        if info is not None and self.statuses.refused_maybe(info):
            # Subscribing to its topic again has the broker send its retained status
            # again, which the root now vouches for (`Statuses` has room for it).
            asked = node_topic(self.prefix, "publisher", info["publisher"])
            if asked not in self._asked:
                self._asked.add(asked)
                self.topics.subscribe(asked)
        self.updates.submit(self._root_recorded, name)

    def _on_dataset(self, topic: str, root: str, path: str, obj: dict[str, Any] | None) -> None:
        try:
            last = self.cache.dataset(root, path)
        except NotFound:
            last = None
        info = self.catalogue.root(root)["info"]
        self.trust.check(topic, root, obj, last, pin=False, path=path, root_info=info)
        if obj is not None and obj.get("deleted") is True:
            obj = None
        if obj is not None:
            parse_dataset(obj, path)
            if obj["kind"] == "ndarray":
                array_dtype(obj)
            storage.cparams_from_json(obj["cparams"])
        self.updates.record(root, path, self._apply_dataset, root, path, obj)

    # On the updates worker

    def _apply_dataset(self, root: str, path: str, obj: DatasetMeta | None) -> None:
        """Record a dataset's new metadata, and sort out its cached chunks."""
        old = self.cache.set_dataset(root, path, obj)
        if old is not None:
            if has_manifest(old) and has_manifest(obj):
                self._keep_unchanged(root, path, old, obj)
            else:
                log.info("%s/%s changed: its cached chunks are dropped", root, path)
                self.cache.drop_chunks(root, path)
        with self._lock:
            seen = self._seen.setdefault(root, set())
            if obj is None:
                seen.discard(path)
            else:
                seen.add(path)
            self._lock.notify_all()
        self._reconcile_index(root)
        for callback in self.on_change:
            callback(root, path)

    def _root_recorded(self, name: str) -> None:
        self._reconcile_index(name)
        for callback in self.on_root:
            callback(name)

    def _keep_unchanged(self, root: str, path: str, old: DatasetMeta, new: DatasetMeta) -> None:
        """Keep the cached chunks of a changed dataset that its new manifest confirms."""
        try:
            url = self.catalogue.root(root)["info"]["url"]
            digests = self.fetcher.manifest(root, path, new, url)
        except CatmqttError as exc:
            log.warning("%s/%s changed and its manifest is unavailable (%s): chunks dropped", root, path, exc)
            self.cache.drop_chunks(root, path)
            return
        kept = self.cache.remap(root, path, old, new, digests)
        self.fetcher.count(f"{root}/{path}", kept_on_change=kept)
        log.info("%s/%s changed: %d cached chunks still valid, kept", root, path, kept)

    def _reconcile_index(self, name: str) -> None:
        """Forget the datasets deleted while we were away, once the snapshot of a root is in.

        The snapshot is complete when as many datasets were announced as the
        root's own announcement counts.
        """
        try:
            expected = self.catalogue.root(name)["info"]["datasets"]
        except NotFound:
            return
        with self._lock:
            if name not in self._unreconciled:
                return
            seen = set(self._seen.get(name, ()))
            if len(seen) < expected:
                return
            self._unreconciled.discard(name)
        for path in set(self.cache.datasets(name)) - seen:
            log.info("%s/%s was deleted while we were away", name, path)
            self.cache.set_dataset(name, path, None)
            for callback in self.on_change:
                callback(name, path)

    # On HTTP threads

    def subscribed(self, name: str) -> bool:
        with self._lock:
            return name in self._subscribed

    def subscribe(self, name: str) -> None:
        """Follow root `name`; returns once the broker replayed its datasets."""
        root = self.catalogue.root(parse_root_name(name))
        if self.subscribed(name) and root["subscribed"]:
            return
        with self._lock:
            self._seen[name] = set()
            self._unreconciled.add(name)
        self.catalogue.set_subscribed(name, True)
        with self._lock:
            self._subscribed.add(name)
        self.topics.subscribe(f"{root_topic(self.prefix, name)}/ds/#")
        if self.topics.connected.is_set():
            expected = root["info"]["datasets"]
            with self._lock:
                if not self._lock.wait_for(lambda: len(self._seen[name]) >= expected, SNAPSHOT_WAIT):
                    log.warning(
                        "root %r: %d of %d datasets announced so far", name, len(self._seen[name]), expected
                    )

    def unsubscribe(self, name: str) -> None:
        self.catalogue.root(parse_root_name(name))
        self.catalogue.set_subscribed(name, False)
        with self._lock:
            self._subscribed.discard(name)
        self.topics.unsubscribe(f"{root_topic(self.prefix, name)}/ds/#")

    def settled(self, root: str, path: str) -> None:
        """Wait until the latest update of a dataset is applied, its cached chunks sorted out."""
        self.updates.settled(root, path, self.fetcher.timeout[1])
