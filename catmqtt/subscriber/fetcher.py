"""This module fetches chunks and manifests from publishers into the cache.

Missing chunks are fetched concurrently over one pooled keep-alive session,
each only once even when many clients ask for it at the same time, and each
checked against the digest its publisher sent. A client streaming chunks gets
them from memory as they arrive, while one writer stores them in the cache
behind it (a bounded backlog). Over a slow link, a selection that needs a few
blocks of a chunk is answered from those blocks as soon as they are in, before
the rest of the chunk comes (on threads of its own, leaving the fetch workers
to other chunks) and the digest of the whole is checked.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import threading
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple
from urllib.parse import quote

import blosc2
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from .. import storage
from ..blocks import block_parts, chunk_nbytes, chunk_problem, gaps, parse_parts
from ..errors import CatmqttError, Changed, InsufficientStorage, Unavailable
from ..sessions import environment
from ..wire import DIGEST, ETAG, PARTS
from .cache import Cache

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
# Bytes of fetched chunks that may wait to be written to the cache.
WRITE_BEHIND = 64 << 20
STATS = ("fetched_chunks", "fetched_bytes", "cache_hits", "kept_on_change")
# At most 20 ASCII digits each: a lying publisher cannot make int() fail.
CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,20})-([0-9]{1,20})/([0-9]{1,20})")
# Some blocks of a chunk are fetched first where the rest of it would take
# longer than this to come: over a fast link (loopback, a LAN) the whole
# chunk comes about as soon, and the rest, following, would only compete
# with the next requests.
PARTS_WORTH = 0.02
# Where only small responses measured a link, its speed includes its latency:
# over a distant but fast link, small chunks then come in parts too.
# How fast a publisher's bytes come is measured by responses of this many
# bytes or more; until one came, by smaller ones adding up to as many (their
# latency weighs more: a publisher of small chunks only is measured too).
SAMPLE = 1 << 20
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
# Digests of chunk manifests kept in memory (about 100 bytes each), in all.
MANIFEST_DIGESTS = 1 << 18


class Fetcher:
    """Fetches what the cache lacks from publishers, and counts what it does."""

    def __init__(self, cache: Cache, workers: int, timeout: float) -> None:
        self.cache = cache
        self.timeout = (CONNECT_TIMEOUT, timeout)
        self.session = requests.Session()
        self.session.trust_env = False
        # What the environment says for each publisher's URL.
        self._environments: dict[str, dict[str, Any]] = {}
        # Bounded retries with backoff: a connection refused or reset, and a
        # publisher saying it is busy or changing (503), are tried again. A
        # read timeout is not (read=False raises it as it is: a 504).
        retry = Retry(
            total=3,
            connect=2,
            read=False,
            status=2,
            status_forcelist=(502, 503, 504),
            backoff_factor=0.2,
            allowed_methods=["GET"],
            raise_on_status=False,
        )
        # One connection per worker, one for a piece of a rest, one for manifests.
        adapter = HTTPAdapter(pool_connections=16, pool_maxsize=workers + 2, max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.workers = workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="fetch")
        # The rests of chunks fetched in parts come on threads of their own, so
        # that the fetch workers are free for other chunks meanwhile.
        self.rests = ThreadPoolExecutor(workers, thread_name_prefix="rest")
        self._closing = threading.Event()
        # One writer: a dataset's container takes one write at a time anyway.
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="cache-writer")
        self._writing = 0
        self._partial = 0
        self._backlog = threading.Condition()
        self._inflight: dict[tuple, _Pending] = {}
        self._lock = threading.RLock()
        self._stats: dict[str, Counter] = defaultdict(Counter)
        # The manifests of dataset versions, as they are fetched (see _digests).
        self._manifests: OrderedDict[tuple, Future] = OrderedDict()
        # Bytes per second of each publisher's responses, lately (see _measure).
        self._speeds: dict[str, float] = {}
        # Bytes and seconds of each publisher's small responses since the last
        # sample they made; None once a large response came.
        self._gathered: dict[str, tuple[int, float] | None] = {}
        # Requests for chunks, and for pieces of their rests, under way per publisher.
        self._foreground: Counter[str] = Counter()
        self._resting: Counter[str] = Counter()
        self._quiet = threading.Condition()
        self.parts_worth = PARTS_WORTH
        self.rest_grace = REST_GRACE

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        # The rests under way, for `rest_grace` seconds at most; then no more.
        with self._backlog:
            self._backlog.wait_for(lambda: not self._partial, timeout=self.rest_grace)
        self._closing.set()
        with self._backlog:
            self._backlog.notify_all()
        self.rests.shutdown(wait=False, cancel_futures=True)
        # What was fetched is written before the cache closes.
        self.writer.shutdown(wait=True)
        self.session.close()

    def count(self, dataset: str, **counts: int) -> None:
        with self._lock:
            self._stats[dataset].update(counts)

    def stats(self) -> dict[str, Any]:
        """Return the counters since start: per dataset (``root/path``) and in total."""
        with self._lock:
            datasets = {name: {k: c[k] for k in STATS} for name, c in sorted(self._stats.items())}
        total = {k: sum(d[k] for d in datasets.values()) for k in STATS}
        return {"total": total, "datasets": datasets}

    def ensure(self, source: Source, numbers: list[int], missing: list[int] | None = None) -> None:
        """Make sure chunks `numbers` of a dataset are cached, fetching the missing ones
        (`missing`, when the caller asked `missing` already)."""
        if missing is None:
            missing = self.missing(source, numbers)
        # Only the `stored` futures are kept: fetched bytes are freed once written.
        stored = [self._pending(source, n).stored for n in missing]
        wait(stored)
        for future in stored:
            if future.exception() is not None:
                raise future.exception()

    def stream(
        self,
        source: Source,
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
            for n in itertools.islice(todo, self.workers - len(window)):
                window[self._pending(source, n, parts.get(n)).first(parts.get(n))] = n

        refill()
        for n in cached:
            yield n, self._read(source, n)
        while window:
            done, _ = wait(window, return_when=FIRST_COMPLETED)
            for future in done:
                n = window.pop(future)
                if future.exception() is not None:
                    raise future.exception()
                data = future.result()
                refill()
                yield n, data

    def _parts_pay(self, source: Source) -> bool:
        """Tell whether fetching some blocks of a chunk first is worth it: if the
        publisher's link is slow, or not measured yet."""
        meta = source.meta
        speed = self._speeds.get(source.url)
        chunk = meta.get("cbytes", meta["nbytes"]) / max(meta["nchunks"], 1)
        return speed is None or chunk / speed > self.parts_worth

    def _read(self, source: Source, nchunk: int) -> bytes:
        data = self.cache.read_chunk(source.root, source.path, source.meta, nchunk)
        if data is None:
            raise Changed(f"{source.root}/{source.path}")
        return data

    def missing(self, source: Source, numbers: list[int]) -> list[int]:
        """Return the chunks of `numbers` that are not cached, and count the others as hits."""
        root, path, meta, _ = source
        cached = self.cache.cached_chunks(root, path, meta, numbers)
        self.count(f"{root}/{path}", cache_hits=len(cached))
        return [n for n in numbers if n not in cached]

    def _pending(self, source: Source, nchunk: int, blocks: range | None = None) -> _Pending:
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
                logging.DEBUG if self._closing.is_set() else logging.WARNING,
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

    def _get(
        self,
        root: str,
        url: str,
        endpoint: str,
        limit: int,
        span: tuple[int, int] | None = None,
        **params: Any,
    ) -> tuple[Any, bytes, int | None]:
        """GET from a publisher: (headers, body of at most `limit` bytes, None). With
        `span` (start, stop), only those bytes are asked for; if they alone came, the
        third item is the size of the whole. Failures become Unavailable (502, 503 or
        504) naming the publisher."""
        where = f"publisher of root {root!r} at {url}"
        started = time.monotonic()
        try:
            if url not in self._environments:
                self._environments[url] = environment(url)
            response = self.session.get(
                f"{url}/api/{endpoint}",
                params=params,
                headers=None if span is None else {"Range": f"bytes={span[0]}-{span[1] - 1}"},
                timeout=self.timeout,
                stream=True,
                **self._environments[url],
            )
            with response:
                # One read of the whole body: requests' own .content reads 10 KiB
                # at a time, which halves the speed of a 4 MiB chunk.
                body = response.raw.read(limit + 1)
        except (requests.Timeout, urllib3.exceptions.ReadTimeoutError):
            raise Unavailable(f"{where} did not answer within {self.timeout[1]:g} s", status=504) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError):
            raise Unavailable(f"{where} is unreachable", status=503) from None
        if len(body) > limit:
            raise Unavailable(f"{where} sent more than the {limit} bytes expected", status=502)
        if response.status_code in (200, 206):
            self._measure(url, len(body), time.monotonic() - started)
        if response.status_code == 206 and span is not None:
            # Those bytes, or fewer if the whole ends before `stop`.
            found = CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            first, last, size = (int(x) for x in found.groups()) if found else (-1, -1, 0)
            if (first, last + 1) != (span[0], min(span[1], size)) or len(body) != last + 1 - first:
                raise Unavailable(f"{where} sent other bytes than the range asked for", status=502)
            return response.headers, body, size
        if response.status_code != 200:
            status = 503 if response.status_code == 503 else 502
            raise Unavailable(f"{where} answered {response.status_code}: {_message(body)}", status=status)
        return response.headers, body, None

    def _measure(self, url: str, size: int, seconds: float) -> None:
        """Count a response of `size` bytes that took `seconds` towards the speed of `url`."""
        with self._lock:
            gathered = self._gathered.get(url, (0, 0.0))
            if size >= SAMPLE:
                self._gathered[url] = None
            elif gathered is None:
                return
            else:
                size, seconds = gathered[0] + size, gathered[1] + seconds
                self._gathered[url] = (0, 0.0) if size >= SAMPLE else (size, seconds)
                if size < SAMPLE:
                    return
            speed = size / max(seconds, 1e-6)
            self._speeds[url] = (self._speeds.get(url, speed) + speed) / 2

    def _fetch(self, job: _Pending) -> None:
        """Fetch one chunk for `job.fetched`: whole, or `job.blocks` first (into
        `job.early`), then the rest on a thread of `rests`."""
        root, path, meta, url = job.source
        nchunk = job.key[3]
        limit = chunk_nbytes(meta, nchunk) + blosc2.MAX_OVERHEAD
        # The manifest first (once per version): _finish then checks at once.
        self._digests(job.source)
        if job.blocks is None or job.early is None:
            with self._in_foreground(url):
                headers, data, _ = self._get(root, url, f"chunk/{quote(path)}", limit, nchunk=nchunk)
            self._finish(job, headers, data, len(data))
            return
        headers, data, pieces = self._first_parts(job, limit)
        if not pieces:
            self._finish(job, headers, data, len(data))
            return

        # Bounded: wait while this many bytes of chunks wait for their rests.
        def room() -> bool:
            return self._closing.is_set() or not self._partial or self._partial + len(data) <= REST_BACKLOG

        with self._backlog:
            self._backlog.wait_for(room)
            if self._closing.is_set():
                raise _stopping()
            self._partial += len(data)
        rest = partial(self._rest, job, limit, headers, data, pieces)
        _run(self.rests, job.fetched, rest, lambda: self._off_backlogs(rested=len(data)))

    def _first_parts(self, job: _Pending, limit: int) -> tuple[Any, bytes | bytearray, list[tuple[int, int]]]:
        """Fetch what decoding `job.blocks` of a chunk needs, and set it into `job.early`
        (the chunk, its other bytes zeros). Return the response's headers, the chunk,
        and the byte ranges still to fetch (none if the whole chunk came)."""
        root, path, meta, url = job.source
        nchunk, blocks, early = job.key[3], job.blocks, job.early
        endpoint, blocks_text = f"chunk/{quote(path)}", f"{blocks.start}-{blocks.stop - 1}"
        with self._in_foreground(url):
            headers, body, _ = self._get(root, url, endpoint, limit, nchunk=nchunk, blocks=blocks_text)
        if PARTS not in headers:
            return headers, body, []
        if headers.get(ETAG) != meta["etag"]:
            raise _changing(root, path)
        parts = parse_parts(headers[PARTS])
        if parts is None or parts[1] > limit or sum(b - a for a, b in parts[0]) != len(body):
            raise _damaged(job)
        spans, size = parts
        data = bytearray(size)
        view = memoryview(body)
        for start, stop in spans:
            data[start:stop], view = view[: stop - start], view[stop - start :]
        # Its header and block offsets came first: checked before its blocks are
        # decoded (the whole chunk is checked again once its rest is in).
        _check(job, data)
        # Early only if what came holds all that decoding the blocks reads:
        # Blosc2 would decode missing (zero) bytes as zeros, without a word.
        needed = block_parts(data, blocks, chunk_nbytes(meta, nchunk))
        if needed is not None and all(any(a <= c and d <= b for a, b in spans) for c, d in needed):
            early.set_result(data)
        gap_pieces = (range(a, b, REST_PIECE) for a, b in gaps(spans, size))
        return headers, data, [(a, min(a + REST_PIECE, r.stop)) for r in gap_pieces for a in r]

    def _rest(
        self, job: _Pending, limit: int, headers: Any, data: bytearray, pieces: list[tuple[int, int]]
    ) -> None:
        """Fetch byte ranges `pieces` of a chunk that came in part, then finish it."""
        root, path, _, url = job.source
        nchunk = job.key[3]
        size = len(data)
        received = size - sum(stop - start for start, stop in pieces)
        chunk: bytes | bytearray = data
        try:
            for start, stop in pieces:
                with self._rest_piece(url):
                    if self._closing.is_set():
                        raise _stopping()
                    more, part, whole = self._get(
                        root, url, f"chunk/{quote(path)}", limit, (start, stop), nchunk=nchunk
                    )
                received += len(part)
                if more.get(ETAG) != headers.get(ETAG) or whole not in (size, None):
                    raise _changing(root, path)
                if whole is None:
                    # The whole chunk came this time.
                    headers, chunk = more, part
                    break
                data[start:stop] = part
        finally:
            self._off_backlogs(rested=size)
        self._finish(job, headers, chunk, received)

    def _off_backlogs(self, *, written: int = 0, rested: int = 0) -> None:
        """Take bytes that no longer wait to be written (`written`) or for their rests
        (`rested`) off the backlogs."""
        with self._backlog:
            self._writing -= written
            self._partial -= rested
            self._backlog.notify_all()

    def _finish(self, job: _Pending, headers: Any, data: bytes | bytearray, received: int) -> None:
        """Check a chunk that came whole, hand its writing to the cache writer, and
        set it into `job.fetched`."""
        root, path, meta, _ = job.source
        if headers.get(ETAG) != meta["etag"]:
            raise _changing(root, path)
        _check(job, data)
        digest = storage.chunk_digest(data)
        # The manifest's digest where there is one: the header is the publisher's
        # word only, which an impostor's would give for its own bytes.
        manifest = self._digests(job.source)
        sent = headers.get(DIGEST) if manifest is None else manifest[job.key[3]]
        if sent is not None and sent != digest:
            raise _damaged(job)
        self.count(f"{root}/{path}", fetched_chunks=1, fetched_bytes=received)
        # Bounded write-behind: wait while the writer is this far behind.
        with self._backlog:
            self._backlog.wait_for(lambda: not self._writing or self._writing + len(data) <= WRITE_BEHIND)
            self._writing += len(data)
        try:
            self.writer.submit(self._store, job, data, digest)
        except RuntimeError:
            # The writer was shut down: the subscriber is stopping.
            self._off_backlogs(written=len(data))
            raise _stopping() from None
        job.fetched.set_result(data)

    def _in_foreground(self, url: str) -> contextlib.AbstractContextManager[None]:
        return self._under_way(url, self._foreground)

    def _rest_piece(self, url: str) -> contextlib.AbstractContextManager[None]:
        """Wait until nothing else is fetched from publisher `url`, then hold it for
        one piece of a rest."""
        return self._under_way(url, self._resting, quiet=True)

    @contextlib.contextmanager
    def _under_way(self, url: str, requests: Counter[str], quiet: bool = False) -> Iterator[None]:
        """Count a request to publisher `url` in `requests` while it is under way,
        once nothing else is if `quiet`."""
        with self._quiet:
            if quiet:
                self._quiet.wait_for(lambda: not self._foreground[url] and not self._resting[url])
            requests[url] += 1
        try:
            yield
        finally:
            with self._quiet:
                requests[url] -= 1
                self._quiet.notify_all()

    def _store(self, job: _Pending, data: bytes | bytearray, digest: str) -> None:
        root, path, meta, _ = job.source
        key, nchunk, stored = job.key, job.key[3], job.stored
        try:
            if not self.cache.store_chunk(root, path, meta, nchunk, data, digest, job.source.url):
                raise _changing(root, path)
        except BaseException as exc:
            if isinstance(exc, InsufficientStorage):
                log.warning("cannot store chunk %d of %s/%s in the cache: %s", nchunk, root, path, exc)
            elif not isinstance(exc, CatmqttError):
                log.exception("cannot store chunk %d of %s/%s in the cache", nchunk, root, path)
            stored.set_exception(exc)
        else:
            stored.set_result(None)
        finally:
            self._forget(key)
            self._off_backlogs(written=len(data))

    def manifest(self, root: str, path: str, meta: dict[str, Any], url: str) -> list[str]:
        """Return the chunk digests of version ``meta["etag"]`` of a dataset, from its publisher."""
        try:
            limit = 64 * meta["nchunks"] + 4096
            manifest = json.loads(self._get(root, url, f"manifest/{quote(path)}", limit)[1])
        except ValueError:
            manifest = None
        digests = manifest.get("digests") if isinstance(manifest, dict) else None
        if not isinstance(digests, list) or manifest.get("etag") != meta["etag"]:
            raise _changing(root, path)
        digests = [str(d) for d in digests]
        # The announcement names the manifest's digest: the publisher's word
        # (its signature, where it signs) for every chunk.
        if "manifest" in meta and (
            len(digests) != meta["nchunks"] or storage.manifest_digest(digests) != meta["manifest"]
        ):
            raise Unavailable(
                f"publisher of root {root!r} at {url} sent a manifest of {path!r} that its announcement"
                " does not vouch for",
                status=502,
            )
        return digests

    def _digests(self, source: Source) -> list[str] | None:
        """Return the digest of every chunk of a dataset version that names its
        manifest (fetched once, and kept a while); None for one that does not."""
        root, path, meta, url = source
        if "manifest" not in meta:
            return None
        key = (root, path, meta["etag"], meta["manifest"])
        with self._lock:
            known = self._manifests.get(key)
            mine = known is None
            if mine:
                known = self._manifests[key] = Future()
            self._manifests.move_to_end(key)
        if mine:
            try:
                known.set_result(self.manifest(root, path, meta, url))
            except BaseException as exc:
                known.set_exception(exc)
            with self._lock:
                if known.exception() is not None:
                    self._manifests.pop(key, None)
                # The least recently used go first, past MANIFEST_DIGESTS digests in all.
                while sum(len(f.result()) for f in self._done_manifests()) > MANIFEST_DIGESTS:
                    del self._manifests[next(k for k, f in self._manifests.items() if f.done())]
        return known.result()

    def _done_manifests(self) -> list[Future]:
        return [f for f in self._manifests.values() if f.done() and f.exception() is None]


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
            fetched.set_exception(_stopping())

    try:
        task = executor.submit(run)
    except RuntimeError:
        stopped()
        return
    task.add_done_callback(lambda task: stopped() if task.cancelled() else None)


class Source(NamedTuple):
    """A version of a dataset (its metadata) and the publisher to fetch its chunks from."""

    root: str
    path: str
    meta: dict[str, Any]
    url: str


@dataclass(frozen=True)
class _Pending:
    """A chunk on its way (`key`: root, path, etag, chunk number, and the digest of the
    manifest that vouches for it, else the publisher's URL; from `source`): its checked
    bytes (`fetched`), then its write to the cache (`stored`); when fetched in parts,
    the bytes of `blocks` come first (`early`)."""

    source: Source
    key: tuple
    fetched: Future
    stored: Future
    early: Future | None = None
    blocks: range | None = None

    def first(self, blocks: range | None) -> Future:
        """Return what to wait for to have `blocks` of the chunk (None: all of it)."""
        if blocks is None or self.early is None or self.blocks is None or self.fetched.done():
            return self.fetched
        within = self.blocks.start <= blocks.start and blocks.stop <= self.blocks.stop
        return self.early if within else self.fetched


def _stopping() -> Unavailable:
    return Unavailable("the subscriber is stopping", status=503)


def _damaged(job: _Pending) -> Unavailable:
    root, path, _, url = job.source
    return Unavailable(
        f"publisher of root {root!r} at {url} sent a damaged chunk {job.key[3]} of {path!r}", status=502
    )


def _check(job: _Pending, data: bytes | bytearray) -> None:
    """Refuse a chunk that is not what its dataset's metadata says, before
    anything decodes or caches it."""
    root, path, meta, url = job.source
    problem = chunk_problem(data, meta, job.key[3])
    if problem is not None:
        log.warning("refusing chunk %d of %s/%s from %s: %s", job.key[3], root, path, url, problem)
        raise Unavailable(
            f"publisher of root {root!r} at {url} sent a chunk {job.key[3]} of {path!r} that its"
            f" metadata rules out: {problem}",
            status=502,
        )


def _changing(root: str, path: str) -> Changed:
    return Changed(f"{root}/{path}", f"{root}/{path} is changing at its publisher; try again")


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")
