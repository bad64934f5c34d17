"""This module holds the subscriber's cache: a SQLite index (WAL, see `index`)
of roots (`catalogue`), datasets and chunks, and one sparse Blosc2 container
per dataset (`chunks`). `Cache` keeps the datasets' metadata and applies what
announcements change across the parts.

A chunk is written to its container before its index row is committed, so a
crash may leave an unindexed chunk (fetched again later) but never an index
row without its chunk: the index never names a chunk that is not whole on
disk. Chunks are indexed with the etag of their version: when a dataset
changes, readers of the new version never see the old chunks, and those its
new manifest confirms are kept (`remap`).

With a budget (`start_eviction`), the ``eviction`` thread (`eviction`)
keeps the chunks within it, and the cache writer makes room (`Evictor.room`)
before it stores a chunk.

Threads: the MQTT thread records roots (`set_root`) and the ``updates``
worker alone changes datasets (`set_dataset`, which reads then writes,
`remap`, `drop_chunks`); HTTP and builder threads read metadata
(`dataset`, `datasets`); see `chunks` for the chunk operations.

Locks, always in this order: a dataset's ``Slot.lock`` (see `chunks`), then
``Index.lock``, which guards the connection and all in-memory state
(``Cache._metas``, ``Catalogue._roots``, ``Chunks._slots``, ``Accesses``) and
is never held while waiting for a ``Slot.lock``. `set_root` takes
``Index.lock`` alone: its transaction forgets chunk rows and records the
root's new URL together, and `Chunks.store_chunk` checks that URL and writes
its row under the same lock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import NotFound
from ..schema import DatasetMeta, RootInfo, has_manifest
from .catalogue import Catalogue
from .chunks import Chunks, same_layout, version
from .eviction import Evictor
from .index import Index


class Usage(NamedTuple):
    """How much the cache holds: the bytes of its indexed chunks, its budget (None
    without one) and how many chunks were evicted since it opened."""

    bytes: int
    limit: int | None
    evictions: int


class Cache:
    """The cache under a state directory: its roots (`catalogue`), its datasets
    and their chunks (`chunks`); `open` opens it.

    The chunk operations the fetcher, reader and answers use are `chunks`'
    own, offered here too so that they hold one object.
    """

    def __init__(self, index: Index, catalogue: Catalogue) -> None:
        self.index = index
        self.catalogue = catalogue
        self.chunks = Chunks(index, catalogue)
        self.accesses = self.chunks.accesses
        self.evictor: Evictor | None = None
        # What every request reads, kept in memory (under index.lock): the index is written through.
        self._metas: dict[tuple[str, str], DatasetMeta] = {}

    @classmethod
    def open(cls, statedir: str | Path) -> Cache:
        """Open the cache under `statedir` (its index; containers open on first use)."""
        index = Index.open(statedir)
        try:
            return cls(index, Catalogue.load(index))
        except BaseException:
            index.close()
            raise

    @property
    def dir(self) -> Path:
        """The state directory."""
        return self.index.dir

    def start_eviction(self, budget: int | None, min_free: int) -> None:
        """Keep the cached chunks within `budget` bytes (None: no limit) and `min_free`
        bytes free on the state directory's file system, on a thread of their own."""
        self.evictor = Evictor(self.chunks, self.dataset, budget, min_free)
        self.evictor.start()

    def usage(self) -> Usage:
        """Return how much the cache holds (cheap: no scan of the index)."""
        evictor = self.evictor
        if evictor is None:
            return Usage(self.chunks.usage(), None, 0)
        return Usage(self.chunks.usage(), evictor.budget, evictor.evictions)

    def close(self) -> None:
        if self.evictor is not None:
            self.evictor.close()
        with self.index.lock:
            self.accesses.flush()
            self.index.close()

    def set_root(self, name: str, info: RootInfo | None) -> list[str]:
        """Record the announcement of root `name`; None forgets the root.

        A root served from another URL than before forgets, at once, the cached
        chunks of its datasets that no manifest vouches for: they came from the
        other publisher (`store_chunk` stores no more of them). Returns the
        paths of those datasets.

        The chunks' rows and the root's row change in one transaction, and the
        catalogue's new URL is in memory before ``index.lock`` is let go:
        `store_chunk` checks the URL and writes its row under that lock, so a
        chunk from the old URL is either deleted here or refused there.
        """
        moved: list[str] = []
        with self.index.transaction() as db:
            url = self.catalogue.url(name)
            if info is not None and url is not None and url != info["url"]:
                rows = db.execute("SELECT path, meta FROM datasets WHERE root=?", (name,)).fetchall()
                moved = [path for path, meta in rows if not has_manifest(json.loads(meta))]
                db.executemany("DELETE FROM chunks WHERE root=? AND path=?", [(name, p) for p in moved])
            self.catalogue.record_root(db, name, info)
        return moved

    def set_dataset(self, root: str, path: str, meta: DatasetMeta | None) -> DatasetMeta | None:
        """Record the metadata of a dataset (None: it is gone, and so are its chunks).

        When a dataset's etag changes and its chunk layout stays, its old
        chunks stay in the index under the old etag, invisible to readers of
        the new version, and the old metadata is returned: the caller then
        keeps what the new manifest confirms (`remap`) or drops them
        (`drop_chunks`). Otherwise the old chunks are dropped at once and None
        is returned.

        A version is the etag and the manifest's digest: the same etag with
        another manifest (an impostor's announcement, or the genuine one after
        it) drops the chunks, which were checked against the other manifest.
        """
        rows = self.index.query("SELECT etag, meta FROM datasets WHERE root=? AND path=?", (root, path))
        old_etag, old_meta = (rows[0][0], json.loads(rows[0][1])) if rows else (None, None)
        new_etag = None if meta is None else meta["etag"]
        same = None if old_meta is None or meta is None else version(old_meta) == version(meta)
        if old_etag == new_etag and same is not False:
            if meta is not None and meta != old_meta:
                with self.index.transaction() as db:
                    db.execute(
                        "UPDATE datasets SET meta=? WHERE root=? AND path=?", (json.dumps(meta), root, path)
                    )
                    self._metas[(root, path)] = meta
            return None
        keep = old_etag != new_etag and same is not None and same_layout(old_meta, meta)
        slot = self.chunks.slot(root, path)
        with slot.lock:
            with self.index.transaction() as db:
                if meta is None:
                    db.execute("DELETE FROM datasets WHERE root=? AND path=?", (root, path))
                    self._metas.pop((root, path), None)
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO datasets VALUES (?, ?, ?, ?)",
                        (root, path, new_etag, json.dumps(meta)),
                    )
                    self._metas[(root, path)] = meta
            slot.version = "" if meta is None else version(meta)
            # The open container is of the old version: never read or write it again.
            slot.handle = None
            if not keep:
                self.chunks.forget(root, path, slot)
        return old_meta if keep else None

    def datasets(self, root: str) -> list[str]:
        """Return the sorted paths of the datasets of `root`."""
        return [
            r[0] for r in self.index.query("SELECT path FROM datasets WHERE root=? ORDER BY path", (root,))
        ]

    def dataset(self, root: str, path: str) -> DatasetMeta:
        """Return the metadata of a dataset (not to be modified), or raise NotFound."""
        meta = self._metas.get((root, path))
        if meta is None:
            # Under the lock, so that a concurrent set_dataset cannot be undone here.
            with self.index.lock:
                meta = self._metas.get((root, path))
                if meta is None:
                    rows = self.index.query("SELECT meta FROM datasets WHERE root=? AND path=?", (root, path))
                    if not rows:
                        raise NotFound(f"no dataset {path!r} in root {root!r}")
                    meta = self._metas[(root, path)] = json.loads(rows[0][0])
        return meta

    def cached_chunks(self, root: str, path: str, meta: DatasetMeta, wanted: Iterable[int]) -> set[int]:
        """See `Chunks.cached_chunks`."""
        return self.chunks.cached_chunks(root, path, meta, wanted)

    def store_chunk(
        self, root: str, path: str, meta: DatasetMeta, nchunk: int, data: bytes, digest: str, url: str
    ) -> bool:
        """See `Chunks.store_chunk`; with a budget, room is made first (see `Evictor.room`)."""
        if self.evictor is not None:
            self.evictor.room(len(data), f"chunk {nchunk} of {root}/{path}")
        return self.chunks.store_chunk(root, path, meta, nchunk, data, digest, url)

    def read_chunk(self, root: str, path: str, meta: DatasetMeta, nchunk: int) -> bytes | None:
        """See `Chunks.read_chunk`."""
        return self.chunks.read_chunk(root, path, meta, nchunk)

    def reading(self, root: str, path: str, meta: DatasetMeta) -> AbstractContextManager[Any]:
        """See `Chunks.reading`."""
        return self.chunks.reading(root, path, meta)

    def drop_chunks(self, root: str, path: str) -> None:
        """See `Chunks.drop_chunks`."""
        self.chunks.drop_chunks(root, path)

    def remap(self, root: str, path: str, old: DatasetMeta, new: DatasetMeta, digests: list[str]) -> int:
        """See `Chunks.remap`."""
        return self.chunks.remap(root, path, old, new, digests)

    def release(self, root: str, path: str, nchunks: Iterable[int]) -> None:
        """Give back the claims on chunks of a read that failed (see `Chunks.evict`);
        one that succeeded gives them back with `touch`."""
        with self.index.lock:
            self.chunks.claims.release(root, path, nchunks)

    def touch(self, root: str, path: str, nchunks: Iterable[int]) -> None:
        """Record that chunks were just read (see `Accesses`), and give back the
        claims on them (see `Chunks.evict`)."""
        nchunks = list(nchunks)
        self.release(root, path, nchunks)
        self.accesses.touch(root, path, nchunks)
