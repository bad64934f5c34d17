"""This module holds the SQLite plumbing of the subscriber's cache: the index
file ``<statedir>/cache.sqlite`` (WAL), its schema and version check, its
transactions, and the mapping of a full disk to InsufficientStorage.

Threads: every thread that touches the cache (MQTT, the ``updates`` worker,
HTTP and builder threads, fetch workers and the cache writer) goes through one
`Index`. ``Index.lock`` (re-entrant) guards the connection, which is shared by
all of them, and the in-memory state of the `catalogue` and the `cache` built
on it; it is taken after a dataset's ``Slot.lock``, never before one (see
`cache`), and no network I/O happens under it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import fsutil
from ..errors import ConfigError

SCHEMA_VERSION = 3
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
-- What is pinned (mirrored, never evicted): a whole root (path ''), a directory
-- or a dataset of it (added the same way).
CREATE TABLE IF NOT EXISTS pins (root TEXT NOT NULL, path TEXT NOT NULL, PRIMARY KEY (root, path));
-- Eviction takes the least recently used chunks first.
CREATE INDEX IF NOT EXISTS chunks_by_access ON chunks (last_access);
"""


class Index:
    """The open index of the cache under `statedir`; `open` opens it."""

    def __init__(self, statedir: Path, db: sqlite3.Connection) -> None:
        self.dir = statedir
        self.path = statedir / "cache.sqlite"
        self._db = db
        self.lock = threading.RLock()

    @classmethod
    def open(cls, statedir: str | Path) -> Index:
        """Open (or create) the index under `statedir`, checking its schema version.

        Raises ConfigError if the file is not a catmqtt cache of this schema version.
        """
        statedir = Path(statedir)
        fsutil.make_statedir(statedir)
        dbpath = statedir / "cache.sqlite"
        db = None
        try:
            db = sqlite3.connect(dbpath, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            _check_schema(db, dbpath)
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            raise unusable(dbpath, exc) from None
        except BaseException:
            if db is not None:
                db.close()
            raise
        return cls(statedir, db)

    def close(self) -> None:
        with self.lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and one write transaction, committed when the block ends."""
        with self.lock:
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
    def writing(self) -> Iterator[None]:
        """Raise InsufficientStorage for what fails in the block because the disk is full."""
        try:
            yield
        except (OSError, RuntimeError, sqlite3.Error) as exc:
            if fsutil.out_of_space(exc, self.dir):
                raise fsutil.no_space(self.dir) from exc
            raise

    def query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        """Run one statement (its own transaction) and return its rows."""
        with self.lock:
            return self._db.execute(sql, tuple(args)).fetchall()


def unusable(dbpath: Path, exc: Exception) -> ConfigError:
    """Return the error for an index file SQLite cannot read."""
    return ConfigError(f"{dbpath} is not a catmqtt cache ({exc}); move it away or use another --statedir")


def _check_schema(db: sqlite3.Connection, dbpath: Path) -> None:
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if tables and "meta" not in tables:
        raise ConfigError(f"{dbpath} is not a catmqtt cache; move it away or use another --statedir")
    db.executescript(_TABLES)
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    elif row[0] != str(SCHEMA_VERSION):
        raise ConfigError(
            f"{dbpath} has cache schema version {row[0]}, this catmqtt uses {SCHEMA_VERSION};"
            " move it away or use another --statedir"
        )
