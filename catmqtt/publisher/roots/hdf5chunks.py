"""This module plans how one HDF5 dataset is served as a Blosc2 array (`plan`),
makes its chunks (`ChunkPlan.chunk`: passed through, inflated here, or read
through h5py and compressed) and writes it as a ``.b2nd`` file.

It holds no state of its own: every h5py call is made holding the `io` lock
given by the caller (the root's).
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blosc2
import numpy as np

from ... import storage
from ...dtypes import dtype_to_json, to_jsonable

# Imported first: it says what to install when h5py is missing.
from .hdf5tree import DTYPE_ATTR, Skip, h5py, read_typed_attrs

if TYPE_CHECKING:
    from ...schema import DatasetMeta

BLOSC2_FILTER = 32026
# The Blosc2 metalayer of a ``.b2nd`` file imported from HDF5 that records what
# Blosc2 cannot hold: {"enum": {name: value}}, {"null": true} (a null dataspace),
# and {"attrs": {name: type}}, the HDF5 type of each attribute kept as vlmeta
# (`hdf5tree.attr_type`). The ``.attrs.b2frame`` of a group has it too, for "attrs".
METALAYER = "catmqtt"
# Datasets that HDF5 does not chunk are served in chunks of about this size.
CHUNK_BYTES = storage.FILE_CHUNKSIZE
DEFLATE_PIPELINES = ([h5py.h5z.FILTER_DEFLATE], [h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE])
# Variable-length strings become fixed-width unicode up to this many bytes in all.
MAX_STRING_BYTES = 64 << 20
LAYOUTS = {
    h5py.h5d.COMPACT: "compact",
    h5py.h5d.CONTIGUOUS: "contiguous",
    h5py.h5d.CHUNKED: "chunked",
    h5py.h5d.VIRTUAL: "virtual",
}


def set_vlmeta(schunk: blosc2.SChunk, attrs: dict[str, Any]) -> list[str]:
    """Store `attrs` as the vlmeta of `schunk`; values msgpack refuses are stored as JSON-safe ones.

    Returns the problems met: Blosc2 keeps a few vlmeta entries only (16), the others are left out.
    """
    for n, (name, value) in enumerate(attrs.items()):
        try:
            try:
                schunk.vlmeta[name] = value
            except (TypeError, ValueError, OverflowError):
                schunk.vlmeta[name] = to_jsonable(value)
        except RuntimeError:
            left = list(attrs)[n:]
            names = ", ".join(repr(k) for k in left[:5])
            if len(left) > 5:
                names += f" and {len(left) - 5} more"
            return [f"attributes {names} are left out: Blosc2 keeps no more vlmeta entries ({n} kept)"]
    return []


# Serving one dataset


@dataclass
class ChunkPlan:
    """One HDF5 dataset as a Blosc2 array, and how its chunks are made."""

    name: str
    dset: h5py.Dataset
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    blocks: tuple[int, ...]
    cparams: blosc2.CParams
    # "blosc2": chunks pass through; "deflate": inflated here; "read": read through h5py.
    mode: str
    attrs: dict[str, Any]
    info: dict[str, Any]
    # The HDF5 type of each attribute (see METALAYER).
    attr_types: dict[str, Any] = field(default_factory=dict)
    # Whether it holds variable-length strings, read as str and served as fixed-width unicode.
    strings: bool = False
    shuffle: bool = False
    problems: list[str] = field(default_factory=list)
    # The attributes as announced: JSON-safe, without the too large ones.
    vlmeta: dict[str, Any] = field(default_factory=dict)
    # The file etag it was planned at.
    stamp: str = ""
    chunksize: int = field(init=False)
    grid: tuple[int, ...] = field(init=False)
    nchunks: int = field(init=False)
    # The name of its converted chunks in the state directory.
    key: str = field(init=False)

    def __post_init__(self) -> None:
        one = blosc2.empty(self.chunks, dtype=self.dtype, cparams=self.cparams, **self.layout())
        self.chunksize = one.schunk.chunksize
        self.cparams = one.schunk.cparams
        self.grid = tuple(-(-s // c) if c else 0 for s, c in zip(self.shape, self.chunks, strict=True))
        self.nchunks = math.prod(self.grid)
        self.key = hashlib.blake2b(self.name.encode(), digest_size=8).hexdigest()

    def layout(self) -> dict[str, tuple[int, ...]]:
        """Return the chunks and blocks to give Blosc2 (nothing for a scalar, which has none)."""
        return {"chunks": self.chunks, "blocks": self.blocks} if self.shape else {}

    def describe(self, path: str, etag: str) -> DatasetMeta:
        """Return the metadata of this dataset served at `path`, as `storage.describe` gives it."""
        cbytes = self.dset.id.get_storage_size()
        nbytes = self.nchunks * self.chunksize
        return {
            "path": path,
            "kind": "ndarray",
            "shape": list(self.shape),
            "dtype": dtype_to_json(self.dtype),
            "chunks": list(self.chunks),
            "blocks": list(self.blocks),
            "nchunks": self.nchunks,
            "chunksize": self.chunksize,
            "typesize": self.cparams.typesize,
            "nbytes": nbytes,
            "cbytes": cbytes,
            "cratio": round(nbytes / cbytes, 3) if cbytes else 0.0,
            "cparams": storage.cparams_to_json(self.cparams),
            "vlmeta": self.vlmeta,
            "etag": etag,
            "hdf5": dict(self.info),
        }

    def chunk(self, nchunk: int, io: AbstractContextManager) -> tuple[bytes, bool]:
        """Return the compressed bytes of chunk `nchunk`, and whether they were converted.

        `io` is held around every h5py call; decompressing and compressing happen outside it.
        """
        start = tuple(
            int(i) * c for i, c in zip(np.unravel_index(nchunk, self.grid), self.chunks, strict=True)
        )
        if self.mode == "blosc2":
            raw = self._raw(start, io)
            data = None if raw is None else frame_chunk(raw, self.chunks, self.blocks, self.chunksize)
            if data is not None:
                return data, False
        elif self.mode == "deflate":
            raw = self._raw(start, io)
            array = None if raw is None else self._inflate(raw)
            if array is not None:
                return self._compress(array), True
        return self._compress(self._read(start, io)), True

    def _raw(self, start: tuple[int, ...], io: AbstractContextManager) -> bytes | None:
        """Return the stored bytes of the chunk at `start`; None if unallocated or partly filtered."""
        with io:
            try:
                mask, raw = self.dset.id.read_direct_chunk(start)
            except (RuntimeError, OSError, ValueError):
                return None
        return None if mask else raw

    def _inflate(self, raw: bytes) -> np.ndarray | None:
        """Undo HDF5's deflate (and shuffle) filters on a stored chunk."""
        itemsize = self.dset.dtype.itemsize
        nbytes = math.prod(self.chunks) * itemsize
        try:
            # Sized right, the output is never grown and copied.
            data = zlib.decompress(raw, bufsize=nbytes)
        except zlib.error:
            return None
        if len(data) != nbytes:
            return None
        if self.shuffle and itemsize > 1:
            data = np.frombuffer(data, np.uint8).reshape(itemsize, -1).T.tobytes()
        array = np.frombuffer(data, dtype=self.dset.dtype).reshape(self.chunks)
        return array if array.dtype == self.dtype else array.astype(self.dtype)

    def _read(self, start: tuple[int, ...], io: AbstractContextManager) -> np.ndarray:
        """Read the region of the chunk at `start` through h5py, padded to a whole chunk."""
        region = tuple(
            slice(s, min(s + c, n)) for s, c, n in zip(start, self.chunks, self.shape, strict=True)
        )
        with io:
            data = (self.dset.asstr() if self.strings else self.dset)[region]
        data = np.asarray(data).astype(self.dtype, copy=False)
        if data.shape == self.chunks:
            return data
        whole = np.zeros(self.chunks, dtype=self.dtype)
        whole[tuple(slice(0, n) for n in data.shape)] = data
        return whole

    def _compress(self, array: np.ndarray) -> bytes:
        packed = blosc2.asarray(np.ascontiguousarray(array), cparams=self.cparams, **self.layout())
        return packed.schunk.get_chunk(0)


def frame_chunk(raw: bytes, chunks: tuple[int, ...], blocks: tuple[int, ...], chunksize: int) -> bytes | None:
    """Return the chunk in a frame that the Blosc2 HDF5 filter wrote, if it fits the layout given.

    The filter stores each HDF5 chunk as a Blosc2 frame holding one chunk: a
    B2ND array shaped like the HDF5 chunk (its blocks are then the ones to
    announce), or a plain super-chunk, whose bytes are the chunk in C order.
    """
    found = frame_layout(raw, chunks)
    if found is None:
        return None
    data, found_blocks = found
    if found_blocks != blocks or blosc2.get_cbuffer_sizes(data)[0] != chunksize:
        return None
    return data


def frame_layout(raw: bytes, chunks: tuple[int, ...]) -> tuple[bytes, tuple[int, ...]] | None:
    """Return the one chunk of a Blosc2 frame and the blocks it uses, if it is a chunk of shape `chunks`."""
    try:
        array = blosc2.ndarray_from_cframe(raw)
    except (RuntimeError, ValueError, TypeError):
        array = None
    if array is not None:
        if tuple(array.shape) != chunks or tuple(array.chunks) != chunks or array.schunk.nchunks != 1:
            return None
        return array.schunk.get_chunk(0), tuple(array.blocks)
    try:
        schunk = blosc2.schunk_from_cframe(raw)
    except (RuntimeError, ValueError, TypeError):
        return None
    if schunk.nchunks != 1:
        return None
    data = schunk.get_chunk(0)
    nbytes, _, blocksize = blosc2.get_cbuffer_sizes(data)
    typesize = schunk.typesize
    if nbytes != math.prod(chunks) * typesize or blocksize % typesize:
        return None
    blocks = flat_blocks(chunks, blocksize // typesize)
    return None if blocks is None else (data, blocks)


def flat_blocks(chunks: tuple[int, ...], nitems: int) -> tuple[int, ...] | None:
    """Return the blocks whose B2ND layout is the chunk in C order cut every `nitems` items, if any."""
    blocks = [1] * len(chunks)
    rest = nitems
    for i in reversed(range(len(chunks))):
        if rest == 1:
            break
        if rest % chunks[i] == 0:
            blocks[i] = chunks[i]
            rest //= chunks[i]
        elif chunks[i] % rest == 0:
            blocks[i] = rest
            rest = 1
        else:
            return None
    return tuple(blocks) if rest == 1 else None


def plan(h5name: str, dset: h5py.Dataset, io: AbstractContextManager) -> ChunkPlan:
    """Return how to serve `dset`, or raise Skip saying why it cannot be."""
    shape = dset.shape
    if shape is None:
        raise Skip("an empty dataset (null dataspace)")
    if len(shape) > blosc2.MAX_DIM:
        raise Skip(f"{len(shape)} dimensions, more than the {blosc2.MAX_DIM} Blosc2 supports")
    plist = dset.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    names = [f[3].decode(errors="replace") or str(f[0]) for f in filters]
    for (fid, *_), fname in zip(filters, names, strict=True):
        if not h5py.h5z.filter_avail(fid):
            raise Skip(f"its filter {fname!r} ({fid}) is not available")
    attrs, attr_types, problems = read_typed_attrs(dset)
    dtype, strings = _served_dtype(dset, io)
    info = {"name": h5name, "layout": LAYOUTS.get(plist.get_layout(), "other"), "filters": names}
    if h5py.check_enum_dtype(dset.dtype):
        info["enum"] = {k: int(v) for k, v in h5py.check_enum_dtype(dset.dtype).items()}
    common = {"name": h5name, "dset": dset, "shape": shape, "dtype": dtype, "attrs": attrs, "info": info}
    common.update(problems=problems, cparams=_cparams(dtype), strings=strings, attr_types=attr_types)
    if not shape:
        return ChunkPlan(chunks=(), blocks=(), mode="read", **common)
    chunks = dset.chunks
    if chunks is None:
        chunks = _contiguous_chunks(shape, dtype)
        return ChunkPlan(chunks=chunks, blocks=_blocks(shape, chunks, dtype), mode="read", **common)
    # Stored bytes can be used when they are items of the served dtype (byte-swapped at most).
    raw = not strings and dset.id.get_type().get_size() == dtype.itemsize
    pipeline = [f[0] for f in filters]
    if raw and dtype == dset.dtype and pipeline == [BLOSC2_FILTER]:
        probe = _probe_blosc2(dset, chunks, io)
        if probe is not None:
            info["passthrough"] = True
            common["cparams"] = probe[1]
            return ChunkPlan(chunks=chunks, blocks=probe[0], mode="blosc2", **common)
    blocks = _blocks(shape, chunks, dtype)
    if raw and pipeline in DEFLATE_PIPELINES and (dtype == dset.dtype or dtype.fields is None):
        return ChunkPlan(chunks=chunks, blocks=blocks, mode="deflate", shuffle=len(pipeline) == 2, **common)
    return ChunkPlan(chunks=chunks, blocks=blocks, mode="read", **common)


def _cparams(dtype: np.dtype) -> blosc2.CParams:
    """Return how converted chunks are compressed: bit-shuffled Zstd for numbers (fast, and near gzip)."""
    numbers = dtype.fields is None and dtype.kind in "biufc" and dtype.itemsize > 1
    shuffle = blosc2.Filter.BITSHUFFLE if numbers else blosc2.Filter.SHUFFLE
    return blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=1, filters=[shuffle])


def _contiguous_chunks(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """Return chunks of about CHUNK_BYTES for a dataset HDF5 does not chunk.

    Trailing axes are kept whole as long as they fit, so that each chunk is
    few contiguous runs of the file.
    """
    if not math.prod(shape):
        return tuple(blosc2.compute_chunks_blocks(shape, dtype=dtype)[0])
    chunks = list(shape)
    room = max(1, CHUNK_BYTES // dtype.itemsize)
    for axis in range(len(chunks)):
        inner = math.prod(chunks[axis + 1 :])
        if chunks[axis] * inner <= room:
            break
        chunks[axis] = max(1, room // inner)
    return tuple(chunks)


def _blocks(shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    try:
        return tuple(blosc2.compute_chunks_blocks(shape, chunks=chunks, dtype=dtype)[1])
    except (ValueError, TypeError, ZeroDivisionError):
        return chunks


def _probe_blosc2(
    dset: h5py.Dataset, chunks: tuple[int, ...], io: AbstractContextManager
) -> tuple[tuple[int, ...], blosc2.CParams] | None:
    """Return the blocks and compression of the first stored chunk, if chunks can pass through."""
    with io:
        if dset.id.get_num_chunks() == 0:
            return None
        offset = dset.id.get_chunk_info(0).chunk_offset
        mask, raw = dset.id.read_direct_chunk(offset)
    found = None if mask else frame_layout(raw, chunks)
    if found is None:
        return None
    _, blocks = found
    frame = blosc2.schunk_from_cframe(raw).cparams
    cparams = blosc2.CParams(
        codec=frame.codec,
        codec_meta=frame.codec_meta,
        clevel=frame.clevel,
        filters=frame.filters,
        filters_meta=frame.filters_meta,
        splitmode=frame.splitmode,
    )
    return blocks, cparams


def _served_dtype(dset: h5py.Dataset, io: AbstractContextManager) -> tuple[np.dtype, bool]:
    """Return the dtype `dset` is served as, and whether it holds variable-length strings."""
    dtype = dset.dtype
    string = h5py.check_string_dtype(dtype)
    if string is not None and string.length is None:
        return _string_dtype(dset, string.encoding, dset.attrs.get(DTYPE_ATTR), io), True
    if h5py.check_vlen_dtype(dtype) is not None:
        raise Skip("variable-length sequences")
    if h5py.check_ref_dtype(dtype) is not None:
        raise Skip("object references")
    if dtype.hasobject:
        raise Skip(f"a compound type with references or variable-length fields ({dtype})")
    if dtype.subdtype is not None:
        raise Skip(f"an array element type ({dtype})")
    if dtype.kind == "V" and dtype.fields is None:
        raise Skip("opaque data")
    if dtype.kind not in "biufcSV":
        raise Skip(f"an unsupported type ({dtype})")
    served = _plain(dtype)
    try:
        blosc2.empty((1,), dtype=served)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise Skip(f"a type Blosc2 cannot hold ({dtype}): {exc}") from None
    return served, False


def _plain(dtype: np.dtype) -> np.dtype:
    """Return `dtype` in native byte order, without h5py's metadata nor gaps between fields."""
    if dtype.fields is not None:
        return np.dtype([(name, _plain(dtype.fields[name][0])) for name in dtype.names])
    if dtype.subdtype is not None:
        return np.dtype((_plain(dtype.subdtype[0]), dtype.subdtype[1]))
    return np.dtype(dtype.str).newbyteorder("=")


def _string_dtype(dset: h5py.Dataset, encoding: str, wanted: Any, io: AbstractContextManager) -> np.dtype:
    """Return the fixed-width unicode dtype that holds every variable-length string of `dset`.

    That is `wanted` (the dtype an export recorded) when it is wide enough.
    """
    if dset.size * 4 > MAX_STRING_BYTES:
        raise Skip(f"{dset.size} variable-length strings, too many to convert to fixed-width unicode")
    try:
        with io:
            values = np.asarray(dset.asstr()[()], dtype=object)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Skip(f"variable-length strings that are not valid {encoding}: {exc}") from None
    width = max((len(v) for v in values.flat), default=1) or 1
    if dset.size * width * 4 > MAX_STRING_BYTES:
        raise Skip(
            f"variable-length strings up to {width} characters: {dset.size * width * 4} bytes"
            f" as fixed-width unicode, over the {MAX_STRING_BYTES} byte limit"
        )
    try:
        recorded = np.dtype(wanted) if isinstance(wanted, str) else None
    except TypeError:
        recorded = None
    if recorded is not None and recorded.kind == "U" and recorded.itemsize >= width * 4:
        return recorded
    return np.dtype(f"U{width}")


def write_array(source: ChunkPlan, urlpath: Path, chunk: Callable[[int], bytes]) -> list[str]:
    """Write `source` as a contiguous ``.b2nd`` file, taking chunk `n` from ``chunk(n)``;
    return the problems met storing its attributes (see `set_vlmeta`).

    An enumeration's names and values, and the types of the attributes, go in
    the file's ``catmqtt`` metalayer.
    """
    marks = {"enum": source.info["enum"]} if "enum" in source.info else {}
    if source.attr_types:
        marks["attrs"] = source.attr_types
    array = blosc2.empty(
        source.shape,
        dtype=source.dtype,
        cparams=source.cparams,
        urlpath=str(urlpath),
        contiguous=True,
        mode="w",
        meta={METALAYER: marks} if marks else None,
        **source.layout(),
    )
    for n in range(source.nchunks):
        array.schunk.update_chunk(n, chunk(n))
    return set_vlmeta(array.schunk, source.attrs)
