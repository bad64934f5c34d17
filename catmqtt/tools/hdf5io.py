"""This module converts HDF5 files to native roots and back, and writes the sample HDF5 file."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import blosc2
import numpy as np

from .. import storage
from ..dtypes import to_jsonable
from ..errors import CatmqttError
from ..publisher.roots import GROUP_ATTRS

# These raise a CatmqttError saying what to install when h5py is missing.
from ..publisher.roots.hdf5chunks import METALAYER, ChunkPlan, plan, set_vlmeta, write_array
from ..publisher.roots.hdf5tree import (
    JSON_ATTR,
    KIND_ATTR,
    SUFFIX,
    Layout,
    Skip,
    attr_type,
    attr_value,
    h5py,
    hdf5plugin,
    open_file,
    read_typed_attrs,
    typed_attr,
    walk,
)

log = logging.getLogger(__name__)

_CODECS = {
    blosc2.Codec.BLOSCLZ: "blosclz",
    blosc2.Codec.LZ4: "lz4",
    blosc2.Codec.LZ4HC: "lz4hc",
    blosc2.Codec.ZLIB: "zlib",
    blosc2.Codec.ZSTD: "zstd",
}
_SHUFFLES = {
    blosc2.Filter.SHUFFLE: hdf5plugin.Blosc2.SHUFFLE,
    blosc2.Filter.BITSHUFFLE: hdf5plugin.Blosc2.BITSHUFFLE,
}


# HDF5 -> native root


def import_h5(src: str | os.PathLike, dst: str | os.PathLike) -> tuple[int, list[dict[str, str]]]:
    """Write the HDF5 file `src` as a native root in the new directory `dst`.

    Returns how many datasets were written, and what was skipped and why.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise CatmqttError(f"{os.fspath(dst)!r} exists and is not an empty directory")
    io = threading.RLock()
    with open_file(src) as h5file:
        try:
            layout = walk(h5file)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise CatmqttError(f"cannot read the HDF5 file {os.fspath(src)!r}: {exc}") from None
        dst.mkdir(parents=True, exist_ok=True)
        for path, group in layout.groups.items():
            if path and layout.aliased(path):
                continue
            (dst / path).mkdir(parents=True, exist_ok=True)
            attrs, types, problems = read_typed_attrs(group)
            for problem in problems:
                layout.skip(group.name, problem)
            if attrs:
                frame = blosc2.SChunk(
                    urlpath=str(dst / path / GROUP_ATTRS),
                    contiguous=True,
                    mode="w",
                    meta={METALAYER: {"attrs": types}} if types else None,
                )
                for problem in set_vlmeta(frame, attrs):
                    layout.skip(group.name, problem)
        written = 0
        for path, (h5name, dset) in layout.datasets.items():
            if layout.aliased(path):
                continue
            try:
                if dset.shape is None:
                    for problem in _import_null(dset, dst / path):
                        layout.skip(h5name, problem)
                    written += 1
                    continue
                source = plan(h5name, dset, io)
                for problem in source.problems:
                    layout.skip(h5name, problem)
                for problem in _import_dataset(source, dst, path, io):
                    layout.skip(h5name, problem)
                written += 1
            except Skip as exc:
                layout.skip(h5name, str(exc))
            except (OSError, RuntimeError, TypeError, ValueError, KeyError) as exc:
                layout.skip(h5name, f"unreadable: {exc}")
    _make_links(dst, layout.links, layout)
    _make_external_links(dst, layout)
    return written, layout.skipped


def _import_null(dset: h5py.Dataset, target: Path) -> list[str]:
    """Write a dataset with a null dataspace as an empty array, marked as such;
    return the problems met storing its attributes."""
    if target.exists():
        raise Skip(f"{target.name!r} is already in {target.parent}")
    if dset.dtype.kind not in "biufcSV" or h5py.check_string_dtype(dset.dtype):
        raise Skip(f"an empty dataset (null dataspace) of type {dset.dtype}")
    attrs, types, problems = read_typed_attrs(dset)
    if problems:
        raise Skip("; ".join(problems))
    marks = {"null": True, "attrs": types} if types else {"null": True}
    array = blosc2.empty(
        (0,), dtype=dset.dtype, urlpath=str(target), contiguous=True, mode="w", meta={METALAYER: marks}
    )
    return set_vlmeta(array.schunk, attrs)


def _import_dataset(source: ChunkPlan, dst: Path, path: str, io: AbstractContextManager) -> list[str]:
    """Write one dataset: a ``.b2nd`` array, or the file an export stored as bytes;
    return the problems met storing its attributes."""
    if source.attrs.get(KIND_ATTR) and source.dtype == np.uint8 and len(source.shape) == 1:
        target = dst / path.removesuffix(SUFFIX)
        if target.exists():
            raise Skip(f"{target.name!r} is already in {target.parent}")
        with open(target, "wb") as f:
            for start in range(0, source.shape[0], storage.FILE_CHUNKSIZE):
                f.write(source.dset[start : start + storage.FILE_CHUNKSIZE].tobytes())
        return []
    target = dst / path
    if target.exists():
        raise Skip(f"{target.name!r} is already in {target.parent}")
    return write_array(source, target, lambda n: source.chunk(n, io)[0])


def _make_links(dst: Path, links: dict[str, str], layout: Layout) -> None:
    """Make the soft links symbolic links, once their targets exist (a link may target a link).

    Links met inside a linked group are already there, through the group's link.
    """
    todo = {p: t for p, t in links.items() if not any(p.startswith(f"{other}/") for other in links)}
    while todo:
        done = [p for p, target in todo.items() if os.path.lexists(dst / target)]
        for path in done:
            target = todo.pop(path)
            try:
                os.symlink(os.path.relpath(dst / target, (dst / path).parent), dst / path)
            except OSError as exc:
                layout.skip(f"/{path}", f"cannot make its link: {exc.strerror}")
        if not done:
            for path, target in todo.items():
                layout.skip(f"/{path}", f"a soft link to /{target}, which was not imported")
            return


def _make_external_links(dst: Path, layout: Layout) -> None:
    """Make each external link a symbolic link whose target reads ``FILE:/PATH``
    (it points nowhere in the root; export makes it an external link again)."""
    for path, (h5name, target) in layout.external.items():
        if layout.aliased(path):
            continue
        try:
            os.symlink(target, dst / path)
        except OSError as exc:
            layout.skip(h5name, f"cannot make its link to {target}: {exc.strerror}")


# Native root -> HDF5


def export_h5(src: str | os.PathLike, dst: str | os.PathLike) -> tuple[int, list[dict[str, str]]]:
    """Write the native root in directory `src` as the HDF5 file `dst` (replaced if it exists).

    Returns how many datasets were written, and what was skipped and why.
    """
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise CatmqttError(f"{os.fspath(src)!r} does not exist")
    if not src.is_dir():
        raise CatmqttError(f"{os.fspath(src)!r} is not a directory (a native root)")
    if not dst.parent.is_dir():
        raise CatmqttError(f"{os.fspath(dst.parent)!r} is not a directory")
    root = src.resolve()
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    exporter = _Exporter(root)
    try:
        with h5py.File(tmp, "w") as h5file:
            exporter.run(h5file)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return exporter.written, exporter.skipped


class _Exporter:
    """One export: the HDF5 name given to each root path, and what was skipped."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names: dict[str, str] = {}
        self.links: list[tuple[str, Path]] = []
        self.skipped: list[dict[str, str]] = []
        self.written = 0

    def skip(self, path: str, reason: str) -> None:
        log.warning("skipping %s: %s", path, reason)
        self.skipped.append({"path": path, "reason": reason})

    def run(self, h5file: h5py.File) -> None:
        for dirpath, dirnames, filenames in os.walk(self.root):
            top = Path(dirpath)
            rel = top.relative_to(self.root).as_posix()
            group = h5file if rel == "." else h5file.require_group(rel)
            self.names[rel] = group.name
            if (top / GROUP_ATTRS).is_file():
                frame = blosc2.open(str(top / GROUP_ATTRS), mode="r")
                _store_attrs(group.attrs, frame.vlmeta.getall(), _attr_types(frame))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                if (top / name).is_symlink():
                    self.links.append((f"{group.name.rstrip('/')}/{_h5_name(name)}", top / name))
                else:
                    self._dataset(group, top / name)
            # Groups are made when walked into, after the datasets of their parent.
            kept = []
            for name in sorted(d for d in dirnames if not d.startswith(".")):
                if (top / name).is_symlink():
                    self.links.append((f"{group.name.rstrip('/')}/{name}", top / name))
                elif name in group:
                    self.skip(
                        (top / name).relative_to(self.root).as_posix(),
                        f"its HDF5 name is taken in {group.name}",
                    )
                else:
                    kept.append(name)
            dirnames[:] = kept
        for h5name, link in self.links:
            self._link(h5file, h5name, link)

    def _dataset(self, group: h5py.Group, file: Path) -> None:
        rel = file.relative_to(self.root).as_posix()
        name = _h5_name(file.name)
        if name in group:
            self.skip(rel, f"its HDF5 name {name!r} is taken in {group.name}")
            return
        array = storage.open_blosc2(file) if file.suffix == SUFFIX else None
        if isinstance(array, blosc2.NDArray):
            try:
                _write_array(group, name, array)
            except (TypeError, ValueError) as exc:
                log.info("%s is stored as bytes: HDF5 cannot hold it as an array (%s)", rel, exc)
                if name in group:
                    del group[name]
                array = None
        if not isinstance(array, blosc2.NDArray):
            name = file.name
            if name in group:
                self.skip(rel, f"its HDF5 name {name!r} is taken in {group.name}")
                return
            _write_bytes(group, name, file)
        self.names[rel] = f"{group.name.rstrip('/')}/{name}"
        self.written += 1

    def _link(self, h5file: h5py.File, h5name: str, link: Path) -> None:
        rel = link.relative_to(self.root).as_posix()
        filename, sep, inner = os.readlink(link).rpartition(":/")
        if sep and filename and not link.exists():
            # What import made of an external link.
            if h5name in h5file:
                self.skip(rel, f"its HDF5 name {h5name!r} is taken")
            else:
                h5file[h5name] = h5py.ExternalLink(filename, f"/{inner}")
            return
        target = link.resolve()
        if not target.is_relative_to(self.root) or not target.exists():
            self.skip(rel, "a link to something outside the root")
            return
        name = self.names.get(target.relative_to(self.root).as_posix())
        if name is None:
            self.skip(rel, "a link to something that was not exported")
        elif h5name in h5file:
            self.skip(rel, f"its HDF5 name {h5name!r} is taken")
        else:
            h5file[h5name] = h5py.SoftLink(name)


def _h5_name(filename: str) -> str:
    return filename.removesuffix(SUFFIX) if filename.endswith(SUFFIX) and filename != SUFFIX else filename


def _write_array(group: h5py.Group, name: str, array: blosc2.NDArray) -> None:
    """Write a ``.b2nd`` array as a typed dataset with its chunks and attributes
    (an enumeration, or a null dataspace, where import recorded one)."""
    marks = array.schunk.meta.get(METALAYER, {})
    dtype = array.dtype
    if isinstance(marks.get("enum"), dict) and dtype.kind in "iu":
        dtype = h5py.enum_dtype(marks["enum"], basetype=dtype)
    if marks.get("null") is True and not math.prod(array.shape):
        dset = group.create_dataset(name, data=h5py.Empty(dtype))
    elif dtype.kind == "U":
        dset = _write_strings(group, name, array)
    elif not array.ndim:
        dset = group.create_dataset(name, data=np.asarray(array[()], dtype=dtype))
    elif not math.prod(array.shape):
        dset = group.create_dataset(name, shape=array.shape, dtype=dtype, **_chunking(array))
    else:
        dset = _write_chunks(group, name, array, dtype)
    _store_attrs(dset.attrs, array.schunk.vlmeta.getall(), _attr_types(array.schunk))


def _chunking(array: blosc2.NDArray) -> dict[str, Any]:
    """Return the chunks of `array` as create_dataset takes them (none for a scalar)."""
    if not array.ndim or not all(array.chunks):
        return {}
    # HDF5 refuses chunks over a fixed dimension, which Blosc2 allows.
    maxshape = tuple(None if c > s else s for s, c in zip(array.shape, array.chunks, strict=True))
    return {"chunks": array.chunks, "maxshape": maxshape}


def _write_chunks(group: h5py.Group, name: str, array: blosc2.NDArray, dtype: np.dtype) -> h5py.Dataset:
    """Write an array chunk by chunk, each Blosc2 chunk as it is, framed as the Blosc2 filter frames it."""
    cparams = array.schunk.cparams
    shuffle = next((_SHUFFLES[f] for f in reversed(cparams.filters) if f in _SHUFFLES), 0)
    dset = group.create_dataset(
        name,
        shape=array.shape,
        dtype=dtype,
        **_chunking(array),
        **hdf5plugin.Blosc2(cname=_CODECS.get(cparams.codec, "zstd"), clevel=cparams.clevel, filters=shuffle),
    )
    one = blosc2.empty(
        array.chunks, dtype=array.dtype, chunks=array.chunks, blocks=array.blocks, cparams=cparams
    )
    grid = [-(-s // c) for s, c in zip(array.shape, array.chunks, strict=True)]
    for n in range(array.schunk.nchunks):
        one.schunk.update_chunk(0, array.schunk.get_chunk(n))
        offset = tuple(int(i) * c for i, c in zip(np.unravel_index(n, grid), array.chunks, strict=True))
        dset.id.write_direct_chunk(offset, one.to_cframe())
    return dset


def _write_strings(group: h5py.Group, name: str, array: blosc2.NDArray) -> h5py.Dataset:
    """Write a unicode array as UTF-8 variable-length strings (read back as unicode
    of the longest string's width)."""
    values = array[()]
    chunking = _chunking(array)
    return group.create_dataset(
        name,
        data=values.astype(object) if array.ndim else str(values),
        dtype=h5py.string_dtype(),
        compression="gzip" if chunking else None,
        **chunking,
    )


def _write_bytes(group: h5py.Group, name: str, file: Path) -> None:
    """Write a file's bytes as a uint8 dataset, recording what the file was."""
    size = file.stat().st_size
    kind = "file"
    if file.suffix in storage.BLOSC2_SUFFIXES:
        kind = file.suffix.lstrip(".")
    if size:
        chunk = min(size, storage.FILE_CHUNKSIZE)
        dset = group.create_dataset(
            name, shape=(size,), dtype=np.uint8, chunks=(chunk,), **hdf5plugin.Blosc2(cname="zstd", clevel=5)
        )
        with open(file, "rb") as f:
            for start in range(0, size, chunk):
                data = f.read(chunk)
                dset[start : start + len(data)] = np.frombuffer(data, np.uint8)
    else:
        dset = group.create_dataset(name, shape=(0,), dtype=np.uint8)
    dset.attrs[KIND_ATTR] = kind


def _attr_types(schunk: blosc2.SChunk) -> dict[str, Any]:
    """Return the HDF5 types of the attributes that import recorded in `schunk`, if any."""
    try:
        marks = schunk.meta.get(METALAYER, {})
    except (KeyError, ValueError, RuntimeError):
        return {}
    types = marks.get("attrs") if isinstance(marks, dict) else None
    return types if isinstance(types, dict) else {}


def _store_attrs(attrs: h5py.AttributeManager, values: dict[str, Any], types: dict[str, Any]) -> None:
    """Store vlmeta `values` as HDF5 attributes that read back equal: of the type
    import recorded in `types` where the value still fits it, else of the type
    h5py gives the value, else as JSON text."""
    as_json = []
    for name, value in values.items():
        if name in types:
            try:
                attrs.create(name, data=typed_attr(value, types[name]))
                if repr(attr_value(attrs[name])) == repr(value) and attr_type(attrs, name) == types[name]:
                    continue
            except (TypeError, ValueError, KeyError, OverflowError, Skip):
                pass
            if name in attrs:
                del attrs[name]
        try:
            attrs[name] = _h5_value(value)
            if repr(attr_value(attrs[name])) == repr(value):
                continue
        except (TypeError, ValueError, Skip):
            pass
        if name in attrs:
            del attrs[name]
        attrs[name] = json.dumps(to_jsonable(value))
        as_json.append(name)
    if as_json:
        attrs[JSON_ATTR] = json.dumps(as_json)


def _h5_value(value: Any) -> Any:
    """Return `value` as h5py stores it in an attribute, if it can."""
    if value is None:
        return h5py.Empty("f8")
    if isinstance(value, bytes):
        return np.void(value) if value.endswith(b"\0") or not value else np.bytes_(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        array = np.array(value)
        if array.dtype.kind == "U":
            return np.array(value, dtype=h5py.string_dtype())
        if array.dtype.kind not in "biufcS":
            raise TypeError(f"cannot store {value!r} as an attribute")
        return array
    if isinstance(value, bool | int | float | complex):
        return value
    if (
        isinstance(value, dict)
        and value
        and all(isinstance(v, bool | int | float | complex) for v in value.values())
    ):
        # A record of numbers, as a compound attribute reads.
        return np.array(tuple(value.values()), dtype=[(k, np.asarray(v).dtype) for k, v in value.items()])
    raise TypeError(f"cannot store {value!r} as an attribute")


# The sample file


def write_sample_h5(path: str | os.PathLike) -> Path:
    """Write the sample HDF5 file at `path` (replaced if it exists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["title"] = "The catmqtt sample HDF5 file"
        f.attrs["version"] = 1
        grid = np.arange(200 * 300, dtype=np.float64).reshape(200, 300) / 7
        d = f.create_dataset("gzip-2d", data=grid, chunks=(50, 100), compression="gzip", shuffle=True)
        d.attrs["units"] = "kelvin"
        d.attrs["valid_range"] = [0.0, 10000.0]
        f.create_dataset("contiguous-1d", data=np.arange(1000, dtype=np.int32))
        f.create_dataset(
            "blosc2-3d",
            data=np.arange(20 * 30 * 40, dtype=np.uint16).reshape(20, 30, 40),
            chunks=(10, 15, 40),
            **hdf5plugin.Blosc2(cname="zstd", clevel=5, filters=hdf5plugin.Blosc2.SHUFFLE),
        )
        records = np.empty(100, dtype=[("id", "<i4"), ("x", "<f8"), ("name", "S8"), ("ok", "?")])
        records["id"] = np.arange(100)
        records["x"] = np.linspace(0, 1, 100)
        records["name"] = [f"rec{i}".encode() for i in range(100)]
        records["ok"] = np.arange(100) % 2 == 0
        f.create_dataset("records", data=records, chunks=(25,), compression="gzip")
        f.create_dataset("scalar", data=np.float64(3.25))
        f.create_dataset("fixed-strings", data=np.array([b"foo", b"bar", b"bazz"]))
        f.create_dataset(
            "strings",
            data=["alpha", "beta", "gamma", "\u03b4\u03ad\u03bb\u03c4\u03b1"],
            dtype=h5py.string_dtype(),
        )
        sub = f.create_group("group/subgroup")
        f["group"].attrs["description"] = "a group with a subgroup"
        sub.attrs["level"] = 2
        sub.create_dataset(
            "lz4", data=np.linspace(-1, 1, 5000, dtype=np.float32), chunks=(1000,), **hdf5plugin.LZ4()
        )
        f["link-to-records"] = h5py.SoftLink("/records")
        f.create_dataset("references", data=[f["records"].ref], dtype=h5py.ref_dtype)
    return path
