"""This module holds the Blosc2 side of datasets: reading, describing, storing.

Shared by the publisher (which describes and serves its files) and the
subscriber's cache (which rebuilds containers from chunk bytes). Chunks are
always moved as the compressed bytes Blosc2 stored: never decompressed and
recompressed on the way.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import blosc2
import numpy as np
import xxhash

from .dtypes import dtype_from_json, dtype_to_json, to_jsonable
from .errors import BadRequest, Changed

if TYPE_CHECKING:
    from .schema import DatasetMeta

BLOSC2_SUFFIXES = (".b2nd", ".b2frame", ".b2")
# Plain files are cut into chunks of this many bytes.
FILE_CHUNKSIZE = 1 << 20
# How chunk digests are computed; saved manifests name it, so a change recomputes them.
DIGEST_ALGORITHM = "xxh3-128"
FILE_CPARAMS = blosc2.CParams(typesize=1, codec=blosc2.Codec.ZSTD, clevel=5)


def chunk_digest(data: bytes) -> str:
    """Return the digest of one compressed chunk, as manifests list it.

    XXH3 (128 bits) checks integrity and identity, not authenticity: it runs
    at memory speed (~20 GB/s), where BLAKE2b took as long as the transfer.
    """
    return xxhash.xxh3_128_hexdigest(data)


def manifest_digest(digests: list[str]) -> str:
    """Return one digest standing for a whole manifest."""
    return xxhash.xxh3_128_hexdigest("\n".join(digests).encode())


def file_etag(path: Path) -> str:
    """Return a tag that changes whenever the file at `path` changes."""
    return stat_etag(path.stat())


def stat_etag(st: os.stat_result) -> str:
    """Return the tag of a file from its stat: modification time and size."""
    return f"{st.st_mtime_ns:x}-{st.st_size:x}"


def cparams_to_json(cparams: blosc2.CParams) -> dict[str, Any]:
    """Return `cparams` as JSON, with enum members by name."""

    def name(value: Any) -> Any:
        return getattr(value, "name", value)

    return {
        "codec": name(cparams.codec),
        "codec_meta": cparams.codec_meta,
        "clevel": cparams.clevel,
        "typesize": cparams.typesize,
        "blocksize": cparams.blocksize,
        "splitmode": name(cparams.splitmode),
        "filters": [name(f) for f in cparams.filters],
        "filters_meta": list(cparams.filters_meta),
        "use_dict": bool(cparams.use_dict),
    }


def cparams_from_json(obj: dict[str, Any]) -> blosc2.CParams:
    """Return the CParams that `cparams_to_json` gave `obj` for."""

    def member(enum: type, value: Any) -> Any:
        return enum[value] if isinstance(value, str) else enum(value)

    try:
        return blosc2.CParams(
            codec=member(blosc2.Codec, obj["codec"]),
            codec_meta=int(obj.get("codec_meta", 0)),
            clevel=int(obj["clevel"]),
            typesize=int(obj["typesize"]),
            blocksize=int(obj.get("blocksize", 0)),
            splitmode=member(blosc2.SplitMode, obj.get("splitmode", "AUTO_SPLIT")),
            filters=[member(blosc2.Filter, f) for f in obj["filters"]],
            filters_meta=[int(m) for m in obj["filters_meta"]],
            use_dict=bool(obj.get("use_dict", False)),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise BadRequest(f"invalid cparams {obj!r}: {exc}") from None


def open_blosc2(path: Path) -> blosc2.NDArray | blosc2.SChunk | None:
    """Open a Blosc2 file read-only; None if it is not one we can serve."""
    try:
        obj = blosc2.open(str(path), mode="r")
    except (RuntimeError, ValueError, OSError, KeyError):
        return None
    return obj if isinstance(obj, blosc2.NDArray | blosc2.SChunk) else None


def describe(
    obj: blosc2.NDArray | blosc2.SChunk, path: str, etag: str, kind: str | None = None
) -> DatasetMeta:
    """Return the metadata of an opened dataset, as announced and served."""
    schunk = obj.schunk if isinstance(obj, blosc2.NDArray) else obj
    meta: DatasetMeta = {"path": path}
    if isinstance(obj, blosc2.NDArray):
        meta.update(
            kind="ndarray",
            shape=list(obj.shape),
            dtype=dtype_to_json(obj.dtype),
            chunks=list(obj.chunks),
            blocks=list(obj.blocks),
        )
    else:
        meta.update(
            kind=kind or "schunk",
            shape=[schunk.nbytes // schunk.typesize],
            chunks=[schunk.chunksize // schunk.typesize],
        )
    meta.update(
        nchunks=schunk.nchunks,
        chunksize=schunk.chunksize,
        typesize=schunk.typesize,
        nbytes=schunk.nbytes,
        cbytes=schunk.cbytes,
        cratio=round(schunk.cratio, 3),
        cparams=cparams_to_json(schunk.cparams),
        vlmeta=to_jsonable(schunk.vlmeta.getall()),
        etag=etag,
    )
    return meta


def describe_file(path: str, size: int, etag: str) -> DatasetMeta:
    """Return the metadata of a plain file, before it is compressed."""
    chunks = min(size, FILE_CHUNKSIZE) or FILE_CHUNKSIZE
    return {
        "path": path,
        "kind": "file",
        "shape": [size],
        "chunks": [chunks],
        "nchunks": -(-size // FILE_CHUNKSIZE),
        "chunksize": chunks,
        "typesize": 1,
        "nbytes": size,
        "cparams": cparams_to_json(FILE_CPARAMS),
        "vlmeta": {},
        "etag": etag,
    }


def compress_file(src: Path, dst: Path, etag: str) -> blosc2.SChunk:
    """Compress the plain file `src` into the SChunk frame `dst`, atomically."""

    def unchanged() -> None:
        # A file written while being read would give a frame of neither version.
        if file_etag(src) != etag:
            raise Changed(src.name, f"{src.name!r} is changing; try again")

    with open(src, "rb") as f:
        return compress_stream(f, dst, etag, unchanged)


def compress_stream(
    f: BinaryIO, dst: Path, etag: str, check: Callable[[], None] | None = None
) -> blosc2.SChunk:
    """Compress what `f` reads into the SChunk frame `dst` of a plain file of `etag`,
    atomically: `check`, called once it is written, may refuse it by raising."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{threading.get_ident()}.tmp")
    try:
        schunk = blosc2.SChunk(
            chunksize=FILE_CHUNKSIZE, urlpath=str(tmp), contiguous=True, cparams=FILE_CPARAMS, mode="w"
        )
        while data := f.read(FILE_CHUNKSIZE):
            schunk.append_data(data)
        schunk.vlmeta["etag"] = etag
        del schunk
        if check is not None:
            check()
    except BaseException:
        remove(tmp)
        raise
    os.replace(tmp, dst)
    return blosc2.open(str(dst), mode="r")


def create_sparse(meta: DatasetMeta, urlpath: Path) -> blosc2.NDArray | blosc2.SChunk:
    """Create an empty sparse container (one file per chunk) shaped like `meta`."""
    remove(urlpath)
    urlpath.parent.mkdir(parents=True, exist_ok=True)
    return create_empty(meta, urlpath, contiguous=False)


def create_empty(meta: DatasetMeta, urlpath: Path, contiguous: bool) -> blosc2.NDArray | blosc2.SChunk:
    """Create a container shaped like `meta` at `urlpath` whose chunks are all
    uninitialised (special chunks, which take no room), each to be replaced."""
    cparams = cparams_from_json(meta["cparams"])
    if meta["kind"] == "ndarray":
        return blosc2.empty(
            tuple(meta["shape"]),
            dtype=dtype_from_json(meta["dtype"]),
            chunks=tuple(meta["chunks"]),
            blocks=tuple(meta["blocks"]),
            urlpath=str(urlpath),
            contiguous=contiguous,
            cparams=cparams,
            mode="w",
        )
    schunk = blosc2.SChunk(
        chunksize=meta["chunksize"], urlpath=str(urlpath), contiguous=contiguous, cparams=cparams, mode="w"
    )
    if meta["shape"][0]:
        schunk.fill_special(meta["shape"][0], blosc2.SpecialValue.UNINIT)
    return schunk


def remove(urlpath: Path) -> None:
    """Remove a Blosc2 container, sparse (a directory) or contiguous (a file)."""
    if urlpath.is_dir():
        shutil.rmtree(urlpath)
    elif urlpath.exists():
        urlpath.unlink()


def nitems_shape(obj: blosc2.NDArray | blosc2.SChunk) -> tuple[int, ...]:
    """Return the shape of a container as metadata gives it (items, for an SChunk)."""
    if isinstance(obj, blosc2.NDArray):
        return tuple(obj.shape)
    return (obj.nbytes // obj.typesize,)


def schunk_of(obj: blosc2.NDArray | blosc2.SChunk) -> blosc2.SChunk:
    return obj.schunk if isinstance(obj, blosc2.NDArray) else obj


def write_whole(src: blosc2.NDArray | blosc2.SChunk, meta: DatasetMeta, dst: Path) -> None:
    """Write the dataset `src` holds as its whole file at `dst`: a plain file's bytes, or
    one contiguous Blosc2 file."""
    if meta["kind"] != "file":
        write_contiguous(src, meta, dst)
        return
    with open(dst, "wb") as f:
        for data in iter_bytes(schunk_of(src)):
            f.write(data)


def file_frame(frame: Path, etag: str) -> blosc2.SChunk | None:
    """Return the SChunk a plain file of `etag` was compressed into at `frame`, if it is there."""
    if frame.exists():
        schunk = open_blosc2(frame)
        if isinstance(schunk, blosc2.SChunk) and schunk.vlmeta.get("etag") == etag:
            return schunk
    return None


def write_contiguous(src: blosc2.NDArray | blosc2.SChunk, meta: DatasetMeta, dst: Path) -> None:
    """Write `src` as one contiguous Blosc2 file, moving compressed chunks as they are."""
    schunk = schunk_of(src)
    with WholeFile(meta, dst) as out:
        for n in range(schunk.nchunks):
            out.put(n, schunk.get_chunk(n))


class WholeFile:
    """A dataset written whole at `dst` from its compressed chunks, put in any order:
    a contiguous Blosc2 file (shaped, and with the vlmeta, as `meta` says), or a
    plain file's bytes. Use it in a ``with`` block, which finishes the file."""

    def __init__(self, meta: DatasetMeta, dst: Path) -> None:
        self._meta = meta
        self._file = None
        self._out: blosc2.SChunk | None = None
        if meta["kind"] == "file":
            # Closed by __exit__.
            self._file = open(dst, "wb")  # noqa: SIM115
            return
        self._handle = create_empty(meta, dst, contiguous=True)
        self._out = schunk_of(self._handle)

    def put(self, nchunk: int, data: bytes) -> None:
        """Write chunk `nchunk`, whose compressed bytes are `data`."""
        if self._file is not None:
            self._file.seek(nchunk * self._meta["chunksize"])
            self._file.write(blosc2.decompress(data))
        else:
            self._out.update_chunk(nchunk, data)

    def __enter__(self) -> WholeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
        else:
            for key, value in self._meta["vlmeta"].items():
                self._out.vlmeta[key] = value
            # Closes the file: an SChunk does not keep its NDArray alive.
            del self._out, self._handle


def iter_bytes(schunk: blosc2.SChunk) -> Iterator[bytes]:
    """Yield the decompressed bytes of `schunk`, one chunk at a time."""
    for n in range(schunk.nchunks):
        yield schunk.decompress_chunk(n)


def read_items(schunk: blosc2.SChunk, start: int, stop: int) -> bytes:
    """Return items ``start:stop`` of `schunk` as bytes."""
    return bytes(schunk[start:stop]) if stop > start else b""


def read_array(arr: blosc2.NDArray, key: tuple, flip: tuple[int, ...]) -> np.ndarray:
    """Return ``arr[key]`` (ascending slices), then flip the axes in `flip`."""
    out = arr[key] if key else arr[()]
    return np.flip(out, axis=flip) if flip else out


def read_stream_items(schunk: blosc2.SChunk, key: int | slice, flip: bool, typesize: int) -> bytes:
    """Return the items of a byte stream that a 1-D selection names."""
    if isinstance(key, int):
        return read_items(schunk, key, key + 1)
    count = len(range(key.start, key.stop, key.step))
    stop = key.start + (count - 1) * key.step + 1 if count else key.start
    per_chunk = schunk.chunksize // typesize
    if key.step <= per_chunk:
        data = read_items(schunk, key.start, stop)
        items = np.frombuffer(data, dtype=f"V{typesize}")[:: key.step]
    else:
        # A step past the chunk length: one item per chunk, never the span between.
        items = np.frombuffer(
            b"".join(read_items(schunk, i, i + 1) for i in range(key.start, stop, key.step)),
            dtype=f"V{typesize}",
        )
    if key.step == 1 and not flip:
        return items.tobytes()
    return (items[::-1] if flip else items).tobytes()
