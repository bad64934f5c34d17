"""This module holds the directory root: ``.b2nd``, ``.b2frame``, ``.b2`` and plain files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import blosc2

from .. import storage
from ..errors import BadRequest
from ..topics import parse_path
from . import Entry, Root

log = logging.getLogger(__name__)


class DirectoryRoot(Root):
    """The datasets of one directory tree, as last scanned.

    An entry's source is its file. Blosc2 files are served as they are; plain
    files are compressed once (per etag) into an SChunk in the state directory.
    """

    def scan(self) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        for file, path in self._walk():
            try:
                etag = storage.file_etag(file)
            except OSError as exc:
                log.warning("skipping %s: %s", path, exc.strerror)
                continue
            old = self.entries.get(path)
            if old is not None and old.meta["etag"] == etag:
                found[path] = old
            else:
                found[path] = self._describe(file, path, etag)
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
        if file.suffix in storage.BLOSC2_SUFFIXES:
            handle = storage.open_blosc2(file)
            if handle is not None:
                return Entry(file, storage.describe(handle, path, etag), handle)
            log.warning("%s is not a readable Blosc2 file; serving it as a plain file", path)
        return Entry(file, storage.describe_file(path, file.stat().st_size, etag))

    def _read_chunk(self, entry: Entry, nchunk: int) -> bytes:
        if entry.handle is None:
            entry.handle = self._compressed(entry)
        return storage.schunk_of(entry.handle).get_chunk(nchunk)

    def _compressed(self, entry: Entry) -> blosc2.SChunk:
        """Return the SChunk of a plain file, compressing it once per etag."""
        frame = self.statedir / "files" / f"{entry.meta['path']}.b2frame"
        if frame.exists():
            schunk = storage.open_blosc2(frame)
            if isinstance(schunk, blosc2.SChunk) and schunk.vlmeta.get("etag") == entry.meta["etag"]:
                return schunk
        log.info("compressing %s", entry.meta["path"])
        return storage.compress_file(entry.source, frame, entry.meta["etag"])

    def download(self, path: str) -> tuple[Path, str]:
        entry = self.get(path)
        return entry.source, entry.source.name
