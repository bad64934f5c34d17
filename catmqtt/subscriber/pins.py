"""This module holds a subscriber's pins: roots, directories and datasets kept
whole in the cache (mirrored), the ``prefetch`` thread that fetches their
chunks in the background, and forgetting a root.

A pin is a row of the index's ``pins`` table: (root, '') for a whole root,
(root, path) for a directory or a dataset of it. Eviction reads that table
and never evicts the chunks of a pinned dataset.

The `Prefetcher` fetches the chunks that pinned datasets lack through the
fetcher, a small batch at a time (one chunk at a time under a rate), giving
way to clients: it starts a batch only when no other fetch is in flight, and
takes at most `Prefetcher.rate` bytes per second when one is set. It is
woken when a pin is made and when an update of a pinned dataset has been
applied (`Follower.on_change`): the chunks of a changed dataset that its new
manifest does not confirm (see `Chunks.remap`), and datasets new under a
pinned root or directory, are fetched at once. While something pinned is
missing (a publisher offline, a failure), it tries again every `RETRY`
seconds.

Threads: HTTP threads pin, unpin, list and forget (`Pins`); the ``updates``
worker calls `Prefetcher.changed`, and drops a forgotten root's datasets (the
only caller of `Cache.set_dataset` it must stay); the one ``prefetch`` thread
fetches (`Prefetcher`). `Pins._changing` orders pinning, unpinning and
forgetting (a pin never lands on a root being forgotten); it is held across
`Follower.subscribe` and while waiting for the ``updates`` worker, which
never takes it. `Prefetcher._lock` guards the failures of the last attempts
(`Prefetcher._errors`) and the rate (`Prefetcher._next`); it is held for no
call out of this module. The cache takes its own locks within its calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ..config import format_size
from ..errors import CatmqttError, Changed, InsufficientStorage, NotFound
from ..topics import parse_path, parse_root_name
from .cache import Cache
from .flights import Upstream
from .reader import Reader

log = logging.getLogger(__name__)

# Seconds between attempts while something pinned is missing.
RETRY = 5.0
# Seconds between looks at what is pinned when all of it was there: a damaged
# chunk dropped, for one, is fetched again.
CHECK = 60.0
# Seconds between looks at the fetches in flight, while the prefetcher gives way to them.
PAUSE = 0.05
# Chunks fetched at once without a rate (one with a rate).
BATCH = 4
# Seconds a stopping subscriber waits for the chunks the prefetcher is fetching.
CLOSE_WAIT = 5.0


def parse_target(target: str) -> tuple[str, str]:
    """Return (root, path) of ``ROOT[/PATH]``: path '' for the whole root."""
    name, _, path = target.partition("/")
    path = path.rstrip("/")
    return parse_root_name(name), parse_path(path) if path else ""


def covered(pin: str, paths: list[str]) -> list[str]:
    """Return the dataset paths of `paths` that a pin of `pin` ('' for the root) covers."""
    return [p for p in paths if not pin or p == pin or p.startswith(pin + "/")]


def pinned(cache: Cache, root: str | None = None) -> set[tuple[str, str]]:
    """Return (root, path) of every pinned dataset of `cache` (of `root` if given)."""
    datasets = set()
    rows = cache.index.query("SELECT root, path FROM pins WHERE ? IS NULL OR root = ?", (root, root))
    for name, pin in rows:
        datasets.update((name, p) for p in covered(pin, cache.datasets(name)))
    return datasets


class Pins:
    """The pins of a subscriber, and their `Prefetcher` (started by `start`), at
    most `rate` bytes per second when not None."""

    def __init__(self, reader: Reader, rate: int | None = None) -> None:
        self.reader = reader
        self.cache = reader.cache
        self.follower = reader.follower
        self.prefetcher = Prefetcher(reader, rate)
        self._changing = threading.Lock()

    def start(self) -> Pins:
        problem = self.over_budget()
        if problem is not None:
            log.warning("%s", problem)
        self.prefetcher.start()
        return self

    def close(self) -> None:
        self.prefetcher.close()

    # On HTTP threads

    def pin(self, target: str) -> None:
        """Pin ``ROOT[/PATH]``, subscribing to its root if need be; pinning twice is pinning once.

        Raises NotFound for an unknown root, dataset or directory, and
        InsufficientStorage if what would be pinned is over the cache's budget.
        """
        root, path = parse_target(target)
        with self._changing:
            self.cache.catalogue.root(root)
            subscribed_here = not self.follower.subscribed(root)
            if subscribed_here:
                self.follower.subscribe(root)
            try:
                datasets = covered(path, self.cache.datasets(root))
                if path and not datasets:
                    raise NotFound(f"no dataset or directory {path!r} in root {root!r}")
                self._check_budget(target, {(root, p) for p in datasets})
            except CatmqttError:
                if subscribed_here:
                    self.follower.unsubscribe(root)
                raise
            self.cache.index.query("INSERT OR IGNORE INTO pins VALUES (?, ?)", (root, path))
        self.prefetcher.retry(root)

    def _check_budget(self, target: str, datasets: set[tuple[str, str]]) -> None:
        limit = self.cache.usage().limit
        total = self._pinned_bytes(datasets)
        if limit is not None and total > limit:
            raise InsufficientStorage(
                f"pinning {target} would keep {format_size(total)} pinned, over the cache's budget of"
                f" {format_size(limit)} (subscriber.cache_size): pin less, or raise the budget"
            )

    def over_budget(self) -> str | None:
        """Say so if what is pinned does not fit the cache's budget (a pinned directory
        grew, the budget was lowered): the cache then has no room for the rest."""
        limit = self.cache.usage().limit
        total = self._pinned_bytes(set())
        if limit is None or total <= limit:
            return None
        return (
            f"the pins take {format_size(total)}, over the cache's budget of {format_size(limit)}"
            " (subscriber.cache_size): unpin some, or raise the budget"
        )

    def _pinned_bytes(self, more: set[tuple[str, str]]) -> int:
        """Return the bytes of the pinned datasets, and of `more`."""
        return sum(self._size(root, path) for root, path in more | pinned(self.cache))

    def _size(self, root: str, path: str) -> int:
        try:
            meta = self.cache.dataset(root, path)
        except NotFound:
            return 0
        return meta.get("cbytes", meta["nbytes"])

    def unpin(self, target: str) -> None:
        """Unpin ``ROOT[/PATH]``, as pinned: its chunks stay cached, and may be evicted."""
        root, path = parse_target(target)
        with self._changing:
            if not self.cache.index.query("SELECT 1 FROM pins WHERE root=? AND path=?", (root, path)):
                raise NotFound(f"{target} is not pinned (see 'catmqtt pins')")
            self.cache.index.query("DELETE FROM pins WHERE root=? AND path=?", (root, path))

    def list(self) -> list[dict[str, Any]]:
        """Return the pins, sorted: root, path, datasets, bytes cached of bytes in
        total (compressed: as announced, exact once cached), whether all is cached,
        and what is wrong (else None): what stops it being cached, or pins over
        the cache's budget, told with every pin."""
        listing = []
        over = self.over_budget()
        held: dict[str, dict[tuple[str, str], tuple[int, int]]] = {}
        for root, path in self.cache.index.query("SELECT root, path FROM pins ORDER BY root, path"):
            if root not in held:
                rows = self.cache.index.query(
                    "SELECT path, etag, COUNT(*), SUM(nbytes) FROM chunks WHERE root=? GROUP BY path, etag",
                    (root,),
                )
                held[root] = {(p, etag): (count, nbytes) for p, etag, count, nbytes in rows}
            cached = total = 0
            done = True
            datasets = covered(path, self.cache.datasets(root))
            for p in datasets:
                try:
                    meta = self.cache.dataset(root, p)
                except NotFound:
                    continue
                count, nbytes = held[root].get((p, meta["etag"]), (0, 0))
                whole = count >= meta["nchunks"]
                done = done and whole
                cached += nbytes
                total += nbytes if whole else max(nbytes, meta.get("cbytes", meta["nbytes"]))
            entry = {"root": root, "path": path, "datasets": len(datasets), "cached": cached}
            if path and not datasets:
                # Withdrawn by its publisher since it was pinned: never whole.
                done = False
                error = f"no dataset or directory {path!r} in root {root!r} any more: unpin it"
            else:
                # Over the budget, the cache has no room for anything but the pins: told even
                # of a pin whole.
                error = over or (None if done else self._problem(root, datasets))
            listing.append({**entry, "total": total, "done": done, "error": error})
        return listing

    def _problem(self, root: str, datasets: list[str]) -> str | None:
        """Return what keeps datasets of a root from being cached whole, None if nothing known."""
        try:
            info = self.reader.root_of(root)
        except CatmqttError as exc:
            return str(exc)
        if not self.follower.statuses.online(info):
            return f"the publisher of root {root!r} is offline: the rest comes when it is back"
        return self.prefetcher.failure(root, datasets)

    def forget(self, name: str) -> None:
        """Unsubscribe from a root, drop its datasets and cached chunks, and forget
        it unless its publisher is online. Refused while something of it is pinned."""
        name = parse_root_name(name)
        with self._changing:
            self.cache.catalogue.root(name)
            pinned = [r[0] for r in self.cache.index.query("SELECT path FROM pins WHERE root=?", (name,))]
            if pinned:
                targets = ", ".join(f"{name}/{p}".rstrip("/") for p in pinned)
                raise CatmqttError(
                    f"root {name!r} has pins ({targets}): unpin them first ('catmqtt unpin ...')", 409
                )
            self.follower.unsubscribe(name)
            # After the updates queued before: the last of them may record a dataset.
            dropped: Future = Future()
            self.follower.updates.submit(self._drop, name, dropped)
            dropped.result()

    # On the updates worker

    def _drop(self, name: str, dropped: Future) -> None:
        try:
            for path in self.cache.datasets(name):
                self.cache.set_dataset(name, path, None)
            info = self.cache.catalogue.root(name)["info"]
            if not self.follower.statuses.online(info):
                self.cache.set_root(name, None)
            _remove_empty(self.cache.chunks.data_dir / name)
        except BaseException as exc:
            dropped.set_exception(exc)
        else:
            log.info("root %r forgotten", name)
            dropped.set_result(None)


class Prefetcher:
    """Fetches the chunks pinned datasets lack, on the ``prefetch`` thread (started by
    `start`), at most `rate` bytes per second when not None."""

    def __init__(self, reader: Reader, rate: int | None = None) -> None:
        self.reader = reader
        self.cache = reader.cache
        self.fetcher = reader.fetcher
        self.follower = reader.follower
        self.rate = rate
        self._lock = threading.Lock()
        # {(root, dataset path): what failed the last time it was fetched}, under _lock.
        self._errors: dict[tuple[str, str], str] = {}
        # When the next chunk may be fetched (time.monotonic()), under _lock.
        self._next = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start prefetching, and be told of the follower's updates."""
        self.follower.on_change.append(self.changed)
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._wake.set()
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            # A batch under way ends when the fetcher closes, next, if not before.
            self._thread.join(CLOSE_WAIT)

    # On HTTP threads

    def retry(self, root: str) -> None:
        """Try the datasets of `root` again at once, forgetting what failed before:
        it must not end a wait for a new pin."""
        with self._lock:
            for key in [key for key in self._errors if key[0] == root]:
                del self._errors[key]
        self._wake.set()

    def failure(self, root: str, datasets: list[str]) -> str | None:
        """Return what failed the last time one of `datasets` of `root` was fetched."""
        with self._lock:
            return next((self._errors[(root, p)] for p in datasets if (root, p) in self._errors), None)

    # On the updates worker

    def changed(self, root: str, path: str) -> None:
        """Be told that an update of a dataset was applied: fetch what it lacks if pinned."""
        pins = [r[0] for r in self.cache.index.query("SELECT path FROM pins WHERE root=?", (root,))]
        if any(covered(pin, [path]) for pin in pins):
            self._wake.set()

    # On the prefetch thread

    def _run(self) -> None:
        missing = False
        while not self._stop.is_set():
            self._wake.wait(RETRY if missing else CHECK)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                missing = self._prefetch()
            except Exception:
                # Stopping, the fetcher and the cache may close under a fetch.
                if not self._stop.is_set():
                    log.exception("prefetching pinned datasets failed")
                missing = True

    def _prefetch(self) -> bool:
        """Fetch what pinned datasets lack; return whether something is still missing."""
        missing = False
        failed: set[str] = set()
        for root, path in sorted(pinned(self.cache)):
            if self._stop.is_set():
                return missing
            if root in failed:
                missing = True
                continue
            try:
                source = self.reader.lookup(f"{root}/{path}")
                lacking = self._lacking(source)
                if lacking and not self.follower.statuses.online(self.reader.root_of(root)):
                    failed.add(root)
                    missing = True
                    continue
                self._fetch(source, lacking)
            except Changed:
                # Its update wakes the prefetcher again.
                missing = True
            except CatmqttError as exc:
                if self._stop.is_set():
                    return True
                failed.add(root)
                missing = True
                text = f"{root}/{path}: {exc}"
                with self._lock:
                    told, self._errors[(root, path)] = self._errors.get((root, path)), text
                # Once, not at every attempt.
                if told != text:
                    log.warning("cannot fetch pinned %s", text)
            else:
                with self._lock:
                    self._errors.pop((root, path), None)
        return missing

    def _lacking(self, source: Upstream) -> list[int]:
        """Return the chunks a dataset lacks."""
        root, path, meta, _ = source
        rows = self.cache.index.query(
            "SELECT nchunk FROM chunks WHERE root=? AND path=? AND etag=?", (root, path, meta["etag"])
        )
        have = {r[0] for r in rows}
        return [n for n in range(meta["nchunks"]) if n not in have]

    def _fetch(self, source: Upstream, lacking: list[int]) -> None:
        """Fetch chunks `lacking` of a dataset, giving way to clients."""
        root, path, meta, _ = source
        size = 1 if self.rate else BATCH
        for i in range(0, len(lacking), size):
            batch = lacking[i : i + size]
            # Unpinned meanwhile: nothing more of it crosses the link.
            if not self._give_way() or (root, path) not in pinned(self.cache, root):
                return
            started = time.monotonic()
            self.fetcher.ensure(source, batch, batch)
            if self.rate:
                marks = ",".join("?" * len(batch))
                sent = self.cache.index.query(
                    f"SELECT COALESCE(SUM(nbytes), 0) FROM chunks WHERE root=? AND path=? AND etag=?"
                    f" AND nchunk IN ({marks})",
                    (root, path, meta["etag"], *batch),
                )[0][0]
                with self._lock:
                    self._next = max(self._next, started) + sent / self.rate

    def _give_way(self) -> bool:
        """Wait until no fetch is in flight and the rate allows the next chunk;
        return False if the subscriber stops meanwhile."""
        while self.fetcher.in_flight():
            if self._stop.wait(PAUSE):
                return False
        with self._lock:
            delay = self._next - time.monotonic()
        return not (delay > 0 and self._stop.wait(delay))


def _remove_empty(top: Path) -> None:
    """Remove the empty directories under `top`, and `top` if it is left empty."""
    for directory, _, _ in os.walk(top, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(directory)
