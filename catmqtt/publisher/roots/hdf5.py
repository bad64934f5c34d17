"""This module holds the HDF5 root: an HDF5 file, its groups as directories and its datasets as arrays.

Its files are read by :mod:`.hdf5tree` (the map of groups, datasets, links and
attributes) and :mod:`.hdf5chunks` (how each dataset's chunks are made).

Threads: scans run one at a time (the publisher's ``_scan_lock``) while HTTP
threads read chunks and downloads. ``HDF5Root._io``, an RLock, is held around
every h5py call, and by a scan while it reopens the file; what a scan finds
(entries, groups, skipped items) is swapped in whole, never changed in place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from ... import storage
from ...errors import CatmqttError, Changed
from . import Entry, Root, announced, bounded
from .hdf5chunks import ChunkPlan, plan, write_array
from .hdf5tree import SUFFIX, Layout, Skip, h5py, open_file, read_attrs, walk

log = logging.getLogger(__name__)


class HDF5Root(Root):
    """The datasets of one HDF5 file, as last scanned.

    An entry's source is a :class:`ChunkPlan` (datasets reached through soft
    links share their target's). Chunks that are not passed through are
    converted once per file etag into ``<statedir>/hdf5/<file etag>/``.
    Any change to the file changes every dataset's etag: HDF5 can rewrite
    data in place without a trace in its metadata.
    """

    # h5py calls hold self._io; chunks of one dataset inflate and compress in parallel.
    lock_entries = False

    def __init__(self, name: str, path: Path, statedir: str | os.PathLike) -> None:
        super().__init__(name, path, statedir)
        if not h5py.is_hdf5(path):
            raise CatmqttError(f"root {os.fspath(path)!r} is not a directory or an HDF5 file")
        # The attributes of every group, by directory path ("" is the file's root group).
        self.groups: dict[str, dict[str, Any]] = {}
        self._file: h5py.File | None = None
        # The file etag of the last scan, if it succeeded; whether one ever did.
        self._stamp: str | None = None
        self._scanned = False
        # Held around every h5py call; scans hold it while they reopen the file.
        self._io = threading.RLock()

    def scan(self) -> dict[str, Entry]:
        try:
            stamp = storage.file_etag(self.path)
        except FileNotFoundError:
            stamp = None
        except OSError as exc:
            return self._failed(f"cannot read {os.fspath(self.path)!r}: {exc.strerror}")
        if stamp is None and not self._scanned:
            raise CatmqttError(f"root {os.fspath(self.path)!r} does not exist")
        if self._scanned and stamp == self._stamp:
            return self.entries
        with self._io:
            # HDF5 caches what it read of a file: only a new handle sees the changes.
            self._close()
            if stamp is None:
                log.warning("%s is gone: serving nothing until it is back", self.path)
                found, groups, skipped = {}, {}, [{"path": "/", "reason": "the file is gone"}]
            else:
                try:
                    self._file = open_file(self.path)
                    found, groups, skipped = self._map(stamp)
                except (CatmqttError, OSError, RuntimeError, ValueError, KeyError) as exc:
                    self._close()
                    return self._failed(str(exc).replace("\n", " "))
            self._stamp = stamp
            self._scanned = True
        self.groups, self.skipped = bounded(groups, skipped)
        self._set_entries(found)
        self._prune(stamp)
        return found

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _failed(self, message: str) -> dict[str, Entry]:
        if not self._scanned:
            raise CatmqttError(message)
        # Until a scan succeeds, chunk reads answer 503 (the file changed).
        log.warning("%s; trying again at the next scan", message)
        return self.entries

    def _map(self, stamp: str) -> tuple[dict[str, Entry], dict[str, dict[str, Any]], list[dict[str, str]]]:
        layout = walk(self._file)
        for h5name, target in layout.external.values():
            layout.skip(h5name, f"an external link to {target}")
        groups: dict[str, dict[str, Any]] = {}
        for path, group in layout.groups.items():
            attrs, problems = read_attrs(group)
            groups[path], more = announced(attrs)
            for problem in problems + more:
                layout.skip(group.name, problem)
        sources: dict[Any, ChunkPlan | None] = {}
        found: dict[str, Entry] = {}
        # A dataset is planned under its own name, before any alias of it.
        for path in sorted(layout.datasets, key=layout.aliased):
            h5name, dset = layout.datasets[path]
            if dset.id not in sources:
                sources[dset.id] = self._plan(layout, h5name, dset, stamp)
            source = sources[dset.id]
            if source is None:
                continue
            etag = hashlib.blake2b(f"{stamp}\0{source.key}".encode(), digest_size=8).hexdigest()
            meta = source.describe(path, etag)
            meta["hdf5"]["name"] = h5name
            found[path] = Entry(source, meta)
        return found, groups, layout.skipped

    def _plan(self, layout: Layout, h5name: str, dset: h5py.Dataset, stamp: str) -> ChunkPlan | None:
        try:
            source = plan(h5name, dset, self._io)
        except Skip as exc:
            layout.skip(h5name, str(exc))
            return None
        except (OSError, RuntimeError, TypeError, ValueError, KeyError) as exc:
            layout.skip(h5name, f"unreadable: {exc}")
            return None
        source.stamp = stamp
        source.vlmeta, problems = announced(source.attrs)
        for problem in source.problems + problems:
            layout.skip(h5name, problem)
        return source

    def _prune(self, stamp: str | None) -> None:
        """Remove the converted chunks of other versions of the file."""
        top = self.statedir / "hdf5"
        if top.is_dir():
            for old in top.iterdir():
                if old.name != stamp:
                    shutil.rmtree(old, ignore_errors=True)

    def _changed(self, source: ChunkPlan) -> bool:
        """Tell whether the file is no longer the version `source` was planned at."""
        try:
            return source.stamp != self._stamp or storage.file_etag(self.path) != source.stamp
        except OSError:
            return True

    def _read_chunk(self, entry: Entry, nchunk: int) -> bytes:
        source: ChunkPlan = entry.source
        saved = self.statedir / "hdf5" / source.stamp / source.key / str(nchunk)
        try:
            return saved.read_bytes()
        except OSError:
            pass
        changing = Changed(entry.meta["path"], f"{entry.meta['path']!r} is changing; try again")
        try:
            data, converted = source.chunk(nchunk, self._io)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            if self._changed(source):
                raise changing from None
            raise CatmqttError(f"cannot read chunk {nchunk} of {entry.meta['path']!r}: {exc}") from None
        if self._changed(source):
            raise changing
        if converted:
            saved.parent.mkdir(parents=True, exist_ok=True)
            tmp = saved.with_name(f".{saved.name}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, saved)
        return data

    def download(self, path: str) -> tuple[Path, str]:
        entry = self.get(path)
        source: ChunkPlan = entry.source
        dst = self.statedir / "hdf5" / source.stamp / f"{source.key}{SUFFIX}"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.{threading.get_ident()}.tmp")
            try:
                for problem in write_array(source, tmp, lambda n: self._read_chunk(entry, n)):
                    log.warning("downloading %s: %s", path, problem)
            except BaseException:
                storage.remove(tmp)
                raise
            os.replace(tmp, dst)
        if self._changed(source):
            raise Changed(path, f"{path!r} is changing; try again")
        return dst, path.rsplit("/", 1)[-1]
