"""This module fetches chunks and manifests from publishers into the cache.

Missing chunks are fetched concurrently over one pooled keep-alive session,
each only once even when many clients ask for it at the same time, and each
checked against the digest its publisher sent before it is stored.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from typing import Any
from urllib.parse import quote

import blosc2
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from . import storage
from .cache import Cache
from .errors import Changed, Unavailable
from .wire import DIGEST, ETAG

CONNECT_TIMEOUT = 5.0
STATS = ("fetched_chunks", "fetched_bytes", "cache_hits", "kept_on_change")


class Fetcher:
    """Fetches what the cache lacks from publishers, and counts what it does."""

    def __init__(self, cache: Cache, workers: int, timeout: float) -> None:
        self.cache = cache
        self.timeout = (CONNECT_TIMEOUT, timeout)
        self.session = requests.Session()
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
        # One connection per worker, and one for manifests.
        adapter = HTTPAdapter(pool_connections=16, pool_maxsize=workers + 1, max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="fetch")
        self._inflight: dict[tuple, Future] = {}
        self._lock = threading.RLock()
        self._stats: dict[str, Counter] = defaultdict(Counter)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
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

    def ensure(self, root: str, path: str, meta: dict[str, Any], url: str, numbers: list[int]) -> None:
        """Make sure chunks `numbers` of a dataset are cached, fetching the missing ones."""
        _, futures = self._start(root, path, meta, url, numbers)
        wait(futures)
        for future in futures:
            if future.exception() is not None:
                raise future.exception()

    def stream(
        self, root: str, path: str, meta: dict[str, Any], url: str, numbers: list[int]
    ) -> Iterator[tuple[int, bytes]]:
        """Yield (number, compressed bytes) of chunks `numbers`: cached ones first, the
        others as they arrive from the publisher. Raises Changed if the dataset changes."""
        cached, futures = self._start(root, path, meta, url, numbers)
        for n in sorted(cached):
            yield n, self._read(root, path, meta, n)
        for future in as_completed(futures):
            if future.exception() is not None:
                raise future.exception()
            n = futures[future]
            yield n, self._read(root, path, meta, n)

    def _read(self, root: str, path: str, meta: dict[str, Any], nchunk: int) -> bytes:
        data = self.cache.read_chunk(root, path, meta, nchunk)
        if data is None:
            raise Changed(f"{root}/{path} changed while being read; read its metadata again")
        return data

    def _start(
        self, root: str, path: str, meta: dict[str, Any], url: str, numbers: list[int]
    ) -> tuple[set[int], dict[Future, int]]:
        """Start fetching the chunks of `numbers` that are not cached (or being fetched).

        Returns the cached chunks, and the futures of the others.
        """
        cached = self.cache.cached_chunks(root, path, meta, numbers)
        missing = [n for n in numbers if n not in cached]
        self.count(f"{root}/{path}", cache_hits=len(numbers) - len(missing))
        futures: dict[Future, int] = {}
        with self._lock:
            for n in missing:
                key = (root, path, meta["etag"], n)
                future = self._inflight.get(key)
                if future is None:
                    future = self.pool.submit(self._fetch, root, path, meta, url, n)
                    self._inflight[key] = future
                    future.add_done_callback(lambda _, key=key: self._forget(key))
                futures[future] = n
        return cached, futures

    def _forget(self, key: tuple) -> None:
        with self._lock:
            self._inflight.pop(key, None)

    def _get(self, root: str, url: str, endpoint: str, limit: int, **params: Any) -> tuple[Any, bytes]:
        """GET from a publisher: (headers, body of at most `limit` bytes). Failures become
        Unavailable (502, 503 or 504) naming the publisher."""
        where = f"publisher of root {root!r} at {url}"
        try:
            response = self.session.get(
                f"{url}/api/{endpoint}", params=params, timeout=self.timeout, stream=True
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
        if response.status_code != 200:
            status = 503 if response.status_code == 503 else 502
            raise Unavailable(f"{where} answered {response.status_code}: {_message(body)}", status=status)
        return response.headers, body

    def _fetch(self, root: str, path: str, meta: dict[str, Any], url: str, nchunk: int) -> None:
        limit = storage.chunk_nbytes(meta, nchunk) + blosc2.MAX_OVERHEAD
        headers, data = self._get(root, url, f"chunk/{quote(path)}", limit, nchunk=nchunk)
        changing = Unavailable(f"{root}/{path} is changing at its publisher; try again", status=503)
        if headers.get(ETAG) != meta["etag"]:
            raise changing
        digest = storage.chunk_digest(data)
        sent = headers.get(DIGEST)
        if (sent is not None and sent != digest) or not storage.is_chunk(
            data, storage.chunk_nbytes(meta, nchunk)
        ):
            raise Unavailable(
                f"publisher of root {root!r} at {url} sent a damaged chunk {nchunk} of {path!r}", status=502
            )
        if not self.cache.store_chunk(root, path, meta, nchunk, data, digest):
            raise changing
        self.count(f"{root}/{path}", fetched_chunks=1, fetched_bytes=len(data))

    def manifest(self, root: str, path: str, meta: dict[str, Any], url: str) -> list[str]:
        """Return the chunk digests of version ``meta["etag"]`` of a dataset, from its publisher."""
        try:
            limit = 64 * meta["nchunks"] + 4096
            manifest = json.loads(self._get(root, url, f"manifest/{quote(path)}", limit)[1])
        except ValueError:
            manifest = None
        digests = manifest.get("digests") if isinstance(manifest, dict) else None
        if not isinstance(digests, list) or manifest.get("etag") != meta["etag"]:
            raise Unavailable(f"{root}/{path} is changing at its publisher; try again", status=503)
        return [str(d) for d in digests]


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")
