"""This module holds catmqtt's offline bundles: what they hold, writing them as a
stream, and reading them in-process.

A bundle is a ZIP file of one root, or of a directory of it: each dataset as
an ordinary file under ``data/<root>/<path>`` (a contiguous Blosc2 file, or a
plain file as itself), stored, not deflated, so that Blosc2 reads it where it
lies; and ``catalog.sqlite``, which describes the root (its announcement)
and every dataset (its metadata, etag and chunk manifest), and names the
datasets left out and why (`CATALOG`).

The subscriber writes bundles (``GET /api/bundle/...``) with `ZipStream`, one
piece at a time, whatever their size; `open_bundle` reads one with the
library's `Root`/`Dataset` interface, with no server and no network.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import struct
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import BadRequest, NotFound
from .schema import parse_dataset
from .slices import forward, select
from .topics import parse_root_name

if TYPE_CHECKING:
    import numpy as np

    from .schema import DatasetMeta

CATALOG_NAME = "catalog.sqlite"
DATA = "data"
FORMAT = 1
CATALOG = """
CREATE TABLE bundle (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE root (name TEXT PRIMARY KEY, info TEXT NOT NULL);
CREATE TABLE datasets (
    path TEXT PRIMARY KEY,
    meta TEXT NOT NULL,
    etag TEXT NOT NULL,
    manifest TEXT,
    member TEXT NOT NULL
);
CREATE TABLE missing (path TEXT PRIMARY KEY, reason TEXT NOT NULL);
"""
# Bytes copied into the ZIP stream at a time.
PIECE = 1 << 20
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")


def member(root: str, path: str) -> str:
    """Return the name in a bundle of dataset `path` of `root`."""
    return f"{DATA}/{root}/{path}"


def write_catalog(
    dest: Path,
    root: str,
    info: dict[str, Any],
    datasets: list[tuple[DatasetMeta, list[str] | None]],
    missing: list[tuple[str, str]],
    about: dict[str, str],
) -> None:
    """Write the catalog of a bundle of `root` at `dest`: its announcement `info`,
    each dataset's metadata and manifest (its chunk digests, or None), the datasets
    `missing` (path, reason), and `about` the bundle (who made it, of what)."""
    with sqlite3.connect(dest) as db:
        db.executescript(CATALOG)
        db.executemany(
            "INSERT INTO bundle VALUES (?, ?)",
            [
                ("format", str(FORMAT)),
                ("made", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
                *about.items(),
            ],
        )
        db.execute("INSERT INTO root VALUES (?, ?)", (root, json.dumps(info)))
        db.executemany(
            "INSERT INTO datasets VALUES (?, ?, ?, ?, ?)",
            [
                (
                    meta["path"],
                    json.dumps(meta),
                    meta["etag"],
                    None if d is None else json.dumps(d),
                    member(root, meta["path"]),
                )
                for meta, d in datasets
            ],
        )
        db.executemany("INSERT INTO missing VALUES (?, ?)", missing)
    db.close()


class _Sink(io.RawIOBase):
    """Where `ZipStream` has zipfile write: bytes kept until taken, and a count."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class ZipStream:
    """A ZIP file written as a stream of bytes: its members are stored, not deflated
    (ZIP64 where they need it), each followed by its sizes and CRC (the stream
    cannot go back to write them first)."""

    def __init__(self) -> None:
        self._sink = _Sink()
        self._zip = zipfile.ZipFile(self._sink, "w", zipfile.ZIP_STORED, allowZip64=True)

    def add(self, name: str, f: IO[bytes]) -> Iterator[bytes]:
        """Yield the bytes that add the contents of `f` as member `name`."""
        info = zipfile.ZipInfo(name, time.gmtime()[:6])
        info.compress_type = zipfile.ZIP_STORED
        with self._zip.open(info, "w", force_zip64=True) as out:
            while piece := f.read(PIECE):
                out.write(piece)
                yield self._sink.take()
        yield self._sink.take()

    def close(self) -> bytes:
        """Return the last bytes: the ZIP's central directory."""
        self._zip.close()
        return self._sink.take()


class Bundle:
    """A bundle opened for reading: its catalog, and its members where they lie."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
            catalog = self._zip.read(CATALOG_NAME)
        except (OSError, zipfile.BadZipFile, KeyError) as exc:
            raise BadRequest(f"{self.path} is not a catmqtt bundle: {exc}") from None
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            self._db.deserialize(catalog)
            ((self.root, info),) = self._db.execute("SELECT name, info FROM root").fetchall()
            parse_root_name(self.root)
            self.info = json.loads(info)
            if not isinstance(self.info, dict):
                raise ValueError("the root's announcement is not a JSON object")
            self.metas = {
                path: _meta(meta, path) for path, meta in self._db.execute("SELECT path, meta FROM datasets")
            }
        except (sqlite3.Error, ValueError, TypeError) as exc:
            self.close()
            raise BadRequest(f"{self.path} has no readable catalog: {str(exc)[:200]}") from None
        self._lock = threading.Lock()
        self._open: dict[str, Any] = {}

    def close(self) -> None:
        self._zip.close()
        self._db.close()

    def missing(self) -> dict[str, str]:
        """Return the datasets left out of the bundle, and why."""
        return dict(self._db.execute("SELECT path, reason FROM missing"))

    def manifest(self, path: str) -> list[str] | None:
        row = self._db.execute("SELECT manifest FROM datasets WHERE path=?", (path,)).fetchone()
        return None if row is None or row[0] is None else json.loads(row[0])

    def meta(self, path: str) -> DatasetMeta:
        meta = self.metas.get(path)
        if meta is None:
            reason = self.missing().get(path)
            if reason is not None:
                raise NotFound(f"{self.root}/{path} is not in {self.path.name}: {reason}")
            raise NotFound(f"no dataset {path!r} in bundle {self.path.name} (root {self.root!r})")
        return meta

    def offset(self, path: str) -> tuple[int, int]:
        """Return where the bytes of dataset `path` start in the bundle, and how many there are."""
        info = self._zip.getinfo(member(self.root, path))
        if info.compress_type != zipfile.ZIP_STORED:
            raise BadRequest(f"{info.filename} is compressed in {self.path.name}: bundles store their files")
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            header = f.read(_LOCAL_HEADER.size)
        fields = _LOCAL_HEADER.unpack(header)
        return info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1], info.file_size

    def open_member(self, path: str) -> IO[bytes]:
        """Return the file of dataset `path`, open for reading (its CRC checked at its end)."""
        self.meta(path)
        return self._zip.open(member(self.root, path))

    def container(self, path: str) -> Any:
        """Return dataset `path` opened by Blosc2 where it lies in the bundle (an array or
        a super-chunk), kept open for the next reads."""
        import blosc2

        with self._lock:
            if path not in self._open:
                offset, _ = self.offset(path)
                self._open[path] = blosc2.open(str(self.path), mode="r", offset=offset)
            return self._open[path]

    def read(self, path: str, key: tuple) -> np.ndarray | bytes:
        """Return selection `key` of dataset `path`."""
        import numpy as np

        from .storage import read_array, read_stream_items

        meta = self.meta(path)
        sel = select(key, meta["shape"])
        start_key, flip = forward(sel)
        if meta["kind"] == "ndarray":
            return read_array(self.container(path), start_key, flip)
        if meta["kind"] == "schunk":
            return read_stream_items(self.container(path), start_key[0], bool(flip), meta["typesize"])
        offset, size = self.offset(path)
        item = start_key[0]
        first, last = (item, item) if isinstance(item, int) else (item.start, max(item.start, item.stop - 1))
        with open(self.path, "rb") as f:
            f.seek(offset + first)
            data = f.read(min(last + 1, size) - first)
        if isinstance(item, int):
            return data
        items = np.frombuffer(data, dtype="V1")[:: item.step]
        return (items[::-1] if flip else items).tobytes()

    def save(self, path: str, dest: Path) -> None:
        """Write the file of dataset `path` at `dest`."""
        offset, size = self.offset(path)
        with open(self.path, "rb") as f, open(dest, "wb") as out:
            f.seek(offset)
            left = size
            while left:
                piece = f.read(min(PIECE, left))
                if not piece:
                    raise BadRequest(f"{self.path.name} ends inside {path}")
                out.write(piece)
                left -= len(piece)


def _meta(text: str, path: str) -> DatasetMeta:
    """Return the metadata of dataset `path` that a catalog holds as `text`, checked."""
    meta = json.loads(text)
    if not isinstance(meta, dict):
        raise ValueError(f"the metadata of {path!r} is not a JSON object")
    return parse_dataset(meta, path)
