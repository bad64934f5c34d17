"""This module holds the cached chunks of the subscriber's datasets: one sparse
Blosc2 container per dataset under ``<statedir>/cache``, each chunk's row in
the index (its version's etag, digest, size and last access), and the `Slot`
that guards each container.

A chunk is written to its container before its index row is committed, so a
crash may leave an unindexed chunk (fetched again later) but never an index
row without its chunk: the index never names a chunk that is not whole on
disk. Rows are deleted before their chunks, for the same reason.

A chunk is evicted (`evict`) by replacing it with a special uninitialised
chunk (``SChunk.update_special(n, SpecialValue.UNINIT)``, python-blosc2 4.8
and later): a sparse container keeps the chunk's place in its offsets and
removes its ``NNNNNNNN.chunk`` file. ``SChunk.delete_chunk`` would shift the
later chunks down. Its row is deleted (committed) first: a crash in between
leaves a chunk file no row names, harmless (overwritten when the chunk is
fetched again). A chunk being read is never evicted: `cached_chunks`, which
tells a reader what is cached, claims the chunks it is asked about, and the
reader gives them back with its access (`Cache.touch`); the eviction checks the
claims and deletes the rows under ``Index.lock``, which `cached_chunks` holds
while it claims and looks, so a reader either sees the chunk gone or has it
claimed. A read that fails to fetch gives its claims back too (`Fetcher`);
one that fails otherwise (a client gone mid-stream) lapses after `CLAIM_LEASE`.

The bytes of the indexed chunks are kept by SQLite triggers in a TEMP table
(`usage`): summed once when the cache opens, then changed with every row,
whoever adds or deletes it, and rolled back with the transaction that did.

Threads: fetch workers read chunks (`read_chunk`, `cached_chunks`) and the
cache writer stores them (`store_chunk`); HTTP and builder threads read
containers (`reading`) and record accesses (`Accesses.touch`); the
``updates`` worker changes versions, keeps or drops chunks (through `cache`).

The ``eviction`` thread evicts chunks (`lru`, `evict`).

Locks, in this order: a dataset's ``Slot.lock`` guards its container handle,
its version and its verified chunks, and is held for the container's disk
I/O; then ``Index.lock`` guards the connection, ``Chunks._slots``,
``Claims`` and ``Accesses``, and is never held while waiting for a
``Slot.lock``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blosc2

from .. import storage
from ..blocks import chunk_problem
from ..errors import InsufficientStorage
from ..schema import DatasetMeta, has_manifest
from ..slices import chunk_coords, chunk_grid, chunk_number
from .catalogue import Catalogue
from .index import Index

log = logging.getLogger(__name__)

# Seconds between writes of chunk access times to the index.
ACCESS_FLUSH = 5.0
# Seconds after which a claim on a chunk lapses: a read that failed before it
# released its claims does not keep them from eviction for ever.
CLAIM_LEASE = 600.0
# The bytes of the indexed chunks, kept by triggers (the delete trigger fires
# on INSERT OR REPLACE too, with recursive_triggers on).
_USAGE = (
    "PRAGMA recursive_triggers = ON",
    "CREATE TEMP TABLE IF NOT EXISTS usage (bytes INTEGER NOT NULL)",
    "DELETE FROM temp.usage",
    "INSERT INTO temp.usage SELECT COALESCE(SUM(nbytes), 0) FROM main.chunks",
    "CREATE TEMP TRIGGER IF NOT EXISTS chunk_added AFTER INSERT ON main.chunks"
    " BEGIN UPDATE usage SET bytes = bytes + NEW.nbytes; END",
    "CREATE TEMP TRIGGER IF NOT EXISTS chunk_removed AFTER DELETE ON main.chunks"
    " BEGIN UPDATE usage SET bytes = bytes - OLD.nbytes; END",
    "CREATE TEMP TRIGGER IF NOT EXISTS chunk_resized AFTER UPDATE OF nbytes ON main.chunks"
    " BEGIN UPDATE usage SET bytes = bytes - OLD.nbytes + NEW.nbytes; END",
)
# Whether the chunks of dataset `c` are pinned: a pin names a whole root (''),
# a directory or a dataset (compared with substr: paths may hold LIKE's wildcards).
_PIN_OF = """SELECT 1 FROM pins AS p WHERE p.root = c.root
AND (p.path = '' OR p.path = c.path OR substr(c.path, 1, length(p.path) + 1) = p.path || '/')"""
# The least recently read chunks of the current versions of datasets, but the pinned ones.
_LRU = f"""SELECT c.root, c.path, c.nchunk, c.last_access, c.nbytes FROM chunks AS c
JOIN datasets AS d ON d.root = c.root AND d.path = c.path AND d.etag = c.etag
WHERE NOT EXISTS ({_PIN_OF}) ORDER BY c.last_access LIMIT ? OFFSET ?"""
# Whether the dataset (root, path) is pinned.
_PINNED = f"SELECT 1 FROM (SELECT ? AS root, ? AS path) AS c WHERE EXISTS ({_PIN_OF})"


@dataclass
class Slot:
    """The open container of one dataset, and the lock that guards it."""

    # The version of the dataset the container holds chunks of (see `version`).
    version: str
    handle: blosc2.NDArray | blosc2.SChunk | None = None
    # Chunks whose bytes were checked against their digest since this process started.
    verified: set[int] = field(default_factory=set)
    lock: threading.RLock = field(default_factory=threading.RLock)


class Chunks:
    """The cached chunks of every dataset: their containers and their rows in the index."""

    def __init__(self, index: Index, catalogue: Catalogue) -> None:
        self.index = index
        # Asked, by store_chunk, where each root is served from.
        self.catalogue = catalogue
        self.data_dir = index.dir / "cache"
        self.accesses = Accesses(index)
        # Under index.lock, both.
        self._slots: dict[tuple[str, str], Slot] = {}
        self.claims = Claims()
        for statement in _USAGE:
            index.query(statement)

    def usage(self) -> int:
        """Return the bytes of the indexed chunks."""
        return self.index.query("SELECT bytes FROM temp.usage")[0][0]

    def slot(self, root: str, path: str) -> Slot:
        """Return the slot of a dataset, made at its recorded version on first use."""
        with self.index.lock:
            slot = self._slots.get((root, path))
            if slot is None:
                rows = self.index.query("SELECT meta FROM datasets WHERE root=? AND path=?", (root, path))
                slot = self._slots[(root, path)] = Slot(version(json.loads(rows[0][0])) if rows else "")
            return slot

    def _urlpath(self, root: str, path: str) -> Path:
        return self.data_dir / root / path

    def drop_chunks(self, root: str, path: str) -> None:
        """Forget every cached chunk of a dataset."""
        slot = self.slot(root, path)
        with slot.lock:
            self.forget(root, path, slot)

    def forget(self, root: str, path: str, slot: Slot) -> None:
        """Forget every cached chunk of a dataset whose slot is locked."""
        # The index rows go first: a crash after this leaves chunks without rows.
        self.index.query("DELETE FROM chunks WHERE root=? AND path=?", (root, path))
        slot.handle = None
        slot.verified.clear()
        storage.remove(self._urlpath(root, path))

    def remap(self, root: str, path: str, old: DatasetMeta, new: DatasetMeta, digests: list[str]) -> int:
        """Keep the chunks of version `old` that the manifest of version `new` lists unchanged.

        A chunk is kept when it stays at the same coordinates of the chunk
        grid with the same digest (an array that grew keeps all its full
        chunks). The rest is dropped. Returns how many chunks were kept.
        """
        slot = self.slot(root, path)
        with slot.lock:
            if slot.version != version(new):
                return 0
            keep = []
            if same_layout(old, new) and len(digests) == new["nchunks"]:
                rows = self.index.query(
                    "SELECT nchunk, digest, nbytes FROM chunks WHERE root=? AND path=? AND etag=?",
                    (root, path, old["etag"]),
                )
                keep = _confirmed(rows, old, new, digests)
            if not keep:
                self.forget(root, path, slot)
                return 0
            urlpath = self._urlpath(root, path)
            staging = urlpath.with_name(urlpath.name + ".remap")
            try:
                copied = _copy_chunks(slot.handle, urlpath, keep, new, staging)
            except (RuntimeError, ValueError, OSError) as exc:
                log.warning("cannot keep the chunks of %s/%s (%s); dropping them", root, path, exc)
                storage.remove(staging)
                self.forget(root, path, slot)
                return 0
            self.forget(root, path, slot)
            try:
                staging.rename(urlpath)
            except OSError as exc:
                log.warning("cannot keep the chunks of %s/%s (%s); dropping them", root, path, exc)
                storage.remove(staging)
                return 0
            kept = [(root, path, n, new["etag"], digest, nbytes, now) for n, digest, nbytes, now in copied]
            with self.index.transaction() as db:
                db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)", kept)
            slot.verified.update(row[2] for row in kept)
        return len(kept)

    def _container(self, root: str, path: str, meta: DatasetMeta, slot: Slot):
        """Return the open container of a dataset, opening or creating it (slot locked)."""
        if slot.handle is not None and storage.nitems_shape(slot.handle) != tuple(meta["shape"]):
            slot.handle = None
        if slot.handle is None:
            urlpath = self._urlpath(root, path)
            handle = None
            if urlpath.exists():
                try:
                    handle = blosc2.open(str(urlpath), mode="a")
                except (RuntimeError, ValueError, OSError) as exc:
                    log.warning(
                        "cache container of %s/%s is unreadable (%s); starting it again", root, path, exc
                    )
                else:
                    if storage.nitems_shape(handle) != tuple(meta["shape"]):
                        handle = None
            if handle is None:
                self.index.query("DELETE FROM chunks WHERE root=? AND path=?", (root, path))
                slot.verified.clear()
                handle = storage.create_sparse(meta, urlpath)
            slot.handle = handle
        return slot.handle

    def cached_chunks(self, root: str, path: str, meta: DatasetMeta, wanted: Iterable[int]) -> set[int]:
        """Return which of the chunks `wanted` of version ``meta["etag"]`` are cached and sound.

        A chunk read for the first time since this process started is checked
        against its digest and its dataset's metadata (one cached by a catmqtt
        that did not check it); one that fails (a crash, a disk error) is
        forgotten, to be fetched again.
        """
        slot = self.slot(root, path)
        wanted = set(wanted)
        if not wanted:
            return set()
        with self.index.lock:
            # Claimed before they are looked for: see `evict`.
            self.claims.claim(root, path, wanted)
            # One query over the span of the request, not one per chunk nor over the whole dataset.
            rows = self.index.query(
                "SELECT nchunk, digest FROM chunks"
                " WHERE root=? AND path=? AND etag=? AND nchunk BETWEEN ? AND ?",
                (root, path, meta["etag"], min(wanted), max(wanted)),
            )
        digests = dict(rows)
        cached = {n for n in wanted if n in digests}
        unchecked = cached - slot.verified
        if unchecked:
            with slot.lock:
                if slot.version != version(meta):
                    return set()
                schunk = storage.schunk_of(self._container(root, path, meta, slot))
                for n in sorted(unchecked):
                    try:
                        data = schunk.get_chunk(n)
                        sound = (
                            storage.chunk_digest(data) == digests[n] and chunk_problem(data, meta, n) is None
                        )
                    except (RuntimeError, ValueError):
                        sound = False
                    if sound:
                        slot.verified.add(n)
                    else:
                        log.warning("cached chunk %d of %s/%s is damaged; fetching it again", n, root, path)
                        self.index.query(
                            "DELETE FROM chunks WHERE root=? AND path=? AND nchunk=?", (root, path, n)
                        )
                        cached.discard(n)
        return cached

    def digests(self, root: str, path: str, meta: DatasetMeta) -> list[str] | None:
        """Return the digest of every chunk of version ``meta["etag"]`` of a dataset, if
        all of them are cached, else None."""
        with self.index.lock:
            rows = self.index.query(
                "SELECT nchunk, digest FROM chunks WHERE root=? AND path=? AND etag=? ORDER BY nchunk",
                (root, path, meta["etag"]),
            )
        if len(rows) != meta["nchunks"]:
            return None
        return [digest for _, digest in rows]

    def store_chunk(
        self, root: str, path: str, meta: DatasetMeta, nchunk: int, data: bytes, digest: str, url: str
    ) -> bool:
        """Store a chunk fetched from `url` for version ``meta["etag"]``, whose digest was checked.

        Returns False, storing nothing, if the dataset changed meanwhile, or if
        no manifest vouches for the chunk and its root is no longer served from
        `url` (see `set_root`). On a full disk, raises InsufficientStorage: the
        chunk is not indexed (Blosc2 leaves its container as it was when a
        write fails), so it is fetched again.
        """
        slot = self.slot(root, path)
        with slot.lock, self.index.writing():
            if slot.version != version(meta):
                return False
            handle = self._container(root, path, meta, slot)
            storage.schunk_of(handle).update_chunk(nchunk, data)
            # Checked with the index row written, under the lock `Cache.set_root` takes.
            with self.index.lock:
                if not has_manifest(meta) and self.catalogue.url(root) != url:
                    return False
                self.index.query(
                    "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (root, path, nchunk, meta["etag"], digest, len(data), time.time()),
                )
            slot.verified.add(nchunk)
        return True

    def read_chunk(self, root: str, path: str, meta: DatasetMeta, nchunk: int) -> bytes | None:
        """Return the compressed bytes of a cached chunk, or None if the dataset changed."""
        slot = self.slot(root, path)
        with slot.lock:
            if slot.version != version(meta):
                return None
            return storage.schunk_of(self._container(root, path, meta, slot)).get_chunk(nchunk)

    def lru(self, count: int, skip: int) -> list[tuple[str, str, int, float, int]]:
        """Return (root, path, number, last access, bytes) of the least recently read chunks
        of the datasets' current versions, pinned ones left out: `count` of them,
        after the `skip` least recent. Accesses still in memory are written first."""
        with self.index.lock:
            self.accesses.flush()
            return self.index.query(_LRU, (count, skip))

    def evict(self, root: str, path: str, meta: DatasetMeta, chosen: list[tuple[int, float]]) -> list[int]:
        """Evict the chunks `chosen` (number, last access when chosen) of version `meta`
        of a dataset, but those claimed or read since; return their sizes.

        The rows go first, in one transaction, and only those with the same
        last access as when chosen: a chunk read or fetched again since stays.
        """
        slot = self.slot(root, path)
        with slot.lock:
            if slot.version != version(meta):
                return []
            with self.index.transaction() as db:
                # Pinned since it was chosen: pins are made under index.lock, as this runs.
                if db.execute(_PINNED, (root, path)).fetchone():
                    return []
                busy = self.claims.held(root, path) | self.accesses.pending(root, path)
                gone = []
                for n, when in chosen:
                    if n not in busy:
                        rows = db.execute(
                            "DELETE FROM chunks WHERE root=? AND path=? AND nchunk=? AND etag=?"
                            " AND last_access=? RETURNING nbytes",
                            (root, path, n, meta["etag"], when),
                        ).fetchall()
                        gone.extend((n, r[0]) for r in rows)
            if not gone:
                return []
            # The rows are committed: a crash from here on leaves chunk files no row names.
            schunk = storage.schunk_of(self._container(root, path, meta, slot))
            for n, _ in gone:
                schunk.update_special(n, blosc2.SpecialValue.UNINIT)
                slot.verified.discard(n)
        return [nbytes for _, nbytes in gone]

    @contextmanager
    def reading(self, root: str, path: str, meta: DatasetMeta) -> Iterator[Any]:
        """Hold a dataset's container at version ``meta["etag"]`` while reading it.

        Yields None if the dataset changed since `meta` was read.
        """
        slot = self.slot(root, path)
        with slot.lock:
            if slot.version != version(meta):
                yield None
            else:
                yield self._container(root, path, meta, slot)


class Claims:
    """The chunks that readers were told are cached and have not read yet (see
    `Chunks.evict`); under index.lock."""

    def __init__(self) -> None:
        # Dataset -> chunk number -> [readers, time.monotonic() of the last claim].
        self._claims: dict[tuple[str, str], dict[int, list]] = {}

    def claim(self, root: str, path: str, numbers: Iterable[int]) -> None:
        """Claim chunks for a reader."""
        claims = self._claims.setdefault((root, path), {})
        now = time.monotonic()
        for n in numbers:
            claim = claims.setdefault(n, [0, now])
            claim[0] += 1
            claim[1] = now

    def release(self, root: str, path: str, numbers: Iterable[int]) -> None:
        """Give back a reader's claims on chunks, once read."""
        claims = self._claims.get((root, path))
        if claims is None:
            return
        for n in numbers:
            claim = claims.get(n)
            if claim is not None:
                claim[0] -= 1
                if claim[0] <= 0:
                    del claims[n]
        if not claims:
            del self._claims[(root, path)]

    def held(self, root: str, path: str) -> set[int]:
        """Return the chunks of a dataset claimed by readers; drop lapsed claims."""
        claims = self._claims.get((root, path), {})
        lapsed = time.monotonic() - CLAIM_LEASE
        for n in [n for n, (_, when) in claims.items() if when < lapsed]:
            del claims[n]
        return set(claims)


class Accesses:
    """When cached chunks were last read, gathered in memory and written in batches."""

    def __init__(self, index: Index) -> None:
        self._index = index
        # Under index.lock: dataset -> chunk number -> time.time() of its last read.
        self._accessed: dict[tuple[str, str], dict[int, float]] = {}
        self._flushed = time.monotonic()

    def touch(self, root: str, path: str, nchunks: Iterable[int]) -> None:
        """Record that chunks were just read.

        Accesses are written to the index in batches, at most every few
        seconds, rather than once per request on the read path.
        """
        now = time.time()
        with self._index.lock:
            self._accessed.setdefault((root, path), {}).update(dict.fromkeys(nchunks, now))
            if time.monotonic() - self._flushed > ACCESS_FLUSH:
                self.flush()

    def pending(self, root: str, path: str) -> set[int]:
        """Return the chunks of a dataset read since the last write (index.lock held)."""
        return set(self._accessed.get((root, path), ()))

    def flush(self) -> None:
        """Write the accesses gathered so far (index.lock held)."""
        # On a full disk, tried again ACCESS_FLUSH later: the reads go on meanwhile.
        self._flushed = time.monotonic()
        try:
            with self._index.writing():
                self._write()
        except InsufficientStorage as exc:
            log.warning("access times of cached chunks not recorded: %s", exc)
            return
        self._accessed.clear()

    def _write(self) -> None:
        # Each chunk with the time of its last read: eviction goes by their order.
        with self._index.transaction() as db:
            for (root, path), times in self._accessed.items():
                db.executemany(
                    "UPDATE chunks SET last_access=MAX(last_access, ?) WHERE root=? AND path=? AND nchunk=?",
                    [(when, root, path, n) for n, when in times.items()],
                )


def version(meta: DatasetMeta) -> str:
    """Return what identifies the chunks of a version of a dataset: its etag, and
    the digest of its manifest where it has one."""
    return f"{meta['etag']}/{meta['manifest']}" if has_manifest(meta) else meta["etag"]


def same_layout(old: DatasetMeta, new: DatasetMeta) -> bool:
    """Tell whether chunks of `old` can stand in `new` (same kind, dtype and chunk shape)."""
    keys = ("kind", "dtype", "chunks", "blocks", "typesize", "chunksize")
    return all(old.get(k) == new.get(k) for k in keys) and len(old["shape"]) == len(new["shape"])


def _confirmed(
    rows: list[tuple], old: DatasetMeta, new: DatasetMeta, digests: list[str]
) -> list[tuple[int, int, str, int]]:
    """Return (old number, new number, digest, nbytes) of the chunks of `old` (index
    rows of number, digest, nbytes) that stay at their coordinates with their digest."""
    old_grid = chunk_grid(old["shape"], old["chunks"])
    new_grid = chunk_grid(new["shape"], new["chunks"])
    keep = []
    for nchunk, digest, nbytes in rows:
        coords = chunk_coords(nchunk, old_grid)
        if all(c < g for c, g in zip(coords, new_grid, strict=True)):
            moved = chunk_number(coords, new_grid)
            if digests[moved] == digest:
                keep.append((nchunk, moved, digest, nbytes))
    return keep


def _copy_chunks(
    handle: Any, urlpath: Path, keep: list[tuple[int, int, str, int]], new: DatasetMeta, staging: Path
) -> list[tuple[int, str, int, float]]:
    """Copy the chunks `keep` of the container `handle` (or the one at `urlpath`) that
    still match their digest into a new container of version `new` at `staging`;
    return (number, digest, nbytes, time) of those copied. The containers are
    closed when this returns."""
    # The containers are held, not only their SChunks: an SChunk does not keep its NDArray alive.
    if handle is None:
        handle = blosc2.open(str(urlpath), mode="r")
    target = storage.create_sparse(new, staging)
    source, schunk = storage.schunk_of(handle), storage.schunk_of(target)
    copied = []
    for nchunk, moved, digest, nbytes in keep:
        data = source.get_chunk(nchunk)
        if storage.chunk_digest(data) == digest:
            schunk.update_chunk(moved, data)
            copied.append((moved, digest, nbytes, time.time()))
    del source, schunk, target, handle
    return copied
