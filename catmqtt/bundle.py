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
from .slices import chunks_touched, forward, select
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
# The largest catalog read (it is read whole into memory).
MAX_CATALOG = 256 << 20
# What the catalog says of a dataset that its file must say too.
_LAYOUT = ("shape", "chunks", "blocks", "nchunks", "chunksize", "typesize", "nbytes")
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
            info = self._zip.getinfo(CATALOG_NAME)
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > MAX_CATALOG:
                self._zip.close()
                raise BadRequest(
                    f"{self.path} is not a catmqtt bundle: its catalog is compressed, or over"
                    f" {MAX_CATALOG} bytes"
                )
            catalog = self._zip.read(CATALOG_NAME)
        except (OSError, zipfile.BadZipFile, KeyError, EOFError) as exc:
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
        # The chunks of each dataset checked against its manifest (or, without one,
        # the datasets whose file passed its CRC, as -1).
        self._sound: dict[str, set[int]] = {}

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

    def _info(self, path: str) -> zipfile.ZipInfo:
        """Return the entry of dataset `path`'s file, which must be stored, not compressed."""
        self.meta(path)
        name = member(self.root, path)
        try:
            info = self._zip.getinfo(name)
        except KeyError:
            raise BadRequest(f"{self.path.name} has no file {name}, which its catalog lists") from None
        if info.compress_type != zipfile.ZIP_STORED:
            raise BadRequest(f"{name} is compressed in {self.path.name}: bundles store their files")
        return info

    def offset(self, path: str) -> tuple[int, int]:
        """Return where the bytes of dataset `path` start in the bundle, and how many there are."""
        info = self._info(path)
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            header = f.read(_LOCAL_HEADER.size)
            if len(header) < _LOCAL_HEADER.size:
                raise BadRequest(f"{self.path.name} ends inside the header of {info.filename}")
            fields = _LOCAL_HEADER.unpack(header)
            name = f.read(fields[-2])
        if fields[0] != b"PK\x03\x04" or name != info.filename.encode():
            raise BadRequest(f"the entry of {info.filename} in {self.path.name} points at something else")
        start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
        if start + info.file_size > self.path.stat().st_size:
            raise BadRequest(f"{self.path.name} ends inside {info.filename}")
        return start, info.file_size

    def open_member(self, path: str) -> IO[bytes]:
        """Return the file of dataset `path`, open for reading (its CRC checked at its end)."""
        return self._zip.open(self._info(path))

    def container(self, path: str) -> Any:
        """Return dataset `path` opened by Blosc2 where it lies in the bundle (an array or
        a super-chunk), kept open for the next reads; BadRequest if it is not what the
        catalog says."""
        import blosc2

        from .dtypes import dtype_from_json
        from .storage import describe

        with self._lock:
            if path not in self._open:
                meta = self.meta(path)
                offset, _ = self.offset(path)
                try:
                    handle = blosc2.open(str(self.path), mode="r", offset=offset)
                    found = describe(handle, path, meta["etag"], meta["kind"])
                except (RuntimeError, ValueError, TypeError, OSError) as exc:
                    raise BadRequest(f"{path} in {self.path.name} is not a Blosc2 file: {exc}") from None
                if isinstance(handle, blosc2.NDArray) != (meta["kind"] == "ndarray") or any(
                    found.get(key) != meta.get(key) for key in _LAYOUT
                ):
                    raise BadRequest(f"{path} in {self.path.name} is not what its catalog says")
                if meta["kind"] == "ndarray" and dtype_from_json(found["dtype"]) != dtype_from_json(
                    meta["dtype"]
                ):
                    raise BadRequest(f"{path} in {self.path.name} is not of the dtype its catalog says")
                self._open[path] = handle
            return self._open[path]

    def _check(self, path: str, numbers: list[int]) -> None:
        """Check chunks `numbers` of dataset `path` against its manifest (without one, its
        whole file against its CRC), once each; BadRequest if one is damaged."""
        from .storage import chunk_digest, schunk_of

        sound = self._sound.setdefault(path, set())
        digests = self.manifest(path)
        meta = self.meta(path)
        if meta["kind"] == "file" and self._info(path).file_size != meta["nbytes"]:
            raise BadRequest(f"{path} in {self.path.name} is not what its catalog says")
        if digests is None or meta["kind"] == "file":
            if -1 not in sound:
                try:
                    with self.open_member(path) as f:
                        while f.read(PIECE):
                            pass
                except zipfile.BadZipFile as exc:
                    raise BadRequest(f"{path} is damaged in {self.path.name}: {exc}") from None
                sound.add(-1)
            return
        schunk = schunk_of(self.container(path))
        for n in numbers:
            if n in sound:
                continue
            if not 0 <= n < len(digests) or chunk_digest(schunk.get_chunk(n)) != digests[n]:
                raise BadRequest(
                    f"{path} is damaged in {self.path.name}: chunk {n} is not what its manifest says"
                )
            sound.add(n)

    def read(self, path: str, key: tuple) -> np.ndarray | bytes:
        """Return selection `key` of dataset `path`."""
        import numpy as np

        from .storage import read_array, read_stream_items

        meta = self.meta(path)
        sel = select(key, meta["shape"])
        self._check(path, chunks_touched(sel, meta["shape"], meta["chunks"]))
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
        """Write the file of dataset `path` at `dest` (its CRC checked)."""
        try:
            with self.open_member(path) as f, open(dest, "wb") as out:
                while piece := f.read(PIECE):
                    out.write(piece)
        except zipfile.BadZipFile as exc:
            raise BadRequest(f"{path} is damaged in {self.path.name}: {exc}") from None


def _meta(text: str, path: str) -> DatasetMeta:
    """Return the metadata of dataset `path` that a catalog holds as `text`, checked."""
    meta = json.loads(text)
    if not isinstance(meta, dict):
        raise ValueError(f"the metadata of {path!r} is not a JSON object")
    return parse_dataset(meta, path)
