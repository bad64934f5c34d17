"""This package holds the kinds of root a publisher serves.

A root is a set of datasets under one name: a directory of Blosc2 and plain
files (:mod:`.directory`), an offline bundle (:mod:`.bundle`), or an HDF5
file (:mod:`.hdf5`). Each kind scans
its source into entries carrying the metadata announced on MQTT, and serves
their chunks as compressed Blosc2 bytes.

Threads: one scan runs at a time (the publisher's ``_scan_lock``), on the
thread that starts the publisher, its watcher thread or its rescan timer;
HTTP threads read entries and chunks meanwhile. A scan builds a new entries
dict and swaps it in whole, with the root's etag, under ``Root._lock``;
readers take ``root.entries`` once and use that snapshot. ``Root._recent_lock``
guards the chunks kept for their next parts; an entry's ``lock`` is held
around reading its bytes where the kind of root asks for it (an HDF5 root
holds its own ``_io`` lock around every h5py call instead). No two of these
locks are held together.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ... import storage
from ...blocks import block_parts, chunk_nbytes
from ...dtypes import to_jsonable
from ...errors import BadRequest, CatmqttError, NotFound
from ...topics import parse_path

if TYPE_CHECKING:
    from ...schema import DatasetMeta

# The attributes of a directory (an HDF5 group, imported) live in this hidden,
# empty frame of the directory, as vlmeta.
GROUP_ATTRS = ".attrs.b2frame"
# An attribute whose JSON is longer is left out of announcements (not out of imports).
MAX_ANNOUNCED_ATTR = 16 << 10
# What a root's announcement carries of its groups' attributes and of what it
# skipped, in bytes of JSON: together well within schema.MAX_PAYLOAD.
MAX_GROUPS_JSON = 2 << 20
MAX_SKIPPED_JSON = 1 << 20
# The characters of a skipped item's path or reason that are announced.
MAX_SKIPPED_TEXT = 1000


@dataclass
class Entry:
    """One dataset of a root: where it comes from, its metadata and, once opened, its data."""

    source: Any
    meta: DatasetMeta
    handle: Any = None
    # The digest of each compressed chunk, for roots that keep manifests.
    digests: list[str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class ChunkReply:
    """What a request for one chunk is answered with."""

    data: bytes
    # The dataset's etag, and the digest of `data`.
    etag: str
    digest: str
    # The (start, stop) byte ranges of `data` to send when some blocks come first;
    # None to send the whole chunk.
    spans: list[tuple[int, int]] | None = None


class Root:
    """What every kind of root provides; subclasses fill in scanning and reading."""

    # Whether reading a chunk holds its entry's lock (False: the subclass
    # guards its own I/O, so that chunks of one dataset are read in parallel).
    lock_entries = True
    # Chunks read for a part of their bytes are kept, up to this many bytes: a
    # subscriber asks for some blocks of a chunk, then for the rest in ranges.
    recent_bytes = 16 << 20

    def __init__(self, name: str, path: Path, statedir: str | os.PathLike) -> None:
        self.name = name
        self.path = path
        self.statedir = Path(statedir).resolve()
        self.entries: dict[str, Entry] = {}
        # Items of the source that cannot be served: [{"path": ..., "reason": ...}].
        self.skipped: list[dict[str, str]] = []
        # Attributes of directories (HDF5 groups), keyed by directory path ("" is the top).
        self.groups: dict[str, dict[str, Any]] = {}
        self.etag = ""
        # Whether the last scan found files being written (scan again later).
        self.unsettled = False
        self._lock = threading.Lock()
        self._recent: OrderedDict[tuple, bytes] = OrderedDict()
        self._recent_size = 0
        self._recent_lock = threading.Lock()

    def scan(self) -> dict[str, Entry]:
        """Look at the source again, reusing what did not change; return the entries."""
        raise NotImplementedError

    def _read_chunk(self, entry: Entry, nchunk: int) -> bytes:
        """Return the compressed bytes of one chunk of `entry` (entry.lock is held)."""
        raise NotImplementedError

    def download(self, path: str) -> tuple[Path | BinaryIO, str]:
        """Return a file (a path, or an open binary file) holding the whole dataset
        `path`, and the name to give it."""
        raise NotImplementedError

    def _set_entries(self, found: dict[str, Entry]) -> None:
        digest = hashlib.blake2b(digest_size=8)
        for path in sorted(found):
            digest.update(f"{path}\0{found[path].meta['etag']}\0".encode())
        with self._lock:
            self.entries = found
            self.etag = digest.hexdigest()

    def get(self, path: str) -> Entry:
        """Return the entry of dataset `path`, or raise NotFound."""
        entry = self.entries.get(parse_path(path))
        if entry is None:
            raise NotFound(f"no dataset {path!r} in root {self.name!r}")
        return entry

    def manifest(self, path: str) -> dict[str, Any]:
        """Return the chunk manifest of `path`: its etag and the digest of every chunk."""
        entry = self.get(path)
        if entry.digests is None:
            raise NotFound(f"root {self.name!r} keeps no chunk manifest for {path!r}")
        return {"path": path, "etag": entry.meta["etag"], "digests": entry.digests}

    def chunk(self, path: str, nchunk: int, *, part: bool = False) -> tuple[bytes, str]:
        """Return the compressed bytes of chunk `nchunk` of `path`, and the dataset's etag.

        With `part` (only part of the bytes will be sent), the chunk is kept a
        moment for the next parts.
        """
        entry = self.get(path)
        nchunks = entry.meta["nchunks"]
        if not 0 <= nchunk < nchunks:
            raise BadRequest(f"chunk {nchunk} is out of range: {path!r} has {nchunks} chunks")
        etag = entry.meta["etag"]
        key = (entry.meta["path"], etag, nchunk)
        with self._recent_lock:
            data = self._recent.get(key)
        if data is not None:
            return data, etag
        if not self.lock_entries:
            data = self._read_chunk(entry, nchunk)
        else:
            with entry.lock:
                data = self._read_chunk(entry, nchunk)
        if part:
            self._keep(key, data)
        return data, etag

    def chunk_reply(
        self, path: str, nchunk: int, blocks: range | None = None, *, ranged: bool = False
    ) -> ChunkReply:
        """Return the answer to a request for chunk `nchunk` of `path`: its bytes, its
        digest and, when only `blocks` of it are wanted first, the byte spans holding
        them. `ranged`: the request asks for a byte range of the chunk."""
        entry = self.get(path)
        data, etag = self.chunk(path, nchunk, part=blocks is not None or ranged)
        # The manifest has the digest already, unless the dataset changed meanwhile.
        known = entry.digests is not None and entry.meta["etag"] == etag
        digest = entry.digests[nchunk] if known else storage.chunk_digest(data)
        # Some blocks first: the chunk's header, block offsets and those blocks.
        # (The whole chunk if its blocks cannot be sent apart.)
        spans = None if blocks is None else block_parts(data, blocks, chunk_nbytes(entry.meta, nchunk))
        return ChunkReply(data, etag, digest, spans)

    def _keep(self, key: tuple, data: bytes) -> None:
        if len(data) > self.recent_bytes:
            return
        with self._recent_lock:
            if key not in self._recent:
                self._recent[key] = data
                self._recent_size += len(data)
            while self._recent_size > self.recent_bytes:
                self._recent_size -= len(self._recent.popitem(last=False)[1])


def announced(attrs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Return `attrs` made JSON-safe for an announcement, leaving out the too large ones."""
    out: dict[str, Any] = {}
    problems = []
    for name, value in attrs.items():
        safe = to_jsonable(value)
        size = len(json.dumps(safe))
        if size > MAX_ANNOUNCED_ATTR:
            problems.append(f"attribute {name!r} is too large to announce ({size} bytes of JSON)")
        else:
            out[name] = safe
    return out, problems


def bounded(
    groups: dict[str, dict[str, Any]], skipped: list[dict[str, str]]
) -> tuple[dict[str, dict[str, Any]], list[dict[str, str]]]:
    """Return `groups` and `skipped` as a root's announcement carries them: the
    groups whose attributes fit in MAX_GROUPS_JSON (the others are skipped, saying
    so), and the skipped items that fit in MAX_SKIPPED_JSON, then one saying how
    many more were left out."""
    kept: dict[str, dict[str, Any]] = {}
    skipped = list(skipped)
    room = MAX_GROUPS_JSON
    for path in sorted(groups):
        size = len(json.dumps({path: groups[path]}))
        if size > room:
            reason = "its attributes are left out of the announcement: too many in all"
            skipped.append({"path": f"/{path}", "reason": reason})
            continue
        room -= size
        kept[path] = groups[path]
    out: list[dict[str, str]] = []
    room = MAX_SKIPPED_JSON
    for n, item in enumerate(skipped):
        item = {key: item[key][:MAX_SKIPPED_TEXT] for key in ("path", "reason")}
        size = len(json.dumps(item))
        if size > room:
            reason = f"{len(skipped) - n} more skipped items are left out (the publisher's log has them)"
            out.append({"path": "...", "reason": reason})
            break
        room -= size
        out.append(item)
    return kept, out


def open_root(name: str, path: str | os.PathLike, statedir: str | os.PathLike, settle: float = 0.0) -> Root:
    """Return the root `name` of `path`: a directory, an offline bundle (a ZIP file), or
    an HDF5 file.

    In a directory, a file changed less than `settle` seconds ago is taken as
    being written, and not described until it has been left alone that long.
    """
    resolved = Path(path).resolve()
    if not resolved.exists():
        raise CatmqttError(f"root {os.fspath(path)!r} does not exist")
    if resolved.is_dir():
        from .directory import DirectoryRoot

        return DirectoryRoot(name, resolved, statedir, settle)
    if zipfile.is_zipfile(resolved):
        from .bundle import BundleRoot

        return BundleRoot(name, resolved, statedir)
    # Imported here: h5py is needed by HDF5 roots only (a CatmqttError says so if it is missing).
    from .hdf5 import HDF5Root

    return HDF5Root(name, resolved, statedir)
