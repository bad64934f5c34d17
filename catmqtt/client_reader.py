"""This module reads a client's selections of a dataset from its compressed chunks.

A `Reader` serves one `client.Client`: it keeps the client's cache of
compressed chunks filled, fetches the chunks a selection needs that the cache
lacks, and decodes them; a small part of big chunks it has the subscriber
slice instead.

Threads and locks. Reads run on the callers' threads, any number at once. A
pool of decoder threads (``catmqtt-decode``, started on the first read of
more than two chunks) only decodes, into the result of the read that queued
the chunk. At most one thread at a time (``catmqtt-fill``) fetches chunks
read in part whole into the cache. All share the client's session and the
cache (`ChunkCache` has a lock of its own, held for no I/O);
``Reader._fill_lock`` guards the chunks read in part and the fill thread.
Neither lock is taken while the other is held.
Decoding runs with Blosc2 releasing the GIL (`assemble.release_gil`), so
that decoder threads and the network proceed at once.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from typing import TYPE_CHECKING, Any

from .arrays import decode_array
from .blocks import chunk_problem
from .chunkcache import ChunkCache, Key
from .errors import CatmqttError, TooLarge, Unavailable
from .slices import chunks_touched, format_key, result_shape, select
from .wire import (
    FRAME,
    NPY,
    OCTETS,
    TRAILER_MAX,
    format_chunk_list,
    quote_dataset,
    read_error_trailer,
    read_frames,
)

if TYPE_CHECKING:
    import numpy as np

    from .schema import DatasetMeta

DECODERS = min(8, os.cpu_count() or 2)
# Chunks read in part (sliced by the subscriber) remembered, so that those read
# again are fetched whole.
IN_PART_MAX = 4096
# A client without a cache has the subscriber slice selections of up to this many
# bytes, whatever part of their chunks they are: it reads them without Blosc2.
UNCACHED_SLICED_MAX = 8 << 20
# The largest answer a first read, without the metadata, reads (see `Client.fetch`):
# a larger one is read by its chunks.
FIRST_READ_BYTES = 64 << 20


class Reader:
    """Read selections of datasets from the subscriber at `urlbase`, through `request`
    (`client.Client._request`), keeping compressed chunks in `cache`; reading a
    response's body fails with `errors` when the network does."""

    def __init__(
        self,
        request: Callable[..., Any],
        urlbase: str,
        cache: ChunkCache,
        errors: tuple[type[BaseException], ...],
    ) -> None:
        self._request = request
        self._errors = errors
        self.urlbase = urlbase
        self.chunk_cache = cache
        self._decoders: ThreadPoolExecutor | None = None
        self._fill_lock = threading.Lock()
        self._in_part: OrderedDict[Key, None] = OrderedDict()
        self._filler: threading.Thread | None = None

    def close(self) -> None:
        if self._decoders is not None:
            self._decoders.shutdown()

    def read(self, dataset: str, meta: DatasetMeta, key: tuple) -> np.ndarray | bytes:
        """Return selection `key` of `dataset`, whose metadata is `meta` (current): an
        array (of ``V<typesize>`` items, unless `meta` is an array's), or the bytes
        the subscriber sliced, unless `meta` is an array's."""
        sel = select(key, meta["shape"])
        numbers = chunks_touched(sel, meta["shape"], meta["chunks"])
        found = {n: self.chunk_cache.get((dataset, meta["etag"], n)) for n in numbers}
        cached = {n: data for n, data in found.items() if data is not None}
        missing = [n for n in numbers if n not in cached]
        # A small part of big chunks: let the subscriber slice, and send only that;
        # without a cache, a small selection (no Blosc2 needed).
        chunk_bytes = _chunk_bytes(meta)
        result_bytes = math.prod(result_shape(sel)) * meta["typesize"]
        if 4 * result_bytes < len(missing) * chunk_bytes or (
            not self.chunk_cache.budget and missing and result_bytes <= UNCACHED_SLICED_MAX
        ):
            try:
                # The selection, and room for the .npy header.
                result = self.read_sliced(dataset, key, meta, result_bytes + (1 << 20))
            except TooLarge:
                raise Unavailable(
                    f"the subscriber at {self.urlbase} sends more than {dataset}[{format_key(key)}]",
                    status=502,
                ) from None
            if not isinstance(result, bytes) and result.shape != result_shape(sel):
                raise Unavailable(
                    f"the subscriber at {self.urlbase} sent {dataset}[{format_key(key)}] of shape"
                    f" {result.shape}, where it has shape {result_shape(sel)}",
                    status=502,
                )
            self._read_in_part(dataset, meta, missing, chunk_bytes)
            return result
        # Imported only here: a first read sliced by the subscriber is quicker without.
        from .assemble import Assembler, release_gil

        release_gil()
        # Up to two chunks are decoded here, each with Blosc2's threads; more, by a
        # pool of threads as they arrive, each chunk with one.
        threaded = len(numbers) > 2
        assembler = Assembler(
            meta, sel, nthreads=1 if threaded else None, sender=f"the subscriber at {self.urlbase}"
        )
        pending: list[Future] = []

        def add(n: int, data: bytes) -> None:
            if not threaded:
                assembler.add(n, data)
                return
            pending.append(self._decoder().submit(assembler.add, n, data))
            # Bound the compressed bytes waiting to be decoded.
            while len(pending) > 4 * DECODERS:
                pending.pop(0).result()

        for n, data in cached.items():
            add(n, data)
        for batch in _batches(missing):
            # Closed at once if a chunk is refused, and its response with it.
            with closing(self._chunks(dataset, meta, batch)) as chunks:
                for n, data in chunks:
                    self._keep(dataset, meta, n, data)
                    add(n, data)
        for future in pending:
            future.result()
        return assembler.result()

    def read_before(self, dataset: str, meta: DatasetMeta, key: tuple) -> None:
        """Note that selection `key` of `dataset`, whose metadata is `meta`, was read
        sliced by the subscriber before that metadata was known (see `Client.fetch`)."""
        try:
            sel = select(key, meta["shape"])
        except CatmqttError:
            return
        numbers = chunks_touched(sel, meta["shape"], meta["chunks"])
        missing = [n for n in numbers if (dataset, meta["etag"], n) not in self.chunk_cache]
        self._read_in_part(dataset, meta, missing, _chunk_bytes(meta))

    def chunks(self, dataset: str, meta: DatasetMeta, numbers: list[int]) -> Iterator[tuple[int, bytes]]:
        """Yield (number, bytes) of chunks `numbers` of `dataset`, as the subscriber sends
        them, asking for a few hundred at a time at most."""
        for batch in _batches(numbers):
            with closing(self._chunks(dataset, meta, batch)) as chunks:
                yield from chunks

    def _chunks(self, dataset: str, meta: DatasetMeta, numbers: list[int]) -> Iterator[tuple[int, bytes]]:
        """Yield (number, bytes) of chunks `numbers` of `dataset`, as the subscriber sends them."""
        sender = f"the subscriber at {self.urlbase}"
        params = {"nchunks": format_chunk_list(numbers), "etag": meta["etag"]}
        with self._request("GET", f"chunks/{quote_dataset(dataset)}", params=params, stream=True) as response:

            def read(size: int) -> bytes:
                try:
                    return response.raw.read(size)
                except self._errors:
                    raise Unavailable(f"the transfer from {sender} was cut off") from None

            yield from read_frames(read, sender)

    def _keep(self, dataset: str, meta: DatasetMeta, nchunk: int, data: bytes) -> None:
        """Cache a chunk, if it passes the checks any chunk passes before it is decoded."""
        if self.chunk_cache.budget and chunk_problem(data, meta, nchunk) is None:
            self.chunk_cache.put((dataset, meta["etag"], nchunk), data)

    def _read_in_part(self, dataset: str, meta: DatasetMeta, numbers: list[int], chunk_bytes: float) -> None:
        """Note that chunks `numbers` were read in part; fetch those read so before
        whole into the cache, in the background, unless a fetch of that kind runs.

        Reading a chunk in part again hints that it will be read once more. A
        chunk read once is not fetched whole: a scan in small slices would
        fetch every chunk twice, and slow down its own next reads.
        """
        budget = self.chunk_cache.budget
        if not budget:
            return
        with self._fill_lock:
            again = []
            for n in numbers:
                key = (dataset, meta["etag"], n)
                if key in self._in_part:
                    del self._in_part[key]
                    again.append(n)
                    continue
                self._in_part[key] = None
                if len(self._in_part) > IN_PART_MAX:
                    self._in_part.popitem(last=False)
            # Whole chunks of at most half the budget, one fetch at a time.
            again = again[: int(budget // (2 * max(chunk_bytes, 1)))]
            if not again or (self._filler is not None and self._filler.is_alive()):
                return
            self._filler = threading.Thread(
                target=self._fill, args=(dataset, meta, again), name="catmqtt-fill", daemon=True
            )
            self._filler.start()

    def _fill(self, dataset: str, meta: DatasetMeta, numbers: list[int]) -> None:
        """Fetch chunks `numbers` of `dataset` whole into the cache."""
        try:
            with closing(self._chunks(dataset, meta, numbers)) as chunks:
                for n, data in chunks:
                    self._keep(dataset, meta, n, data)
        except CatmqttError:
            # Changed, or cut off (the client closed): the chunks are read in part again.
            pass

    def read_sliced(
        self, dataset: str, key: tuple, meta: DatasetMeta | None, limit: int = FIRST_READ_BYTES
    ) -> np.ndarray | bytes:
        """Return selection `key` of `dataset`, sliced by the subscriber, in one request:
        an array as .npy, anything else as its bytes. `meta`, if known, says which
        of the two the answer must be. An answer over `limit` bytes is not read:
        TooLarge."""
        params = {"slice": format_key(key)}
        sender = f"the subscriber at {self.urlbase}"
        cut = f"the transfer of {dataset} from {self.urlbase} was cut off"
        endpoint = f"fetch/{quote_dataset(dataset)}"
        with self._request("GET", endpoint, params=params, headers={"Accept": NPY}, stream=True) as response:
            kind = response.headers.get("Content-Type", "").partition(";")[0].strip()
            if kind not in (NPY, OCTETS):
                raise Unavailable(f"{sender} sent {kind[:60] or 'no media type'} for {dataset}", status=502)
            content = _content(response, cut, limit, self._errors)
        array = kind == NPY
        if meta is not None and array != (meta["kind"] == "ndarray"):
            raise Unavailable(
                f"{sender} sent {'an array' if array else 'bytes'} for {dataset}, a {meta['kind']}",
                status=502,
            )
        if not array:
            return content
        try:
            result = decode_array(content, npy=True)
        except ValueError as exc:
            raise Unavailable(
                f"{sender} sent {dataset}[{format_key(key)}] as no array: {exc}", status=502
            ) from None
        if meta is None and not _may_select(result.shape, key):
            raise Unavailable(
                f"{sender} sent {dataset}[{format_key(key)}] of shape {result.shape}, which it cannot select",
                status=502,
            )
        return result

    def _decoder(self) -> ThreadPoolExecutor:
        if self._decoders is None:
            self._decoders = ThreadPoolExecutor(DECODERS, thread_name_prefix="catmqtt-decode")
        return self._decoders


def _chunk_bytes(meta: DatasetMeta) -> float:
    """Return the mean compressed size of the chunks of a dataset."""
    return meta.get("cbytes", meta["nbytes"]) / max(meta["nchunks"], 1)


def _batches(numbers: list[int]) -> Iterator[list[int]]:
    """Split chunk numbers into requests whose query stays short."""
    batch: list[int] = []
    for n in numbers:
        batch.append(n)
        if len(batch) >= 512 and len(format_chunk_list(batch)) > 2000:
            yield batch
            batch = []
    if batch:
        yield batch


def _content(response: Any, cut: str, limit: int, errors: tuple[type[BaseException], ...]) -> bytes:
    """Return the whole body of a streamed response, at most `limit` bytes (TooLarge
    past them, said by its Content-Length or found reading it).

    A body cut short (reading it raises one of `errors`) raises the error the
    server ended it with (see `wire.error_trailer`), else Unavailable(`cut`).
    """
    too_large = TooLarge(f"{cut.replace('was cut off', 'is')} over {limit} bytes")
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    parts: list[bytes] = []
    size = 0
    try:
        # read1, not read: read loses what it holds when the body proves short.
        while part := response.raw.read1(1 << 20):
            parts.append(part)
            size += len(part)
            if size > limit:
                raise too_large
    except errors:
        raise read_error_trailer(_tail(parts, TRAILER_MAX + FRAME.size)) or Unavailable(cut) from None
    return b"".join(parts)


def _may_select(shape: tuple[int, ...], key: tuple) -> bool:
    """Tell whether an array of `shape` may be what `key`, a selection bounded along
    the axes it names (see `slices.items_at_most`), selects of some dataset: at
    least an axis for each slice, none longer than its slice."""
    kept = [item for item in key if isinstance(item, slice)]
    if len(shape) < len(kept):
        return False
    return all(n <= len(range(s.start or 0, s.stop, s.step or 1)) for n, s in zip(shape, kept, strict=False))


def _tail(parts: list[bytes], size: int) -> bytes:
    """Return the last `size` bytes of the concatenation of `parts`."""
    last: list[bytes] = []
    total = 0
    for part in reversed(parts):
        last.append(part)
        total += len(part)
        if total >= size:
            break
    return b"".join(reversed(last))[-size:]
