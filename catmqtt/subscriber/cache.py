"""This module holds the subscriber's cache: a SQLite index (WAL) of roots,
datasets and chunks, and one sparse Blosc2 container per dataset.

A chunk is written to its container before its index row is committed, so a
crash may leave an unindexed chunk (fetched again later) but never an index
row without its chunk. Chunks are indexed with the etag of their version:
when a dataset changes, readers of the new version never see the old
chunks, and those its new manifest confirms are kept (`remap`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blosc2

from .. import fsutil, storage
from ..blocks import chunk_problem
from ..errors import ConfigError, InsufficientStorage, NotFound
from ..slices import chunk_coords, chunk_grid, chunk_number

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
# Seconds between writes of chunk access times to the index.
ACCESS_FLUSH = 5.0
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roots (
    name TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    subscribed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS datasets (
    root TEXT NOT NULL,
    path TEXT NOT NULL,
    etag TEXT NOT NULL,
    meta TEXT NOT NULL,
    PRIMARY KEY (root, path)
);
CREATE TABLE IF NOT EXISTS chunks (
    root TEXT NOT NULL,
    path TEXT NOT NULL,
    nchunk INTEGER NOT NULL,
    etag TEXT NOT NULL,
    digest TEXT NOT NULL,
    nbytes INTEGER NOT NULL,
    last_access REAL NOT NULL,
    PRIMARY KEY (root, path, nchunk)
);
-- The key each root was first announced under, '' if unsigned (trust on first
-- use); a table added without a new schema version, which older catmqtt ignores.
CREATE TABLE IF NOT EXISTS keys (root TEXT PRIMARY KEY, key TEXT NOT NULL);
-- The last signed tombstone believed on each topic, against replays of what it
-- withdrew after a restart (added the same way).
CREATE TABLE IF NOT EXISTS tombstones (topic TEXT PRIMARY KEY, key TEXT NOT NULL, seq INTEGER NOT NULL);
"""


@dataclass
class Slot:
    """The open container of one dataset, and the lock that guards it."""

    # The version of the dataset the container holds chunks of (see `version`).
    version: str
    handle: blosc2.NDArray | blosc2.SChunk | None = None
    # Chunks whose bytes were checked against their digest since this process started.
    verified: set[int] = field(default_factory=set)
    lock: threading.RLock = field(default_factory=threading.RLock)


class Cache:
    """The index and containers under ``<statedir>``."""

    def __init__(self, statedir: str | Path) -> None:
        self.dir = Path(statedir)
        fsutil.make_statedir(self.dir)
        self.data_dir = self.dir / "cache"
        dbpath = self.dir / "cache.sqlite"
        self._lock = threading.RLock()
        self._slots: dict[tuple[str, str], Slot] = {}
        # What every request reads, kept in memory: the index is written through.
        self._metas: dict[tuple[str, str], dict[str, Any]] = {}
        self._accessed: dict[tuple[str, str], set[int]] = {}
        self._flushed = time.monotonic()
        try:
            self._db = sqlite3.connect(dbpath, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._check_schema(dbpath)
            rows = self._db.execute("SELECT name, info, subscribed FROM roots").fetchall()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"{dbpath} is not a catmqtt cache ({exc}); move it away or use another --statedir"
            ) from None
        self._roots = {name: {"info": json.loads(info), "subscribed": bool(sub)} for name, info, sub in rows}

    def _check_schema(self, dbpath: Path) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise ConfigError(f"{dbpath} is not a catmqtt cache; move it away or use another --statedir")
        self._db.executescript(_TABLES)
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif row[0] != str(SCHEMA_VERSION):
            raise ConfigError(
                f"{dbpath} has cache schema version {row[0]}, this catmqtt uses {SCHEMA_VERSION};"
                " move it away or use another --statedir"
            )

    def close(self) -> None:
        with self._lock:
            self._flush_accesses()
            self._db.close()

    @contextmanager
    def _transaction(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # A COMMIT that failed (a full disk) may leave the transaction
                # open, and every later BEGIN would fail; a failed statement
                # may have rolled it back already.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def _writing(self):
        """Raise InsufficientStorage for what fails in the block because the disk is full."""
        try:
            yield
        except (OSError, RuntimeError, sqlite3.Error) as exc:
            if fsutil.out_of_space(exc, self.dir):
                raise fsutil.no_space(self.dir) from exc
            raise

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    # Roots

    def set_root(self, name: str, info: dict[str, Any] | None) -> list[str]:
        """Record the announcement of root `name`; None forgets the root.

        A root served from another URL than before forgets, at once, the cached
        chunks of its datasets that no manifest vouches for: they came from the
        other publisher (`store_chunk` stores no more of them). Returns the
        paths of those datasets.
        """
        moved: list[str] = []
        with self._transaction() as db:
            if info is None:
                # A subscribed root stays known (offline), with its subscription
                # and cache: a cleared announcement must not lose them.
                if not self._roots.get(name, {}).get("subscribed"):
                    db.execute("DELETE FROM roots WHERE name=?", (name,))
                    self._roots.pop(name, None)
                return moved
            old = self._roots.get(name)
            if old is not None and old["info"]["url"] != info["url"]:
                rows = db.execute("SELECT path, meta FROM datasets WHERE root=?", (name,)).fetchall()
                moved = [path for path, meta in rows if "manifest" not in json.loads(meta)]
                db.executemany("DELETE FROM chunks WHERE root=? AND path=?", [(name, p) for p in moved])
            db.execute(
                "INSERT INTO roots (name, info) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET info=excluded.info",
                (name, json.dumps(info)),
            )
            subscribed = False if old is None else old["subscribed"]
            self._roots[name] = {"info": info, "subscribed": subscribed}
        return moved

    def roots(self) -> dict[str, dict[str, Any]]:
        """Return {name: {"info": announcement, "subscribed": bool}}, sorted by name."""
        with self._lock:
            return {name: dict(self._roots[name]) for name in sorted(self._roots)}

    def root(self, name: str) -> dict[str, Any]:
        """Return one root as `roots` does, or raise NotFound."""
        with self._lock:
            root = self._roots.get(name)
        if root is None:
            raise NotFound(f"no root {name!r} is known (see 'catmqtt roots')")
        return dict(root)

    def set_subscribed(self, name: str, subscribed: bool) -> None:
        with self._lock:
            self._query("UPDATE roots SET subscribed=? WHERE name=?", (int(subscribed), name))
            if name in self._roots:
                self._roots[name]["subscribed"] = subscribed

    def subscribed(self) -> list[str]:
        with self._lock:
            return sorted(name for name, root in self._roots.items() if root["subscribed"])

    def first_key(self, name: str) -> str | None:
        """Return the key of the first announcement of root `name` ("" if it was
        unsigned), None while none was believed."""
        rows = self._query("SELECT key FROM keys WHERE root=?", (name,))
        return rows[0][0] if rows else None

    def set_first_key(self, name: str, key: str) -> None:
        """Record the key of the first announcement of root `name` ("" if unsigned),
        unless one is recorded already."""
        self._query("INSERT OR IGNORE INTO keys VALUES (?, ?)", (name, key))

    def tombstone(self, topic: str) -> tuple[str, int] | None:
        """Return the key and sequence number of the last signed tombstone believed on `topic`."""
        rows = self._query("SELECT key, seq FROM tombstones WHERE topic=?", (topic,))
        return rows[0] if rows else None

    def set_tombstone(self, topic: str, key: str, seq: int) -> None:
        self._query("INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?)", (topic, key, seq))

    # Datasets

    def set_dataset(self, root: str, path: str, meta: dict[str, Any] | None) -> dict[str, Any] | None:
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
        rows = self._query("SELECT etag, meta FROM datasets WHERE root=? AND path=?", (root, path))
        old_etag, old_meta = (rows[0][0], json.loads(rows[0][1])) if rows else (None, None)
        new_etag = None if meta is None else meta["etag"]
        same = None if old_meta is None or meta is None else version(old_meta) == version(meta)
        if old_etag == new_etag and same is not False:
            if meta is not None and meta != old_meta:
                with self._transaction() as db:
                    db.execute(
                        "UPDATE datasets SET meta=? WHERE root=? AND path=?", (json.dumps(meta), root, path)
                    )
                    self._metas[(root, path)] = meta
            return None
        keep = old_etag != new_etag and same is not None and _same_layout(old_meta, meta)
        slot = self._slot(root, path)
        with slot.lock:
            with self._transaction() as db:
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
                self._drop_chunks(root, path, slot)
        return old_meta if keep else None

    def datasets(self, root: str) -> list[str]:
        """Return the sorted paths of the datasets of `root`."""
        return [r[0] for r in self._query("SELECT path FROM datasets WHERE root=? ORDER BY path", (root,))]

    def dataset(self, root: str, path: str) -> dict[str, Any]:
        """Return the metadata of a dataset (not to be modified), or raise NotFound."""
        meta = self._metas.get((root, path))
        if meta is None:
            # Under the lock, so that a concurrent set_dataset cannot be undone here.
            with self._lock:
                meta = self._metas.get((root, path))
                if meta is None:
                    rows = self._query("SELECT meta FROM datasets WHERE root=? AND path=?", (root, path))
                    if not rows:
                        raise NotFound(f"no dataset {path!r} in root {root!r}")
                    meta = self._metas[(root, path)] = json.loads(rows[0][0])
        return meta

    # Chunks

    def _slot(self, root: str, path: str) -> Slot:
        with self._lock:
            slot = self._slots.get((root, path))
            if slot is None:
                rows = self._db.execute(
                    "SELECT meta FROM datasets WHERE root=? AND path=?", (root, path)
                ).fetchall()
                slot = self._slots[(root, path)] = Slot(version(json.loads(rows[0][0])) if rows else "")
            return slot

    def _urlpath(self, root: str, path: str) -> Path:
        return self.data_dir / root / path

    def drop_chunks(self, root: str, path: str) -> None:
        """Forget every cached chunk of a dataset."""
        slot = self._slot(root, path)
        with slot.lock:
            self._drop_chunks(root, path, slot)

    def _drop_chunks(self, root: str, path: str, slot: Slot) -> None:
        # The index rows go first: a crash after this leaves chunks without rows.
        self._query("DELETE FROM chunks WHERE root=? AND path=?", (root, path))
        slot.handle = None
        slot.verified.clear()
        storage.remove(self._urlpath(root, path))

    def remap(
        self, root: str, path: str, old: dict[str, Any], new: dict[str, Any], digests: list[str]
    ) -> int:
        """Keep the chunks of version `old` that the manifest of version `new` lists unchanged.

        A chunk is kept when it stays at the same coordinates of the chunk
        grid with the same digest (an array that grew keeps all its full
        chunks). The rest is dropped. Returns how many chunks were kept.
        """
        slot = self._slot(root, path)
        with slot.lock:
            if slot.version != version(new):
                return 0
            if not _same_layout(old, new) or len(digests) != new["nchunks"]:
                self._drop_chunks(root, path, slot)
                return 0
            old_grid = chunk_grid(old["shape"], old["chunks"])
            new_grid = chunk_grid(new["shape"], new["chunks"])
            keep = []
            rows = self._query(
                "SELECT nchunk, digest, nbytes FROM chunks WHERE root=? AND path=? AND etag=?",
                (root, path, old["etag"]),
            )
            for nchunk, digest, nbytes in rows:
                coords = chunk_coords(nchunk, old_grid)
                if all(c < g for c, g in zip(coords, new_grid, strict=True)):
                    moved = chunk_number(coords, new_grid)
                    if digests[moved] == digest:
                        keep.append((nchunk, moved, digest, nbytes))
            if not keep:
                self._drop_chunks(root, path, slot)
                return 0
            urlpath = self._urlpath(root, path)
            staging = urlpath.with_name(urlpath.name + ".remap")
            kept = []
            try:
                handle = slot.handle if slot.handle is not None else blosc2.open(str(urlpath), mode="r")
                source = storage.schunk_of(handle)
                target = storage.create_sparse(new, staging)
                for nchunk, moved, digest, nbytes in keep:
                    data = source.get_chunk(nchunk)
                    if storage.chunk_digest(data) == digest:
                        storage.schunk_of(target).update_chunk(moved, data)
                        kept.append((root, path, moved, new["etag"], digest, nbytes, time.time()))
                del handle, source, target
            except (RuntimeError, ValueError, OSError) as exc:
                log.warning("cannot keep the chunks of %s/%s (%s); dropping them", root, path, exc)
                storage.remove(staging)
                self._drop_chunks(root, path, slot)
                return 0
            self._drop_chunks(root, path, slot)
            try:
                staging.rename(urlpath)
            except OSError as exc:
                log.warning("cannot keep the chunks of %s/%s (%s); dropping them", root, path, exc)
                storage.remove(staging)
                return 0
            with self._transaction() as db:
                db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)", kept)
            slot.verified.update(row[2] for row in kept)
        return len(kept)

    def _container(self, root: str, path: str, meta: dict[str, Any], slot: Slot):
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
                self._query("DELETE FROM chunks WHERE root=? AND path=?", (root, path))
                slot.verified.clear()
                handle = storage.create_sparse(meta, urlpath)
            slot.handle = handle
        return slot.handle

    def cached_chunks(self, root: str, path: str, meta: dict[str, Any], wanted: Iterable[int]) -> set[int]:
        """Return which of the chunks `wanted` of version ``meta["etag"]`` are cached and sound.

        A chunk read for the first time since this process started is checked
        against its digest and its dataset's metadata (one cached by a catmqtt
        that did not check it); one that fails (a crash, a disk error) is
        forgotten, to be fetched again.
        """
        slot = self._slot(root, path)
        wanted = set(wanted)
        if not wanted:
            return set()
        # One query over the span of the request, not one per chunk nor over the whole dataset.
        rows = self._query(
            "SELECT nchunk, digest FROM chunks WHERE root=? AND path=? AND etag=? AND nchunk BETWEEN ? AND ?",
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
                        self._query(
                            "DELETE FROM chunks WHERE root=? AND path=? AND nchunk=?", (root, path, n)
                        )
                        cached.discard(n)
        return cached

    def store_chunk(
        self, root: str, path: str, meta: dict[str, Any], nchunk: int, data: bytes, digest: str, url: str
    ) -> bool:
        """Store a chunk fetched from `url` for version ``meta["etag"]``, whose digest was checked.

        Returns False, storing nothing, if the dataset changed meanwhile, or if
        no manifest vouches for the chunk and its root is no longer served from
        `url` (see `set_root`). On a full disk, raises InsufficientStorage: the
        chunk is not indexed (Blosc2 leaves its container as it was when a
        write fails), so it is fetched again.
        """
        slot = self._slot(root, path)
        with slot.lock, self._writing():
            if slot.version != version(meta):
                return False
            handle = self._container(root, path, meta, slot)
            storage.schunk_of(handle).update_chunk(nchunk, data)
            # Checked with the index row written, under the lock set_root takes.
            with self._lock:
                if "manifest" not in meta and self._roots.get(root, {}).get("info", {}).get("url") != url:
                    return False
                self._query(
                    "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (root, path, nchunk, meta["etag"], digest, len(data), time.time()),
                )
            slot.verified.add(nchunk)
        return True

    def read_chunk(self, root: str, path: str, meta: dict[str, Any], nchunk: int) -> bytes | None:
        """Return the compressed bytes of a cached chunk, or None if the dataset changed."""
        slot = self._slot(root, path)
        with slot.lock:
            if slot.version != version(meta):
                return None
            return storage.schunk_of(self._container(root, path, meta, slot)).get_chunk(nchunk)

    @contextmanager
    def reading(self, root: str, path: str, meta: dict[str, Any]):
        """Hold a dataset's container at version ``meta["etag"]`` while reading it.

        Yields None if the dataset changed since `meta` was read.
        """
        slot = self._slot(root, path)
        with slot.lock:
            if slot.version != version(meta):
                yield None
            else:
                yield self._container(root, path, meta, slot)

    def touch(self, root: str, path: str, nchunks: Iterable[int]) -> None:
        """Record that chunks were just read.

        Accesses are written to the index in batches, at most every few
        seconds, rather than once per request on the read path.
        """
        with self._lock:
            self._accessed.setdefault((root, path), set()).update(nchunks)
            if time.monotonic() - self._flushed > ACCESS_FLUSH:
                self._flush_accesses()

    def _flush_accesses(self) -> None:
        # On a full disk, tried again ACCESS_FLUSH later: the reads go on meanwhile.
        self._flushed = time.monotonic()
        try:
            with self._writing():
                self._write_accesses()
        except InsufficientStorage as exc:
            log.warning("access times of cached chunks not recorded: %s", exc)
            return
        self._accessed.clear()

    def _write_accesses(self) -> None:
        now = time.time()
        with self._transaction() as db:
            for (root, path), numbers in self._accessed.items():
                ordered = sorted(numbers)
                # Batches stay below SQLite's limit on bound parameters.
                for i in range(0, len(ordered), 5000):
                    batch = ordered[i : i + 5000]
                    marks = ",".join("?" * len(batch))
                    db.execute(
                        f"UPDATE chunks SET last_access=? WHERE root=? AND path=? AND nchunk IN ({marks})",
                        (now, root, path, *batch),
                    )


def version(meta: dict[str, Any]) -> str:
    """Return what identifies the chunks of a version of a dataset: its etag, and
    the digest of its manifest where it has one."""
    return f"{meta['etag']}/{meta['manifest']}" if "manifest" in meta else meta["etag"]


def _same_layout(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Tell whether chunks of `old` can stand in `new` (same kind, dtype and chunk shape)."""
    keys = ("kind", "dtype", "chunks", "blocks", "typesize", "chunksize")
    return all(old.get(k) == new.get(k) for k in keys) and len(old["shape"]) == len(new["shape"])
