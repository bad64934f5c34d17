"""This module holds the directory root: ``.b2nd``, ``.b2frame``, ``.b2`` and plain files.

Threads: as every root's (see the package's docstring). ``DirectoryRoot._seen``
(the unsettled versions of files), ``_logged`` and ``_attrs`` are read and
written by scans only, which run one at a time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blosc2

from ... import fsutil, storage
from ...errors import BadRequest, Changed
from ...topics import parse_path
from . import GROUP_ATTRS, Entry, Root, announced, bounded

log = logging.getLogger(__name__)

# Links to directories followed in one walk of a root, at most: beyond, a few
# links to links could make the tree a root shows exponentially large.
MAX_FOLLOWED = 10_000


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
        # What the last scan skipped (logged once), and the attributes it read:
        # {GROUP_ATTRS file: (its etag, attributes, problems)}.
        self._logged: set[tuple[str, str]] = set()
        self._attrs: dict[Path, tuple[str, dict[str, Any], list[str]]] = {}

    def scan(self) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        seen: dict[str, tuple[str, float]] = {}
        walk = _Walk(self)
        for file, path in walk.files():
            try:
                st = file.stat()
            except OSError as exc:
                walk.skip(path, exc.strerror or str(exc))
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
        # Each reason is logged once, when it is new.
        for item in walk.skipped:
            if (item["path"], item["reason"]) not in self._logged:
                log.warning("skipping %s: %s", item["path"], item["reason"])
        self._logged = {(item["path"], item["reason"]) for item in walk.skipped}
        self._attrs = walk.attrs
        self.groups, self.skipped = bounded(walk.groups, walk.skipped)
        self._set_entries(found)
        return found

    def read_attrs(self, frame: Path) -> tuple[str, dict[str, Any], list[str]]:
        """Return the etag of a directory's GROUP_ATTRS `frame`, the attributes it
        keeps as announced, and the problems met; read once per version of the frame."""
        try:
            etag = storage.file_etag(frame)
        except OSError as exc:
            return "", {}, [f"its attributes are unreadable: {exc.strerror}"]
        known = self._attrs.get(frame)
        if known is not None and known[0] == etag:
            return known
        try:
            schunk = blosc2.open(str(frame), mode="r")
            values = schunk.vlmeta.getall()
        except (OSError, RuntimeError, ValueError, TypeError, KeyError) as exc:
            return etag, {}, [f"its attributes are unreadable: {exc or type(exc).__name__}"]
        return (etag, *announced(values))

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
        schunk = storage.file_frame(frame, entry.meta["etag"])
        if schunk is not None:
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


class _Walk:
    """One walk of a directory root: the files it serves, what it skips and why,
    and the attributes of its directories.

    Links to directories inside the root are followed as aliases (the files
    under the link are served under its name too), as an HDF5 root follows
    soft links; a link to a directory that contains it (a loop) is not.
    """

    def __init__(self, root: DirectoryRoot) -> None:
        self.root = root
        self.skipped: list[dict[str, str]] = []
        self.groups: dict[str, dict[str, Any]] = {}
        self.attrs: dict[Path, tuple[str, dict[str, Any], list[str]]] = {}
        self._followed = 0

    def skip(self, rel: str, reason: str) -> None:
        """Record that `rel` (a path in the root, "" for the root) is not served, and why."""
        self.skipped.append({"path": f"/{rel}", "reason": reason})

    def files(self) -> Iterator[tuple[Path, str]]:
        """Yield (file, dataset path) for every servable file under the root, sorted."""
        # (directory as reached, its path in the root, the real paths of it and its parents)
        stack = [(self.root.path, "", (self.root.path,))]
        while stack:
            top, rel, ancestors = stack.pop()
            self._group(top, rel)
            try:
                names = sorted(os.listdir(top))
            except OSError as exc:
                self.skip(rel, f"unreadable: {exc.strerror}")
                continue
            below = []
            for name in names:
                if name.startswith("."):
                    continue
                full = top / name
                child = f"{rel}/{name}" if rel else name
                try:
                    parse_path(child)
                except BadRequest as exc:
                    self.skip(child, str(exc))
                    continue
                if full.is_dir():
                    # Resolving costs a system call a path component: only links need it.
                    real = full.resolve() if full.is_symlink() else ancestors[-1] / name
                    if self._enter(full, real, child, ancestors):
                        below.append((full, child, (*ancestors, real)))
                elif self._servable(full, child):
                    yield full, child
            stack.extend(reversed(below))

    def _enter(self, full: Path, real: Path, rel: str, ancestors: tuple[Path, ...]) -> bool:
        """Tell whether to walk into directory `full`, recording why not if it is skipped."""
        root = self.root
        if real == root.statedir or real.is_relative_to(root.statedir):
            return False
        link = full.is_symlink()
        if link and not real.is_relative_to(root.path):
            self.skip(rel, "a link to something outside the root")
        elif link and real in ancestors:
            target = real.relative_to(root.path).as_posix()
            self.skip(rel, f"a link to /{'' if target == '.' else target}, which contains it (a loop)")
        elif (real / fsutil.STATE_MARKER).exists():
            self.skip(rel, "a catmqtt node's state directory")
        elif full.name.endswith(storage.BLOSC2_SUFFIXES) or real.name.endswith(storage.BLOSC2_SUFFIXES):
            self.skip(rel, "a sparse Blosc2 container, which is not served")
        elif link and self._followed >= MAX_FOLLOWED:
            self.skip(rel, f"a link to a directory, beyond the {MAX_FOLLOWED} followed in a root")
        else:
            self._followed += link
            return True
        return False

    def _servable(self, full: Path, rel: str) -> bool:
        """Tell whether the file `full` is served, recording why not if it is skipped."""
        if full.is_symlink():
            if not full.exists():
                try:
                    target = os.readlink(full)
                except OSError:
                    target = "?"
                # What import made of an external link: "FILE:/PATH", pointing nowhere.
                kind = "an external link" if ":/" in target else "a dangling link"
                self.skip(rel, f"{kind} to {target}")
                return False
            real = full.resolve()
            if not real.is_relative_to(self.root.path):
                self.skip(rel, "a link to something outside the root")
                return False
            if real.is_relative_to(self.root.statedir):
                self.skip(rel, "a link into the publisher's state directory")
                return False
        if not full.is_file():
            self.skip(rel, "not a regular file")
            return False
        return True

    def _group(self, top: Path, rel: str) -> None:
        """Record the attributes of directory `top`, if import stored some."""
        frame = top / GROUP_ATTRS
        if not frame.is_file():
            return
        _, attrs, problems = self.attrs[frame] = self.root.read_attrs(frame)
        for problem in problems:
            self.skip(rel, problem)
        if attrs:
            self.groups[rel] = attrs
