"""This module builds the subscriber's large answers: selections over `PIECE`
bytes and whole downloads, within the budget they share (see `large`).

A ``.npy`` (or byte) answer is streamed piece by piece from a builder
thread; a Blosc2 answer or a download is built whole in a temporary file
first, so that a failure gets an error status rather than a body cut short.

Threads: HTTP threads start answers; builder threads build them and read
through the `Reader`; the temporary directory is written only here (one file
per answer, unlinked as soon as it is open).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc2
import numpy as np

from .. import storage
from ..arrays import npy_header
from ..dtypes import dtype_from_json
from ..errors import Changed, InsufficientStorage
from ..web import BY_REFERENCE, cut_on_failure
from .flights import Upstream
from .large import BUILD_MEMORY, STREAM_MEMORY, STREAM_PIECE, Budget, Builders, Grant, Stream, TempFile
from .reader import Reader, Target


@dataclass(frozen=True)
class Answers:
    """Large answers, built on `builders` within `budget`, their files in `tmpdir`."""

    reader: Reader
    budget: Budget
    builders: Builders
    tmpdir: Path

    def stats(self) -> dict[str, Any]:
        return self.budget.stats()

    def stream(self, target: Target, npy: bool) -> tuple[Body, int]:
        """Return the body of a large selection and its length: ``.npy`` if `npy` and
        an array, else its bytes; built on a builder thread, piece by piece.

        Every chunk it needs is cached before this returns, so that a failure
        to fetch one gets an error status; a failure after that ends the body
        short, with the error (see `Body`).
        """
        grant = self.budget.enter(STREAM_MEMORY)
        try:
            self.builders.run(self.reader.cache_all, target)
        except BaseException:
            grant.release()
            raise
        header = b""
        if npy and target.source.meta["kind"] == "ndarray":
            header = npy_header(dtype_from_json(target.source.meta["dtype"]), target.shape)
        pieces = self.builders.stream(_as_piece(slab) for slab in self.reader.slabs(target, STREAM_PIECE))
        body = Body(header, pieces, grant, target.fullpath, self.reader.cache.dir)
        return body, len(header) + target.nbytes

    def cframe(self, target: Target) -> TempFile:
        """Return a large selection of an array as a Blosc2 file, whole before anything is sent.

        The whole array is its cached chunks as they are; a part is compressed anew.
        """
        meta = target.source.meta
        if all(s == range(n) for s, n in zip(target.sel, meta["shape"], strict=True)):
            return self.whole_file(target.source)
        dtype = dtype_from_json(meta["dtype"])

        def write(tmp: Path) -> None:
            self.reader.cache_all(target)
            out = blosc2.empty(target.shape, dtype=dtype, urlpath=str(tmp), contiguous=True, mode="w")
            row = 0
            for slab in self.reader.slabs(target):
                out[row : row + len(slab)] = np.ascontiguousarray(slab)
                row += len(slab)

        # Blosc2 stores what does not compress as it is, plus a little.
        grant = self.budget.enter(BUILD_MEMORY, target.nbytes + target.nbytes // 256 + (1 << 20))
        return self._temp_file(grant, ".b2nd", write)

    def download(self, fullpath: str) -> tuple[TempFile, str]:
        """Return an open, already unlinked file with the whole dataset, and its name."""
        source = self.reader.lookup(fullpath)
        return self.whole_file(source), source.path.rsplit("/", 1)[-1]

    def whole_file(self, source: Upstream, *, thread: bool = True) -> TempFile:
        """Return a dataset as one file (the plain file's bytes, or contiguous Blosc2), whole
        (without `thread`, for a caller that holds an HTTP thread of the budget)."""
        root, path, meta, _ = source
        numbers = list(range(meta["nchunks"]))
        cache = self.reader.cache

        def write(tmp: Path) -> None:
            self.reader.follower.settled(root, path)
            self.reader.fetcher.ensure(source, numbers)
            with cache.reading(root, path, meta) as handle:
                if handle is None:
                    raise Changed(f"{root}/{path}")
                storage.write_whole(handle, meta, tmp)
            cache.touch(root, path, numbers)

        size = meta["nbytes"] if meta["kind"] == "file" else meta["cbytes"]
        limit = cache.usage().limit
        if meta["kind"] != "file" and limit is not None and size > limit:
            raise InsufficientStorage(
                f"{root}/{path} takes {size} bytes in the cache, more than its budget of {limit} bytes"
                " (subscriber.cache_size, --cache-size), and a whole download is made from the cache:"
                " read it in slices, or download it with a progress bar (catmqtt download on a"
                " terminal, download(..., progress=True)), which puts it together from its chunks"
            )
        grant = self.budget.enter(BUILD_MEMORY, size + (1 << 20), thread=thread)
        return self._temp_file(grant, os.path.splitext(path)[1], write)

    def _temp_file(self, grant: Grant, suffix: str, write: Callable[[Path], None]) -> TempFile:
        """Have `write` make a file in the tmp directory on a builder thread; return it
        open and already unlinked, `grant` holding its size of disk until it is closed."""
        fd, name = tempfile.mkstemp(dir=self.tmpdir, suffix=suffix)
        os.close(fd)
        tmp = Path(name)
        try:
            self.builders.build(write, tmp)
            file = TempFile(tmp, grant, self.builders.closer)
        except BaseException:
            grant.release()
            raise
        finally:
            tmp.unlink()
        grant.keep_only_disk(os.fstat(file.fileno()).st_size)
        return file


def _as_piece(slab: np.ndarray | bytes) -> bytes | memoryview:
    """Return a slab's bytes: a large one as a view (it is sent from where it is), not a copy."""
    if isinstance(slab, bytes):
        return slab
    view = memoryview(np.ascontiguousarray(slab)).cast("B")
    return view if len(view) >= BY_REFERENCE else view.tobytes()


@dataclass
class Body:
    """The body of a large answer: a header, then pieces made on a builder thread,
    ended by its error if one fails (see `web.cut_on_failure`). Closing it
    (waitress does, sent or not) stops the builder and gives back the grant.
    """

    header: bytes
    pieces: Stream
    grant: Grant
    fullpath: str
    statedir: Path

    def __iter__(self) -> Iterator[bytes | memoryview]:
        if self.header:
            yield self.header
        yield from cut_on_failure(self.pieces, self.statedir, f"the answer for {self.fullpath}")

    def close(self) -> None:
        try:
            self.pieces.close()
        finally:
            self.grant.release()
