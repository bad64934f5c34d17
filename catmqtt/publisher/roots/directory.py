"""This module holds the directory root: ``.b2nd``, ``.b2frame``, ``.b2`` and plain files.

Threads: as every root's (see the package's docstring). ``DirectoryRoot._seen``,
the unsettled versions of files, is read and written by scans only, which
run one at a time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import blosc2

from ... import fsutil, storage
from ...errors import BadRequest, Changed
from ...topics import parse_path
from . import Entry, Root

log = logging.getLogger(__name__)


class DirectoryRoot(Root):
    """The datasets of one directory tree, as last scanned.

    An entry's source is its file. Blosc2 files are served as they are; plain
    files are compressed once (per etag) into an SChunk in the state directory.

    A file changed less than `settle` seconds ago is being written: a new one
    is not listed yet, and one that was keeps its old entry (whose reads answer
    503 "try again" while the file differs from it) until the file settles.
    """

    def __init__(self, name: str, path: Path, statedir: str | os.PathLike, settle: float = 0.0) -> None:
        super().__init__(name, path, statedir)
        self.settle = settle
        # When this process first saw each unsettled version: {path: (etag, monotonic time)},
        # which counts even where the file's clock is ahead of ours.
        self._seen: dict[str, tuple[str, float]] = {}

    def scan(self) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        seen: dict[str, tuple[str, float]] = {}
        for file, path in self._walk():
            try:
                st = file.stat()
            except OSError as exc:
                log.warning("skipping %s: %s", path, exc.strerror)
                continue
            etag = storage.stat_etag(st)
            old = self.entries.get(path)
            if old is not None and old.meta["etag"] == etag:
                found[path] = old
                continue
            first = self._seen.get(path)
            seen[path] = first if first is not None and first[0] == etag else (etag, time.monotonic())
            if max(time.time() - st.st_mtime, time.monotonic() - seen[path][1]) >= self.settle:
                del seen[path]
                found[path] = self._describe(file, path, etag)
            elif old is not None:
                found[path] = old
        self._seen = seen
        self.unsettled = bool(seen)
        self._set_entries(found)
        return found

    def _walk(self):
        """Yield (file, dataset path) for every servable file under the root."""
        for dirpath, dirnames, filenames in os.walk(self.path):
            top = Path(dirpath)
            kept = []
            for d in sorted(dirnames):
                full = top / d
                if d.startswith(".") or full == self.statedir or full.is_symlink():
                    continue
                if (full / fsutil.STATE_MARKER).exists():
                    log.info("skipping %s: a catmqtt node's state directory", full)
                    continue
                if d.endswith(storage.BLOSC2_SUFFIXES):
                    log.warning("skipping %s: sparse Blosc2 containers are not served", full)
                    continue
                kept.append(d)
            dirnames[:] = kept
            for name in filenames:
                if name.startswith("."):
                    continue
                file = top / name
                rel = file.relative_to(self.path).as_posix()
                try:
                    path = parse_path(rel)
                except BadRequest as exc:
                    log.warning("skipping %s: %s", file, exc)
                    continue
                if file.is_symlink():
                    target = file.resolve()
                    if not target.is_relative_to(self.path) or not target.is_file():
                        log.warning("skipping %s: a link to something outside the root", file)
                        continue
                elif not file.is_file():
                    continue
                yield file, path

    def _describe(self, file: Path, path: str, etag: str) -> Entry:
        entry = None
        if file.suffix in storage.BLOSC2_SUFFIXES:
            handle = storage.open_blosc2(file)
            if handle is not None:
                entry = Entry(file, storage.describe(handle, path, etag), handle)
            else:
                log.warning("%s is not a readable Blosc2 file; serving it as a plain file", path)
        if entry is None:
            entry = Entry(file, storage.describe_file(path, file.stat().st_size, etag))
        entry.digests = self._digests(entry)
        entry.meta["manifest"] = storage.manifest_digest(entry.digests)
        return entry

    def _digests(self, entry: Entry) -> list[str]:
        """Return the digest of every chunk of `entry`, computed once per etag."""
        saved = self.statedir / "manifests" / f"{entry.meta['path']}.json"
        try:
            manifest = json.loads(saved.read_text())
            if (
                manifest["etag"] == entry.meta["etag"]
                and manifest.get("algorithm") == storage.DIGEST_ALGORITHM
                and len(manifest["digests"]) == entry.meta["nchunks"]
            ):
                return manifest["digests"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        with entry.lock:
            schunk = storage.schunk_of(self._handle(entry))
            digests = [storage.chunk_digest(schunk.get_chunk(n)) for n in range(schunk.nchunks)]
        if not self._changed(entry):
            saved.parent.mkdir(parents=True, exist_ok=True)
            tmp = saved.with_name(f".{saved.name}.tmp")
            tmp.write_text(
                json.dumps(
                    {"etag": entry.meta["etag"], "algorithm": storage.DIGEST_ALGORITHM, "digests": digests}
                )
            )
            os.replace(tmp, saved)
        return digests

    def _handle(self, entry: Entry) -> blosc2.NDArray | blosc2.SChunk:
        if entry.handle is None:
            entry.handle = self._compressed(entry)
        return entry.handle

    def _changed(self, entry: Entry) -> bool:
        """Tell whether the file of `entry` is no longer the version described."""
        try:
            return storage.file_etag(entry.source) != entry.meta["etag"]
        except OSError:
            return True

    def _read_chunk(self, entry: Entry, nchunk: int) -> bytes:
        try:
            data = storage.schunk_of(self._handle(entry)).get_chunk(nchunk)
        except (RuntimeError, ValueError, OSError):
            if self._changed(entry):
                raise Changed(entry.meta["path"], f"{entry.meta['path']!r} is changing; try again") from None
            raise
        # Blosc2 files are read in place: bytes read while the file changes
        # may belong to neither version. (Plain files are read from a copy.)
        if entry.meta["kind"] != "file" and self._changed(entry):
            raise Changed(entry.meta["path"], f"{entry.meta['path']!r} is changing; try again")
        return data

    def _compressed(self, entry: Entry) -> blosc2.SChunk:
        """Return the SChunk of a plain file, compressing it once per etag."""
        frame = self.statedir / "files" / f"{entry.meta['path']}.b2frame"
        if frame.exists():
            schunk = storage.open_blosc2(frame)
            if isinstance(schunk, blosc2.SChunk) and schunk.vlmeta.get("etag") == entry.meta["etag"]:
                return schunk
        log.info("compressing %s", entry.meta["path"])
        return storage.compress_file(entry.source, frame, entry.meta["etag"])

    def download(self, path: str) -> tuple[Any, str]:
        entry = self.get(path)
        # Opened, then checked, so that what is sent is the version described,
        # and inside the root. send_file closes it.
        f = open(entry.source.resolve(), "rb")  # noqa: SIM115
        if storage.stat_etag(os.fstat(f.fileno())) != entry.meta["etag"] or not Path(f.name).is_relative_to(
            self.path
        ):
            f.close()
            raise Changed(path, f"{path!r} is changing; try again")
        return f, entry.source.name
