"""This module reads datasets with no server and no network, through the library's
`Root`, `Dataset` and `File`: from an offline bundle (`open_bundle`) or from a
subscriber's cache directory (`open_cache`).

Each source is a `Store` (its roots, their datasets' metadata, reading a
selection, saving a dataset's file); `OfflineClient` answers what the object
view (`client_view`) asks of a client from one.

A cache is read while its subscriber may be running: its index is opened
read-only (SQLite, WAL), nothing in it is changed, and a read checks that
every chunk it needs is cached before and after it reads them, so that a
chunk evicted meanwhile is an error, never wrong data.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bundle import Bundle
from .errors import BadRequest, CatmqttError, NotFound, Unavailable
from .schema import parse_dataset
from .slices import as_key, chunks_touched, forward, parse_slice, select
from .topics import parse_path

if TYPE_CHECKING:
    import numpy as np

    from .client_view import Root
    from .schema import DatasetMeta

# The cache's index and chunk containers, as the subscriber writes them
# (subscriber.index and subscriber.chunks; read here without loading them).
CACHE_INDEX = "cache.sqlite"
CACHE_DATA = "cache"
CACHE_SCHEMA_VERSION = "3"


class Store:
    """What an offline source gives: its roots, their datasets, reads and files."""

    name: str

    def roots(self) -> dict[str, dict[str, Any]]:
        """Return each root's announcement, by name."""
        raise NotImplementedError

    def metas(self, root: str) -> dict[str, DatasetMeta]:
        """Return the metadata of every dataset of `root`, by path."""
        raise NotImplementedError

    def meta(self, root: str, path: str) -> DatasetMeta | None:
        """Return the metadata of one dataset, or None if `root` has none at `path`."""
        return self.metas(root).get(path)

    def read(self, root: str, path: str, key: tuple) -> np.ndarray | bytes:
        """Return selection `key` of a dataset."""
        raise NotImplementedError

    def save(self, root: str, path: str, dest: Path) -> None:
        """Write a dataset's whole file at `dest`."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class OfflineClient:
    """What `client_view`'s `Root`, `Dataset` and `File` ask of a client, answered
    from a `Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.urlbase = store.name

    def close(self) -> None:
        self.store.close()

    def get_roots(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "name": name,
                "url": info.get("url"),
                "online": False,
                "subscribed": True,
                "key": info.get("key"),
            }
            for name, info in self.store.roots().items()
        }

    def subscribe(self, root: str) -> str:
        self._info(root)
        return "Ok"

    def get_list(self, path: str) -> list[str]:
        root, _, directory = path.strip("/").partition("/")
        self._info(root)
        paths = sorted(self.store.metas(root))
        if not directory:
            return paths
        prefix = parse_path(directory.rstrip("/")) + "/"
        inside = [p for p in paths if p.startswith(prefix)]
        if not inside and directory not in paths:
            raise NotFound(f"no directory {directory!r} in root {root!r} of {self.store.name}")
        return inside or [directory]

    def get_info(self, dataset: str) -> dict[str, Any]:
        root, _, path = dataset.partition("/")
        info = self._info(root)
        return info if not path else self._meta(root, path)

    def fetch(
        self, dataset: str, slice_: Any = None, *, meta: DatasetMeta | None = None
    ) -> np.ndarray | bytes:
        root, _, path = dataset.partition("/")
        self._meta(root, path)
        key = () if slice_ is None else parse_slice(slice_) if isinstance(slice_, str) else as_key(slice_)
        return self.store.read(root, parse_path(path), key)

    def download(
        self, dataset: str, localpath: str | os.PathLike = ".", progress: bool = False
    ) -> Path | list[Path]:
        """Save a dataset, or every dataset of a root or directory, as
        ``<localpath>/ROOT/PATH``; return the path, or the paths, written."""
        root, _, path = dataset.strip("/").partition("/")
        if path and self.store.meta(root, parse_path(path)) is not None:
            return self._download_one(dataset, localpath, progress)
        return [self._download_one(f"{root}/{p}", localpath, progress) for p in self.get_list(dataset)]

    def _download_one(self, dataset: str, localpath: str | os.PathLike, progress: bool) -> Path:
        from .client import local_path

        root, _, path = dataset.strip("/").partition("/")
        self._meta(root, path)
        dest = local_path(localpath, f"{root}/{parse_path(path)}")
        tmp = dest.with_name(f".{dest.name}.part")
        tmp.unlink(missing_ok=True)
        try:
            self.store.save(root, parse_path(path), tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, dest)
        return dest

    def _info(self, root: str) -> dict[str, Any]:
        info = self.store.roots().get(root)
        if info is None:
            raise NotFound(f"no root {root!r} in {self.store.name}")
        return info

    def _meta(self, root: str, path: str) -> DatasetMeta:
        info = self._info(root)
        meta = self.store.meta(root, parse_path(path))
        if meta is None:
            missing = info.get("missing", {})
            reason = missing.get(path) if isinstance(missing, dict) else None
            if reason is not None:
                raise NotFound(f"{root}/{path} is not in {self.store.name}: {reason}")
            raise NotFound(f"no dataset {path!r} in root {root!r} of {self.store.name}")
        return meta


class BundleStore(Store):
    """A bundle's one root, read where its files lie in the ZIP."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.name = f"bundle {bundle.path.name}"
        # A bundle does not change: its root is read once.
        self._roots = {bundle.root: {**bundle.info, "missing": bundle.missing()}}

    def roots(self) -> dict[str, dict[str, Any]]:
        return self._roots

    def metas(self, root: str) -> dict[str, DatasetMeta]:
        return self.bundle.metas

    def read(self, root: str, path: str, key: tuple) -> np.ndarray | bytes:
        return self.bundle.read(path, key)

    def save(self, root: str, path: str, dest: Path) -> None:
        self.bundle.save(path, dest)

    def close(self) -> None:
        self.bundle.close()


class CacheStore(Store):
    """The roots and datasets a subscriber's cache holds, read only where cached."""

    def __init__(self, statedir: str | os.PathLike) -> None:
        self.statedir = Path(statedir)
        self.name = f"the cache at {self.statedir}"
        index = self.statedir / CACHE_INDEX
        if not index.is_file():
            raise NotFound(f"{self.statedir} holds no subscriber's cache (no {CACHE_INDEX})")
        try:
            self._db = sqlite3.connect(
                f"{index.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
            version = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.Error as exc:
            raise BadRequest(f"{index} is not a readable cache index: {exc}") from None
        if version is None or version[0] != CACHE_SCHEMA_VERSION:
            self._db.close()
            raise BadRequest(
                f"{index} has cache schema version {version and version[0]}, this catmqtt reads"
                f" {CACHE_SCHEMA_VERSION}"
            )
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise Unavailable(f"cannot read {self.name}: {exc}") from None

    def roots(self) -> dict[str, dict[str, Any]]:
        return {name: json.loads(info) for name, info in self._query("SELECT name, info FROM roots")}

    def metas(self, root: str) -> dict[str, DatasetMeta]:
        rows = self._query("SELECT path, meta FROM datasets WHERE root=?", (root,))
        return {path: parse_dataset(json.loads(meta), path) for path, meta in rows}

    def meta(self, root: str, path: str) -> DatasetMeta | None:
        rows = self._query("SELECT meta FROM datasets WHERE root=? AND path=?", (root, path))
        return parse_dataset(json.loads(rows[0][0]), path) if rows else None

    def read(self, root: str, path: str, key: tuple) -> np.ndarray | bytes:
        from .storage import read_array, read_stream_items

        meta = self.meta(root, path)
        sel = select(key, meta["shape"])
        numbers = chunks_touched(sel, meta["shape"], meta["chunks"])
        start_key, flip = forward(sel)
        with self._cached(root, path, meta, numbers) as container:
            if meta["kind"] == "ndarray":
                return read_array(container, start_key, flip)
            return read_stream_items(container, start_key[0], bool(flip), meta["typesize"])

    def save(self, root: str, path: str, dest: Path) -> None:
        from . import storage

        meta = self.meta(root, path)
        with self._cached(root, path, meta, list(range(meta["nchunks"]))) as container:
            storage.write_whole(container, meta, dest)

    def _cached(self, root: str, path: str, meta: DatasetMeta, numbers: list[int]) -> _Cached:
        return _Cached(self, root, path, meta, numbers)

    def missing(self, root: str, path: str, meta: DatasetMeta, numbers: list[int]) -> list[int]:
        """Return which of chunks `numbers` of version ``meta["etag"]`` are not cached."""
        if not numbers:
            return []
        # Over the span of the read, not the whole dataset.
        rows = self._query(
            "SELECT nchunk FROM chunks WHERE root=? AND path=? AND etag=? AND nchunk BETWEEN ? AND ?",
            (root, path, meta["etag"], min(numbers), max(numbers)),
        )
        cached = {n for (n,) in rows}
        return [n for n in numbers if n not in cached]


class _Cached:
    """A dataset's container open for reading, its chunks `numbers` cached before
    and still cached after (raising NotFound otherwise)."""

    def __init__(self, store: CacheStore, root: str, path: str, meta: DatasetMeta, numbers: list[int]):
        self.store, self.root, self.path, self.meta, self.numbers = store, root, path, meta, numbers

    def __enter__(self) -> Any:
        import blosc2

        self._check()
        try:
            return blosc2.open(str(self.store.statedir / CACHE_DATA / self.root / self.path), mode="r")
        except (RuntimeError, ValueError, OSError) as exc:
            raise Unavailable(f"cannot read {self.root}/{self.path} in {self.store.name}: {exc}") from None

    def __exit__(self, kind: type | None, *rest: object) -> None:
        if kind is not None and issubclass(kind, CatmqttError):
            return
        self._check(" any more: evicted while they were read")
        if kind is not None and issubclass(kind, (RuntimeError, ValueError, OSError)):
            raise Unavailable(
                f"cannot read {self.root}/{self.path} in {self.store.name}: {rest[0]}"
            ) from None

    def _check(self, when: str = "") -> None:
        missing = self.store.missing(self.root, self.path, self.meta, self.numbers)
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            raise NotFound(
                f"{len(missing)} chunks of {self.root}/{self.path} that the read needs are not in"
                f" {self.store.name}{when} (chunks {shown}): the cache is read as it is, nothing is fetched"
            )


class CachedRoots(Mapping):
    """The roots of a subscriber's cache, by name: each a `Root` read from the cache."""

    def __init__(self, statedir: str | os.PathLike) -> None:
        from .client_view import Root

        self.client = OfflineClient(CacheStore(statedir))
        self._roots = {name: Root(name, client=self.client) for name in self.client.get_roots()}

    def __getitem__(self, name: str) -> Root:
        root = self._roots.get(name)
        if root is None:
            raise NotFound(f"no root {name!r} in {self.client.store.name}")
        return root

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._roots))

    def __len__(self) -> int:
        return len(self._roots)

    def close(self) -> None:
        self.client.close()


def open_bundle(path: str | os.PathLike) -> Root:
    """Open the bundle at `path` (see `catmqtt.bundle`): its root, with the library's
    `Root` interface (`node_list`, ``root[path]`` gives datasets and files), read
    in-process with no server and no network."""
    from .client_view import Root

    bundle = Bundle(path)
    return Root(bundle.root, client=OfflineClient(BundleStore(bundle)))


def open_cache(statedir: str | os.PathLike) -> CachedRoots:
    """Open the cache of the subscriber whose state directory is `statedir`: its roots,
    by name, each with the library's `Root` interface, read in-process from what is
    cached (nothing is fetched; a read that needs a chunk not cached raises NotFound).
    The subscriber may be running meanwhile: the cache is only read."""
    try:
        return CachedRoots(statedir)
    except CatmqttError:
        raise
    except (sqlite3.Error, ValueError) as exc:
        raise BadRequest(f"cannot read the cache at {statedir}: {exc}") from None
