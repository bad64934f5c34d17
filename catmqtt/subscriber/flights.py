"""This module fetches the chunks that the cache lacks from publishers, each once.

Missing chunks are fetched concurrently, each only once even when many clients
ask for it at the same time, and each checked against the digest its publisher
sent. A client streaming chunks gets them from memory as they arrive, while one
writer stores them in the cache behind it (a bounded backlog). Over a slow
link, a selection that needs a few blocks of a chunk is answered from those
blocks as soon as they are in, before the rest of the chunk comes (on threads
of its own, leaving the fetch workers to other chunks) and the digest of the
whole is checked. Talking to publishers is `transport`'s part.

Threads and locks: callers (the subscriber's HTTP threads; its ``updates``
thread for `manifest` and `count`) start fetches; each chunk is fetched on a
``fetch`` thread (`Fetcher.pool`), the rest of one fetched in parts on a
``rest`` thread (`Fetcher.rests`), and written to the cache on the one
``cache-writer`` thread (`WriteBehind`). `Fetcher._lock` guards the in-flight
table `_inflight`; it is an RLock because a fetch that cannot start (its pool
was shut down) fails, and so forgets itself, on the thread holding it.
`RestBacklog._cond` guards the bytes waiting for their rests, `WriteBehind._room`
those waiting to be written, `metrics.Stats` the counters. Each future of a
`_Pending` is set once, by the thread that ends its step. No lock of this
module is held while another is taken (but `_lock` again) or while the network
or the cache is used; the cache takes its own (``Slot.lock`` -> ``Index.lock``)
within its calls, and `transport` its own within its calls.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import blosc2

from .. import storage
from ..blocks import block_parts, chunk_nbytes, gaps
from ..errors import CatmqttError, Changed, InsufficientStorage
from ..wire import DIGEST, ETAG
from .cache import Cache
from .metrics import Stats
from .transport import Manifests, Transport, Upstream, changing, check_chunk, damaged, stopping

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from ..schema import DatasetMeta

__all__ = ["FetchSettings", "Fetcher", "Upstream"]

log = logging.getLogger(__name__)

# Bytes of fetched chunks that may wait to be written to the cache.
WRITE_BEHIND = 64 << 20
# Some blocks of a chunk are fetched first where the rest of it would take
# longer than this to come: over a fast link (loopback, a LAN) the whole
# chunk comes about as soon, and the rest, following, would only compete
# with the next requests.
PARTS_WORTH = 0.02
# The rest of a chunk fetched in parts comes in ranges of at most this many
# bytes, each once no other fetch from its publisher is under way: on a slow
# link a request waits for one such range at most, not for a whole rest.
REST_PIECE = 1 << 20
# Bytes of chunks fetched in parts that may wait for their rests: beyond, a
# fetch worker waits before taking another chunk.
REST_BACKLOG = 64 << 20
# Seconds a closing fetcher gives the rests under way to come: the first
# blocks of their chunks were answered already, and the chunks belong in the
# cache (a subscriber stopped right after a slice has it after a restart).
REST_GRACE = 5.0


@dataclass(frozen=True)
class FetchSettings:
    """How a `Fetcher` fetches: with `workers` fetches at once (and as many rests),
    waiting `timeout` seconds at most for a publisher's answer, and giving up on one
    that comes slower than `min_rate` bytes a second after that (0: however slow; see
    `transport.fast_enough`); blocks first where the rest of a chunk would take over
    `parts_worth` seconds to come; and giving the rests under way `rest_grace`
    seconds to come when it closes."""

    workers: int
    timeout: float
    min_rate: int = 0
    parts_worth: float = PARTS_WORTH
    rest_grace: float = REST_GRACE

    def __post_init__(self) -> None:
        if (
            self.workers < 1
            or self.timeout <= 0
            or self.min_rate < 0
            or self.parts_worth < 0
            or self.rest_grace < 0
        ):
            raise ValueError(f"invalid fetch settings: {self!r}")


class Fetcher:
    """Fetches what the cache lacks from publishers, and counts what it does."""

    def __init__(self, cache: Cache, settings: FetchSettings) -> None:
        self.cache = cache
        self.settings = settings
        self.transport = Transport(settings.workers, settings.timeout, settings.min_rate)
        self.timeout = self.transport.timeout
        # The manifests of dataset versions, as they are fetched.
        self._manifests = Manifests(self.transport)
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="fetch")
        # The rests of chunks fetched in parts come on threads of their own, so
        # that the fetch workers are free for other chunks meanwhile.
        self.rests = ThreadPoolExecutor(settings.workers, thread_name_prefix="rest")
        self._rest_backlog = RestBacklog()
        self._writer = WriteBehind(cache, self._forget)
        self._stats = Stats()
        self._lock = threading.RLock()
        self._inflight: dict[tuple, _Pending] = {}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        # The rests under way, for `rest_grace` seconds at most; then no more.
        self._rest_backlog.close(self.settings.rest_grace)
        self.rests.shutdown(wait=False, cancel_futures=True)
        # What was fetched is written before the cache closes.
        self._writer.close()
        self.transport.close()

    def count(self, dataset: str, **counts: int) -> None:
        self._stats.count(dataset, **counts)

    def stats(self) -> dict[str, Any]:
        """Return the counters since start: per dataset (``root/path``) and in total."""
        return self._stats.snapshot()

    @property
    def fetch_seconds(self) -> Histogram:
        """The seconds each chunk fetched whole took, from its start on a fetch worker
        until it was in and checked (its rest included, when fetched in parts)."""
        return self._stats.fetch_seconds

    def in_flight(self) -> int:
        """Return how many chunks are on their way: being fetched, or written to the cache."""
        with self._lock:
            return len(self._inflight)

    def manifest(self, root: str, path: str, meta: DatasetMeta, url: str) -> list[str]:
        """Return the chunk digests of version ``meta["etag"]`` of a dataset, from its publisher."""
        return self.transport.manifest(Upstream(root, path, meta, url))

    def digests(self, source: Upstream) -> list[str] | None:
        """Return the chunk digests of a dataset version that names its manifest, from its
        publisher, checked against the announcement and kept a while; None for one that
        does not."""
        return self._manifests.digests(source)

    def ensure(self, source: Upstream, numbers: list[int], missing: list[int] | None = None) -> None:
        """Make sure chunks `numbers` of a dataset are cached, fetching the missing ones
        (`missing`, when the caller asked `missing` already)."""
        if missing is None:
            missing = self.missing(source, numbers)
        # Only the `stored` futures are kept: fetched bytes are freed once written.
        stored = [self._pending(source, n).stored for n in missing]
        wait(stored)
        for future in stored:
            if future.exception() is not None:
                # The read ends here: its claims on the chunks go (see `Chunks.evict`).
                self.cache.release(source.root, source.path, numbers)
                raise future.exception()

    def stream(
        self,
        source: Upstream,
        numbers: list[int],
        missing: list[int] | None = None,
        parts: dict[int, range] | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """Yield (number, compressed bytes) of chunks `numbers`: cached ones first, the
        others (`missing`, as in `ensure`) as they arrive from the publisher, straight
        from memory (their write to the cache goes on behind). Raises Changed if the
        dataset changes.

        `parts` maps chunks of which only some blocks are needed to those blocks: a
        missing one is fetched in parts, and yielded as soon as those blocks are in
        (the chunk's size, its other bytes zeros), while the rest follows into the cache.
        """
        if missing is None:
            missing = self.missing(source, numbers)
        parts = parts if parts and self._parts_pay(source) else {}
        cached = sorted(set(numbers).difference(missing))
        todo = iter(missing)
        # A window of fetches per stream: a slow reader holds at most this many chunks.
        window: dict[Future, int] = {}

        def refill() -> None:
            for n in itertools.islice(todo, self.settings.workers - len(window)):
                window[self._pending(source, n, parts.get(n)).first(parts.get(n))] = n

        refill()
        for n in cached:
            yield n, self._read(source, n)
        while window:
            done, _ = wait(window, return_when=FIRST_COMPLETED)
            for future in done:
                n = window.pop(future)
                if future.exception() is not None:
                    self.cache.release(source.root, source.path, numbers)
                    raise future.exception()
                data = future.result()
                refill()
                yield n, data

    def missing(self, source: Upstream, numbers: list[int]) -> list[int]:
        """Return the chunks of `numbers` that are not cached; count them as misses, the others as hits."""
        root, path, meta, _ = source
        cached = self.cache.cached_chunks(root, path, meta, numbers)
        missing = [n for n in numbers if n not in cached]
        self.count(f"{root}/{path}", cache_hits=len(numbers) - len(missing), cache_misses=len(missing))
        return missing

    def _parts_pay(self, source: Upstream) -> bool:
        """Tell whether fetching some blocks of a chunk first is worth it: if the
        publisher's link is slow, or not measured yet."""
        meta = source.meta
        speed = self.transport.speed(source.url)
        chunk = meta.get("cbytes", meta["nbytes"]) / max(meta["nchunks"], 1)
        return speed is None or chunk / speed > self.settings.parts_worth

    def _read(self, source: Upstream, nchunk: int) -> bytes:
        data = self.cache.read_chunk(source.root, source.path, source.meta, nchunk)
        if data is None:
            raise Changed(f"{source.root}/{source.path}")
        return data

    def _pending(self, source: Upstream, nchunk: int, blocks: range | None = None) -> _Pending:
        """Return the fetch of a chunk, started now unless one is under way (or being
        stored); in parts, `blocks` first, if given and the chunk is an array's."""
        root, path, meta, url = source
        key = (root, path, meta["etag"], nchunk, meta.get("manifest", url))
        with self._lock:
            pending = self._inflight.get(key)
            if pending is None:
                early: Future | None = None if blocks is None else Future()
                pending = self._inflight[key] = _Pending(source, key, Future(), Future(), early, blocks)
                pending.fetched.add_done_callback(lambda _: self._fetched(pending))
                _run(self.pool, pending.fetched, partial(self._fetch, pending))
        return pending

    def _fetched(self, job: _Pending) -> None:
        """Pass a failed fetch on to those waiting for its first blocks or for the
        chunk's storing (`fetched` is never cancelled: see `_run`)."""
        key, fetched, stored, early = job.key, job.fetched, job.stored, job.early
        failure = fetched.exception()
        if early is not None and early.done() and failure is not None:
            log.log(
                logging.DEBUG if self._rest_backlog.closing.is_set() else logging.WARNING,
                "chunk %d of %s/%s failed after its first blocks were sent on: %s",
                key[3],
                key[0],
                key[1],
                failure,
            )
        for waiting in (early, stored):
            if waiting is None or waiting.done():
                continue
            if failure is not None:
                waiting.set_exception(failure)
            elif waiting is early:
                waiting.set_result(fetched.result())
        if failure is not None:
            self._forget(key)

    def _forget(self, key: tuple) -> None:
        with self._lock:
            self._inflight.pop(key, None)

    def _fetch(self, job: _Pending) -> None:
        """Fetch one chunk for `job.fetched`: whole, or `job.blocks` first (into
        `job.early`), then the rest on a thread of `rests`."""
        started = time.monotonic()
        limit = chunk_nbytes(job.source.meta, job.nchunk) + blosc2.MAX_OVERHEAD
        # The manifest first (once per version): _finish then checks at once.
        self._manifests.digests(job.source)
        if job.blocks is None or job.early is None:
            headers, data = self.transport.chunk(job.source, job.nchunk, limit)
            self._finish(job, headers, data, len(data), started)
            return
        headers, data, pieces = self._first_parts(job, limit)
        if not pieces:
            self._finish(job, headers, data, len(data), started)
            return
        self._rest_backlog.add(len(data))
        rest = partial(self._rest, job, limit, headers, data, pieces, started)
        _run(self.rests, job.fetched, rest, lambda: self._rest_backlog.done(len(data)))

    def _first_parts(self, job: _Pending, limit: int) -> tuple[Any, bytes | bytearray, list[tuple[int, int]]]:
        """Fetch what decoding `job.blocks` of a chunk needs, and set it into `job.early`
        (the chunk, its other bytes zeros). Return the response's headers, the chunk,
        and the byte ranges still to fetch (none if the whole chunk came)."""
        meta, nchunk, blocks, early = job.source.meta, job.nchunk, job.blocks, job.early
        headers, data, spans = self.transport.blocks(job.source, nchunk, limit, blocks)
        if spans is None:
            return headers, data, []
        # Its header and block offsets came first: checked before its blocks are
        # decoded (the whole chunk is checked again once its rest is in).
        check_chunk(job.source, nchunk, data)
        # Early only if what came holds all that decoding the blocks reads:
        # Blosc2 would decode missing (zero) bytes as zeros, without a word.
        needed = block_parts(data, blocks, chunk_nbytes(meta, nchunk))
        if needed is not None and all(any(a <= c and d <= b for a, b in spans) for c, d in needed):
            early.set_result(data)
        gap_pieces = (range(a, b, REST_PIECE) for a, b in gaps(spans, len(data)))
        return headers, data, [(a, min(a + REST_PIECE, r.stop)) for r in gap_pieces for a in r]

    def _rest(
        self,
        job: _Pending,
        limit: int,
        headers: Any,
        data: bytearray,
        pieces: list[tuple[int, int]],
        started: float,
    ) -> None:
        """Fetch byte ranges `pieces` of a chunk that came in part, then finish it."""
        root, path = job.source.root, job.source.path
        size = len(data)
        received = size - sum(stop - start for start, stop in pieces)
        chunk: bytes | bytearray = data
        try:
            for span in pieces:
                more, part, whole = self.transport.piece(
                    job.source, job.nchunk, limit, span, self._rest_backlog.closing
                )
                received += len(part)
                if more.get(ETAG) != headers.get(ETAG) or whole not in (size, None):
                    raise changing(root, path)
                if whole is None:
                    # The whole chunk came this time.
                    headers, chunk = more, part
                    break
                data[span[0] : span[1]] = part
        finally:
            self._rest_backlog.done(size)
        self._finish(job, headers, chunk, received, started)

    def _finish(
        self, job: _Pending, headers: Any, data: bytes | bytearray, received: int, started: float
    ) -> None:
        """Check a chunk that came whole (its fetch started at `started`, by
        ``time.monotonic()``), hand its writing to the cache writer, and set it into
        `job.fetched`."""
        root, path, meta, _ = job.source
        if headers.get(ETAG) != meta["etag"]:
            raise changing(root, path)
        check_chunk(job.source, job.nchunk, data)
        digest = storage.chunk_digest(data)
        # The manifest's digest where there is one: the header is the publisher's
        # word only, which an impostor's would give for its own bytes.
        manifest = self._manifests.digests(job.source)
        sent = headers.get(DIGEST) if manifest is None else manifest[job.nchunk]
        if sent is not None and sent != digest:
            raise damaged(job.source, job.nchunk)
        self.count(f"{root}/{path}", fetched_chunks=1, fetched_bytes=received)
        self._stats.fetch_seconds.observe(time.monotonic() - started)
        self._writer.submit(job, data, digest)
        job.fetched.set_result(data)


class WriteBehind:
    """Stores fetched chunks in the cache behind the clients they are sent to, on one
    writer thread (a dataset's container takes one write at a time anyway); at most
    WRITE_BEHIND bytes wait (beyond, a fetch waits until the writer catches up)."""

    def __init__(self, cache: Cache, forget: Callable[[tuple], None]) -> None:
        self.cache = cache
        # Called with a chunk's key once its write is done or failed.
        self._forget = forget
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="cache-writer")
        self._room = threading.Condition()
        self._waiting = 0

    def submit(self, job: _Pending, data: bytes | bytearray, digest: str) -> None:
        """Hand a checked chunk to the writer, which sets `job.stored` once it is written."""
        with self._room:
            self._room.wait_for(lambda: not self._waiting or self._waiting + len(data) <= WRITE_BEHIND)
            self._waiting += len(data)
        try:
            self._writer.submit(self._store, job, data, digest)
        except RuntimeError:
            # The writer was shut down: the subscriber is stopping.
            self._written(len(data))
            raise stopping() from None

    def close(self) -> None:
        """Write what was handed over, then stop."""
        self._writer.shutdown(wait=True)

    def _store(self, job: _Pending, data: bytes | bytearray, digest: str) -> None:
        root, path, meta, url = job.source
        nchunk, stored = job.nchunk, job.stored
        try:
            if not self.cache.store_chunk(root, path, meta, nchunk, data, digest, url):
                raise changing(root, path)
        except BaseException as exc:
            if isinstance(exc, InsufficientStorage):
                log.warning("cannot store chunk %d of %s/%s in the cache: %s", nchunk, root, path, exc)
            elif not isinstance(exc, CatmqttError):
                log.exception("cannot store chunk %d of %s/%s in the cache", nchunk, root, path)
            stored.set_exception(exc)
        else:
            stored.set_result(None)
        finally:
            self._forget(job.key)
            self._written(len(data))

    def _written(self, size: int) -> None:
        with self._room:
            self._waiting -= size
            self._room.notify_all()


class RestBacklog:
    """The bytes of chunks fetched in parts that wait for their rests (at most
    REST_BACKLOG: beyond, a fetch worker waits before taking another chunk), and
    whether the fetcher is closing (then no more rests are fetched)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting = 0
        self.closing = threading.Event()

    def add(self, size: int) -> None:
        """Count a chunk of `size` bytes waiting for its rest, once there is room."""

        def room() -> bool:
            return self.closing.is_set() or not self._waiting or self._waiting + size <= REST_BACKLOG

        with self._cond:
            self._cond.wait_for(room)
            if self.closing.is_set():
                raise stopping()
            self._waiting += size

    def done(self, size: int) -> None:
        """Take a chunk of `size` bytes off: its rest came, failed or never started."""
        with self._cond:
            self._waiting -= size
            self._cond.notify_all()

    def close(self, grace: float) -> None:
        """Give the rests under way `grace` seconds at most to come; then no more."""
        with self._cond:
            self._cond.wait_for(lambda: not self._waiting, timeout=grace)
        self.closing.set()
        with self._cond:
            self._cond.notify_all()


def _run(
    executor: ThreadPoolExecutor,
    fetched: Future,
    work: Callable[[], None],
    never_ran: Callable[[], None] | None = None,
) -> None:
    """Run `work` on `executor`. `fetched`, which `work` sets when it succeeds, gets
    its exception if it fails; if it never runs (the executor was shut down, or
    cancelled it), `never_ran` is called and `fetched` says the subscriber is stopping."""

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            if not fetched.done():
                fetched.set_exception(exc)

    def stopped() -> None:
        if never_ran is not None:
            never_ran()
        if not fetched.done():
            fetched.set_exception(stopping())

    try:
        task = executor.submit(run)
    except RuntimeError:
        stopped()
        return
    task.add_done_callback(lambda task: stopped() if task.cancelled() else None)


@dataclass(frozen=True)
class _Pending:
    """A chunk on its way (`key`: root, path, etag, chunk number, and the digest of the
    manifest that vouches for it, else the publisher's URL; from `source`): its checked
    bytes (`fetched`), then its write to the cache (`stored`); when fetched in parts,
    the bytes of `blocks` come first (`early`)."""

    source: Upstream
    key: tuple
    fetched: Future
    stored: Future
    early: Future | None = None
    blocks: range | None = None

    @property
    def nchunk(self) -> int:
        return self.key[3]

    def first(self, blocks: range | None) -> Future:
        """Return what to wait for to have `blocks` of the chunk (None: all of it)."""
        if blocks is None or self.early is None or self.blocks is None or self.fetched.done():
            return self.fetched
        within = self.blocks.start <= blocks.start and blocks.stop <= self.blocks.stop
        return self.early if within else self.fetched
