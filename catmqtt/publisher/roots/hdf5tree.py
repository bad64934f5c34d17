"""This module reads the map of an HDF5 file: its groups, datasets and links as
root paths (`walk`), and attributes as plain values.

It holds no state: a root calls it while it holds its own I/O lock.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...dtypes import dtype_from_json, dtype_to_json
from ...errors import BadRequest, CatmqttError
from ...topics import parse_path

try:
    import h5py
    import hdf5plugin  # noqa: F401 - importing it registers the filters it provides with HDF5
except ImportError as exc:
    raise CatmqttError(
        f"HDF5 files need h5py and hdf5plugin ({exc}): install them with pip install 'catmqtt[hdf5]'"
    ) from None

# The logger of the HDF5 root, whose skips these are.
log = logging.getLogger(__package__ + ".hdf5")

SUFFIX = ".b2nd"
# Attributes that `catmqtt export` writes for `catmqtt import` to read back.
KIND_ATTR = "catmqtt.kind"  # on a uint8 dataset holding a file's bytes: what the file was
# On variable-length strings that were a fixed-width unicode array (exports
# before 0.1 wrote it; it is still read, and hidden).
DTYPE_ATTR = "catmqtt.dtype"
JSON_ATTR = "catmqtt.json"  # the names of the attributes stored as JSON text
HIDDEN_ATTRS = (DTYPE_ATTR, JSON_ATTR)


class Skip(Exception):
    """An HDF5 object that cannot be served; the message says why."""


def open_file(path: Path) -> h5py.File:
    """Open the HDF5 file at `path` read-only, or raise CatmqttError saying why not.

    The file is not locked, so that writers can open it meanwhile (changes
    are detected by its etag). Other handles of it in this process must not
    lock it either (``h5py.File(path, locking=False)``): HDF5 refuses a mix.
    """
    if not path.exists():
        raise CatmqttError(f"{os.fspath(path)!r} does not exist")
    if not path.is_file() or not h5py.is_hdf5(path):
        raise CatmqttError(f"{os.fspath(path)!r} is not an HDF5 file")
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise CatmqttError(f"cannot read the HDF5 file {os.fspath(path)!r}: {exc}") from None


# Attributes


def attr_value(value: Any) -> Any:
    """Return an attribute value read by h5py as plain Python (numbers, str, bytes, lists, dicts)."""
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, h5py.Reference | h5py.RegionReference):
        raise Skip("an object reference")
    if isinstance(value, np.ndarray):
        if value.dtype.fields is not None or value.dtype.kind == "O":
            return [attr_value(v) for v in value] if value.ndim else attr_value(value[()])
        if value.dtype.kind == "V":
            return [attr_value(v) for v in value]
        if value.dtype.kind in "fc" and value.dtype.itemsize > (8 if value.dtype.kind == "f" else 16):
            value = value.astype("f8" if value.dtype.kind == "f" else "c16")
        return value.tolist()
    if isinstance(value, np.void):
        if value.dtype.fields is None:
            return value.tobytes()
        return {name: attr_value(value[name]) for name in value.dtype.names}
    if isinstance(value, np.generic):
        item = value.item()
        # Extended precision stays numpy's: it is read as the nearest double.
        if isinstance(item, np.complexfloating):
            return complex(item)
        return float(item) if isinstance(item, np.floating) else item
    return value


def read_attrs(obj: h5py.HLObject) -> tuple[dict[str, Any], list[str]]:
    """Return the attributes of `obj` as plain values, and the problems met reading them."""
    attrs, _, problems = read_typed_attrs(obj)
    return attrs, problems


def read_typed_attrs(obj: h5py.HLObject) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Return the attributes of `obj` as plain values, the HDF5 type of each that
    has one `attr_type` can tell (none for those an export stored as JSON text),
    and the problems met reading them."""
    attrs: dict[str, Any] = {}
    types: dict[str, Any] = {}
    problems: list[str] = []
    try:
        names = list(obj.attrs)
        as_json = set(json.loads(obj.attrs[JSON_ATTR])) if JSON_ATTR in names else set()
    except (OSError, KeyError, TypeError, ValueError) as exc:
        return attrs, types, [f"attributes are unreadable: {exc}"]
    for name in names:
        if name in HIDDEN_ATTRS:
            continue
        try:
            value = attr_value(obj.attrs[name])
            attrs[name] = json.loads(value) if name in as_json else value
            kind = None if name in as_json else attr_type(obj.attrs, name)
        except (Skip, OSError, KeyError, TypeError, ValueError) as exc:
            problems.append(f"attribute {name!r} is left out: {exc}")
            continue
        if kind is not None:
            types[name] = kind
    return attrs, types, problems


# The HDF5 type of an attribute, kept beside its plain value so that an export
# writes it back as it was: {"dtype": ..., "shape": [...] or None (a null
# dataspace)}. The dtype is `dtypes.dtype_to_json`'s, or {"string": encoding,
# "length": n or None}, or {"enum": {name: value}, "base": dtype}.


def attr_type(attrs: h5py.AttributeManager, name: str) -> dict[str, Any] | None:
    """Return the HDF5 type and shape of attribute `name` as JSON, or None for a
    type that is not written back (references, variable-length sequences)."""
    aid = attrs.get_id(name)
    dtype = aid.dtype
    null = aid.get_space().get_simple_extent_type() == h5py.h5s.NULL
    shape = None if null else list(aid.shape)
    string = h5py.check_string_dtype(dtype)
    if string is not None:
        return {"dtype": {"string": string.encoding, "length": string.length}, "shape": shape}
    enum = h5py.check_enum_dtype(dtype)
    if enum is not None:
        base = dtype_to_json(np.dtype(dtype.str))
        return {"dtype": {"enum": {k: int(v) for k, v in enum.items()}, "base": base}, "shape": shape}
    if dtype.hasobject:
        return None
    return {"dtype": dtype_to_json(dtype), "shape": shape}


def typed_attr(value: Any, kind: Any) -> Any:
    """Return the plain `value` of an attribute as h5py writes it with the type
    `kind` that `attr_type` gave, or raise TypeError, ValueError (BadRequest for
    a dtype it does not read) or KeyError if it cannot."""
    if not isinstance(kind, dict) or not isinstance(kind.get("shape", 0), list | None):
        raise TypeError(f"not an attribute type: {kind!r:.200}")
    spec = kind.get("dtype")
    if isinstance(spec, dict) and "string" in spec:
        dtype = h5py.string_dtype(spec["string"], spec.get("length"))
    elif isinstance(spec, dict) and "enum" in spec:
        dtype = h5py.enum_dtype(spec["enum"], basetype=dtype_from_json(spec["base"]))
    else:
        dtype = dtype_from_json(spec)
    if kind["shape"] is None:
        return h5py.Empty(dtype)
    shape = tuple(kind["shape"])
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = np.array(_items(value, dtype, len(shape)), dtype=dtype)
    except FloatingPointError as exc:
        raise ValueError(f"{value!r:.200} does not fit {dtype}: {exc}") from None
    if array.shape != shape:
        raise ValueError(f"{value!r:.200} is not of shape {shape}")
    return array


def _items(value: Any, dtype: np.dtype, depth: int) -> Any:
    """Return `value` (`attr_value`'s, made JSON-safe where msgpack refused it) as numpy takes it."""
    if depth:
        if not isinstance(value, list):
            raise TypeError(f"{value!r:.200} is not a list")
        return [_items(v, dtype, depth - 1) for v in value]
    if dtype.fields is not None:
        if not isinstance(value, dict):
            raise TypeError(f"{value!r:.200} is not a record")
        return tuple(_items(value[n], dtype.fields[n][0], 0) for n in dtype.names)
    if dtype.subdtype is not None:
        return _items(value, dtype.subdtype[0], len(dtype.subdtype[1]))
    if dtype.kind == "c" and isinstance(value, list) and len(value) == 2:
        return complex(*value)
    if dtype.kind == "V" and isinstance(value, bytes):
        return np.void(value)
    return value


# Mapping the file


@dataclass
class Layout:
    """What a walk of an HDF5 file found, keyed by root path."""

    datasets: dict[str, tuple[str, h5py.Dataset]] = field(default_factory=dict)
    groups: dict[str, h5py.Group] = field(default_factory=dict)
    # Soft links followed: root path of the link -> root path of its target.
    links: dict[str, str] = field(default_factory=dict)
    # External links: root path of the link -> (its HDF5 name, "FILE:/PATH").
    external: dict[str, tuple[str, str]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def aliased(self, path: str) -> bool:
        """Tell whether `path` is reached through a soft link."""
        return any(path == link or path.startswith(f"{link}/") for link in self.links)

    def skip(self, name: str, reason: str) -> None:
        """Log and record that the HDF5 object `name` is not served, and why."""
        log.warning("skipping %s: %s", name, reason)
        self.skipped.append({"path": name, "reason": reason})


def walk(h5file: h5py.File) -> Layout:
    """Map the groups and datasets of `h5file` to root paths, following soft links without loops."""
    layout = Layout()

    def visit(group: h5py.Group, dirpath: str, ancestors: frozenset) -> None:
        layout.groups[dirpath] = group
        for name in sorted(group):
            h5name = f"{group.name.rstrip('/')}/{name}"
            link = group.get(name, getlink=True)
            rel = f"{dirpath}/{name}" if dirpath else name
            if isinstance(link, h5py.ExternalLink):
                layout.external[rel] = (h5name, f"{link.filename}:{link.path}")
                continue
            try:
                obj = group[name]
            except (KeyError, OSError, ValueError) as exc:
                what = f"a dangling soft link to {link.path}" if isinstance(link, h5py.SoftLink) else exc
                layout.skip(h5name, str(what))
                continue
            if isinstance(obj, h5py.Group):
                if obj.id in ancestors:
                    target = link.path if isinstance(link, h5py.SoftLink) else "a group"
                    layout.skip(h5name, f"a link to {target}, which contains it (a loop)")
                    continue
                path = _root_path(layout, h5name, rel)
                if path is not None:
                    if isinstance(link, h5py.SoftLink):
                        layout.links[path] = _target(link.path, group.name)
                    visit(obj, path, ancestors | {obj.id})
            elif isinstance(obj, h5py.Dataset):
                path = _root_path(layout, h5name, rel + SUFFIX)
                if path is not None:
                    if isinstance(link, h5py.SoftLink):
                        layout.links[path] = _target(link.path, group.name) + SUFFIX
                    layout.datasets[path] = (h5name, obj)
            else:
                layout.skip(h5name, "a named datatype, not data")

    visit(h5file, "", frozenset({h5file.id}))
    for path in [p for p in layout.datasets if p in layout.groups]:
        layout.skip(layout.datasets.pop(path)[0], f"its name {path!r} is also a group's")
    return layout


def _root_path(layout: Layout, h5name: str, path: str) -> str | None:
    try:
        return parse_path(path)
    except BadRequest as exc:
        layout.skip(h5name, str(exc))
        return None


def _target(link: str, group: str) -> str:
    """Return the root path of a soft link's target, `link` being relative to `group`."""
    return posixpath.normpath(posixpath.join(group, link)).lstrip("/")
