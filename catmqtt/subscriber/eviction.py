"""This module keeps the subscriber's cache within its budget: `Evictor`
evicts the least recently read chunks (see `chunks` for how one is evicted,
and why one being read never is) so that the cached chunks take at most
``subscriber.cache_size`` bytes and the file system of the state directory
keeps ``subscriber.min_free`` bytes free.

The cache writer asks for room before it stores a chunk (`Evictor.room`):
it waits while the ``eviction`` thread makes it, so the chunks never pass the
budget, not even while one is written (there is one writer); it fails with
InsufficientStorage (HTTP 507 to a reader waiting for the chunk) for a chunk
larger than the budget, or when all that is left is pinned or being read.
Otherwise the thread wakes every `CHECK` seconds to look at the free space.
(`Chunks.remap` writes without asking: it keeps chunks that were cached.)
A pass starts when the cached chunks pass a high mark (half `SLACK` below
the limit), and evicts down to `SLACK` below it, so that the writer seldom
waits.

Threads: the ``eviction`` thread alone evicts; the cache writer waits in
`room`; any thread reads `budget` and `evictions`. ``Evictor._cond`` guards
the demand and the passes; the writer holds it while it asks the index for
the bytes cached (``_cond`` then ``Index.lock``), and the eviction thread
never holds it while it evicts, so it never waits for ``_cond`` holding a
``Slot.lock`` or ``Index.lock``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import InsufficientStorage, NotFound

if TYPE_CHECKING:
    from ..schema import DatasetMeta
    from .chunks import Chunks

log = logging.getLogger(__name__)

# Chunks chosen at once, and evicted under one hold of a dataset's Slot.lock at most.
CHOSEN = 128
BATCH = 32
# Seconds between looks at the free space when nothing asks for room.
CHECK = 5.0
# Seconds a look at the free space is good for.
STATFS = 1.0
# Seconds the cache writer waits for room at most.
ROOM_WAIT = 30.0
# Seconds between two warnings that min_free makes chunks go.
WARN_EVERY = 300.0
# A pass evicts down to the limit less 1/SLACK of it, once past half as much below it.
SLACK = 20


class Evictor:
    """Evicts the least recently read chunks of `chunks` beyond `budget` bytes
    (None: no budget) or `min_free` bytes free on the file system; `dataset`
    gives the current metadata of a dataset (or raises NotFound)."""

    def __init__(
        self,
        chunks: Chunks,
        dataset: Callable[[str, str], DatasetMeta],
        budget: int | None,
        min_free: int,
    ) -> None:
        self.chunks = chunks
        self.budget = budget
        self.min_free = min_free
        # Chunks evicted since the cache opened (written by the eviction thread alone).
        self.evictions = 0
        self._dataset = dataset
        self._cond = threading.Condition()
        # Under _cond: bytes the writer waits to store, passes ended and under way,
        # the last pass that could not make its room, whether to stop.
        self._demand = 0
        self._wake = False
        self._passes = 0
        self._running = False
        self._stuck = -1
        self._closing = False
        # (time.monotonic(), the limit the file system sets), replaced whole.
        self._statfs: tuple[float, int] = (-STATFS, 0)
        # When min_free last made chunks go, and it was said (time.monotonic()).
        self._warned = -WARN_EVERY
        self._thread = threading.Thread(target=self._run, name="eviction", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def limit(self) -> int:
        """Return the bytes the cached chunks may take now: the budget, or less if
        min_free asks for it."""
        when, room = self._statfs
        now = time.monotonic()
        if now - when > STATFS:
            try:
                free = shutil.disk_usage(self.chunks.index.dir).free
            except OSError as exc:
                # Writing there fails too, with its own error: nothing to evict for.
                log.warning("cannot tell the free space of %s: %s", self.chunks.index.dir, exc)
                free = self.min_free + (1 << 62)
            room = self.chunks.usage() + free - self.min_free
            self._statfs = (now, room)
        return room if self.budget is None else min(self.budget, room)

    def room(self, nbytes: int, what: str) -> None:
        """Wait until a chunk of `nbytes` (`what`) fits in the budget; raise
        InsufficientStorage if it never will."""
        if self.budget is not None and nbytes > self.budget:
            raise InsufficientStorage(
                f"{what} is {nbytes} bytes, more than the cache's budget of {self.budget} bytes:"
                " raise subscriber.cache_size (--cache-size)"
            )
        deadline = time.monotonic() + ROOM_WAIT
        with self._cond:
            # The first pass to start after this call.
            first = None
            while self.chunks.usage() + nbytes > self.limit():
                if first is None:
                    first = self._passes + 1 + self._running
                elif self._stuck >= first or time.monotonic() > deadline:
                    raise InsufficientStorage(self._full(nbytes, what))
                self._demand = max(self._demand, nbytes)
                self._cond.notify_all()
                self._cond.wait(0.5)
            # Past the high mark: room is made in the background, before a store has to wait.
            if not self._running and self.chunks.usage() + nbytes > high(self.limit()):
                self._wake = True
                self._cond.notify_all()

    def _full(self, nbytes: int, what: str) -> str:
        limit = self.limit()
        if self.budget is not None and limit >= self.budget:
            return (
                f"no room for {what} ({nbytes} bytes): the cache's budget of {self.budget} bytes"
                " (subscriber.cache_size, --cache-size) holds only chunks being read or pinned"
            )
        return (
            f"no room for {what} ({nbytes} bytes): {self.min_free} bytes must stay free on the"
            f" disk of {self.chunks.index.dir} (subscriber.min_free), and what is cached is being"
            " read or pinned"
        )

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closing or self._demand or self._wake, timeout=CHECK)
                if self._closing:
                    return
                demand, self._demand, self._wake = self._demand, 0, False
                self._running = True
            try:
                stuck = self._pass(demand)
            except Exception:
                log.exception("cannot evict cached chunks")
                stuck = True
            with self._cond:
                self._running = False
                self._passes += 1
                if stuck:
                    self._stuck = self._passes
                self._cond.notify_all()

    def _pass(self, demand: int) -> bool:
        """Evict chunks until `demand` more bytes fit, or the cache is within its
        limit; return whether that could not be done."""
        limit = self.limit()
        used = self.chunks.usage()
        self._warn(limit, used + demand)
        if used + demand <= high(limit):
            return False
        target = min(limit - demand, limit - limit // SLACK)
        skipped = 0
        while used > target:
            chosen = self.chunks.lru(CHOSEN, skipped)
            if not chosen:
                return True
            # The fewest of the least recently read chunks that make the room, by dataset.
            groups: dict[tuple[str, str], list[tuple[int, float]]] = {}
            need = used - target
            for root, path, nchunk, when, nbytes in chosen:
                if need <= 0:
                    break
                groups.setdefault((root, path), []).append((nchunk, when))
                need -= nbytes
            for (root, path), group in groups.items():
                try:
                    meta = self._dataset(root, path)
                except NotFound:
                    skipped += len(group)
                    continue
                for i in range(0, len(group), BATCH):
                    batch = group[i : i + BATCH]
                    sizes = self.chunks.evict(root, path, meta, batch)
                    self.evictions += len(sizes)
                    skipped += len(batch) - len(sizes)
            used = self.chunks.usage()
        return False

    def _warn(self, limit: int, wanted: int) -> None:
        """Say when min_free, not the budget, makes chunks go: at most every `WARN_EVERY` seconds."""
        forced = (self.budget is None or limit < self.budget) and wanted > limit
        now = time.monotonic()
        if forced and now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning(
                "evicting cached chunks to keep %d bytes free on the disk of %s (subscriber.min_free):"
                " the cache may hold %d bytes now, and would hold %d",
                self.min_free,
                self.chunks.index.dir,
                max(limit, 0),
                wanted,
            )


def high(limit: int) -> int:
    """Return the bytes of chunks past which a pass starts."""
    return limit - limit // (2 * SLACK)
