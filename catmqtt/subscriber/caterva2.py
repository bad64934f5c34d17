"""This module holds the subscriber's Caterva2 dialect: what python-blosc2's
``C2Array`` asks of a Caterva2 server, read and answered in catmqtt's terms.

``C2Array(path, urlbase=...)`` reads ``GET {urlbase}api/info/{path}`` (our
metadata, plus the ``schunk`` section, ``mtime`` and ``accept_ranges`` added
by `describe`), ``{urlbase}api/fetch/{path}`` with ``slice_`` (our ``slice``)
or ``indices`` (a JSON list of per-axis indices, for numpy's advanced
indexing), as a query or as a JSON body in a POST, and ``GET
{urlbase}api/chunk/{path}?nchunk=N``, which the subscriber already serves.
Byte ranges of a dataset's frame (``Range`` on ``api/fetch``) are refused:
the subscriber holds chunks, not frames, and says so with ``accept_ranges:
"none"``, so blosc2 reads whole chunks instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from flask import request

from ..dtypes import dtype_from_json
from ..errors import BadRequest, CatmqttError, OutOfRange, TooLarge
from ..slices import format_key, parse_slice
from ..storage import cparams_from_json
from .large import PIECE

if TYPE_CHECKING:
    from ..schema import DatasetMeta
    from .answers import Answers

# The largest POST body /api/fetch reads; C2Array posts only keys too long for a URL.
MAX_BODY = 8 << 20
_MAX_AXES = 64
# The list of indices, and in it lists of as many dimensions as numpy's arrays take.
_MAX_NESTING = 1 + 64


def describe(meta: DatasetMeta) -> DatasetMeta:
    """Return a dataset's metadata with what ``C2Array`` reads besides our own fields.

    ``schunk`` carries what Caterva2 says of a dataset's super-chunk, with
    cparams by number as blosc2's ``CParams`` takes them; ``mtime`` is the
    etag (blosc2 compares it, to tell when a cached copy is stale); ``dtype``
    is ``str(dtype)``, as Caterva2 writes it (records as a Python literal, where
    the dataset's topic has a list).
    """
    cparams = cparams_from_json(meta["cparams"])
    schunk = {
        "nbytes": meta["nbytes"],
        "cbytes": meta.get("cbytes", meta["nbytes"]),
        "cratio": meta.get("cratio", 1.0),
        "blocksize": cparams.blocksize,
        "chunkshape": meta["chunksize"] // meta["typesize"],
        "chunksize": meta["chunksize"],
        "nchunks": meta["nchunks"],
        "typesize": meta["typesize"],
        "cparams": {
            "codec": cparams.codec.value,
            "codec_meta": cparams.codec_meta,
            "clevel": cparams.clevel,
            "use_dict": cparams.use_dict,
            "typesize": cparams.typesize,
            "blocksize": cparams.blocksize,
            "splitmode": cparams.splitmode.value,
            "filters": [f.value for f in cparams.filters],
            "filters_meta": list(cparams.filters_meta),
        },
        "vlmeta": meta["vlmeta"],
    }
    described = {**meta, "mtime": meta["etag"], "accept_ranges": "none", "schunk": schunk}
    if meta["kind"] == "ndarray":
        # As Caterva2 writes it, which C2Array reads: records as a Python literal.
        described["dtype"] = str(dtype_from_json(meta["dtype"]))
    return described


@dataclass(frozen=True)
class FetchArgs:
    """What a request to /api/fetch selects: a slice string, or advanced `indices` (JSON)."""

    slice: str
    indices: str | None


def fetch_args() -> FetchArgs:
    """Read the selection of the current /api/fetch request: its query, or its JSON body (POST).

    ``slice_`` (Caterva2's name) and ``slice`` (ours) are the same argument.
    """
    if "Range" in request.headers:
        raise CatmqttError(
            "byte ranges of a dataset are not served here: select with slice (or slice_),"
            " or read compressed chunks with /api/chunk",
            status=416,
        )
    values: Any = request.args
    if request.method == "POST":
        body = request.stream.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise TooLarge(f"the request body is over {MAX_BODY} bytes")
        try:
            values = json.loads(body)
        except (ValueError, RecursionError):
            values = None
        if not isinstance(values, dict):
            raise BadRequest('the body must be a JSON object, like {"slice_": "0:10"}')
    slice_, plain, indices = (values.get(name) for name in ("slice_", "slice", "indices"))
    for name, value in (("slice_", slice_), ("slice", plain), ("indices", indices)):
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"{name} must be a string, not {type(value).__name__}")
    if slice_ is not None and plain is not None and slice_ != plain:
        raise BadRequest(f"slice {plain!r} and slice_ {slice_!r} differ: give one of them")
    text = plain if slice_ is None else slice_
    if indices is not None and text:
        raise BadRequest("give slice (or slice_) or indices, not both")
    return FetchArgs(text or "", indices)


@contextmanager
def gathering(answers: Answers, fullpath: str, indices: str) -> Iterator[np.ndarray]:
    """Yield the selection `indices` of a dataset, as numpy's advanced indexing gives it.

    `indices` is a JSON list with an entry per axis (fewer are fine): an
    integer, ``null`` for the whole axis, a ``"start:stop[:step]"`` string,
    or a list (nested for more dimensions) of integer coordinates. The box
    that holds the coordinates is read, then the coordinates are picked from
    it: both are held in memory, together at most max_stream_bytes, and
    past `PIECE` within the budget large answers share, until the block ends.
    """
    reader = answers.reader
    meta = reader.lookup(fullpath).meta
    if meta["kind"] != "ndarray":
        raise BadRequest(f"{fullpath} is not an array: indices select items of arrays only")
    shape = meta["shape"]
    key = parse_indices(indices)
    if len(key) > len(shape):
        raise OutOfRange(f"too many indices: {len(key)} for {len(shape)} dimensions")
    # The box read (basic indexing), and what is then picked from it.
    box: list[slice] = []
    inner: list[int | slice | np.ndarray] = []
    sizes: list[int] = []
    for axis, (entry, size) in enumerate(zip(key, shape, strict=False)):
        if isinstance(entry, slice):
            box.append(entry)
            inner.append(slice(None))
            sizes.append(len(range(*entry.indices(size))))
            continue
        coords = _in_range(entry, axis, size)
        low, high = (int(coords.min()), int(coords.max()) + 1) if coords.size else (0, 0)
        box.append(slice(low, high))
        inner.append(int(coords) - low if isinstance(entry, int) else coords - low)
        sizes.append(high - low)
    limit = min(answers.budget.limits["memory"], reader.max_fetch)
    itemsize = dtype_from_json(meta["dtype"]).itemsize
    target = reader.selection(fullpath, format_key(tuple(box)))
    held = target.nbytes + math.prod(_gathered_shape(inner, [*sizes, *shape[len(key) :]])) * itemsize
    if held > limit:
        raise TooLarge(
            f"these coordinates need {held} bytes of {fullpath} in memory, over this subscriber's"
            f" max_stream_bytes or max_fetch_bytes ({limit}): ask in parts"
        )
    if held <= PIECE:
        yield np.asarray(reader.read(target)[tuple(inner)])
        return
    grant = answers.budget.enter(held)
    try:
        yield np.asarray(answers.builders.run(reader.read, target)[tuple(inner)])
    finally:
        grant.release()


def _in_range(entry: int | np.ndarray, axis: int, size: int) -> np.ndarray:
    """Return the coordinates `entry` along an axis of `size`, negative ones counted from the end."""
    coords = np.asarray(entry) if isinstance(entry, np.ndarray) else np.asarray([entry], dtype=object)
    if coords.size:
        low, high = int(coords.min()), int(coords.max())
        if low < -size or high >= size:
            bad = low if low < -size else high
            raise OutOfRange(f"index {bad} is out of range for axis {axis} with size {size}")
    coords = coords.astype(np.int64).reshape(np.shape(entry))
    return np.where(coords < 0, coords + size, coords)


def parse_indices(text: str) -> tuple[int | slice | np.ndarray, ...]:
    """Parse the `indices` of /api/fetch: a JSON list, an entry per axis (see `gather`)."""
    too_deep = BadRequest(f"indices is nested too deeply: at most {_MAX_NESTING} levels of lists")
    try:
        value = json.loads(text)
    except RecursionError:
        raise too_deep from None
    except ValueError:
        raise BadRequest(f"indices is not JSON: {text[:60]!r}") from None
    if not isinstance(value, list):
        raise BadRequest("indices must be a JSON list, an entry per axis")
    if len(value) > _MAX_AXES:
        raise BadRequest(f"indices has more than {_MAX_AXES} entries")
    if any(1 + _nesting(entry) > _MAX_NESTING for entry in value):
        raise too_deep
    return tuple(_parse_entry(entry) for entry in value)


def _nesting(value: object) -> int:
    """Return how deep the lists of `value` are nested, along their first items:
    lists nested unevenly are refused by numpy apart."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    return depth


def _parse_entry(entry: object) -> int | slice | np.ndarray:
    """Parse one axis's entry of `indices`: an int, a slice, or an integer array (unchecked bounds)."""
    if entry is None:
        return slice(None)
    if isinstance(entry, int) and not isinstance(entry, bool):
        return entry
    if isinstance(entry, str):
        key = parse_slice(entry)
        if len(key) != 1 or key[0] is Ellipsis:
            raise BadRequest(f"an entry of indices names one axis: {entry[:60]!r} does not")
        return key[0]
    if isinstance(entry, list):
        try:
            coords = np.asarray(entry)
        except (ValueError, RecursionError):
            raise BadRequest("a list of indices holds integers, nested evenly as in a numpy array") from None
        if coords.size and (coords.dtype == np.bool_ or not np.issubdtype(coords.dtype, np.integer)):
            raise BadRequest(f"a list of indices holds integers, not {coords.dtype} values")
        return coords if coords.size else coords.astype(np.int64)
    raise BadRequest(f"an entry of indices is an integer, null, 'start:stop' or a list, not {entry!r:.60}")


def _gathered_shape(inner: list, shape: list[int]) -> tuple[int, ...]:
    """Return the shape numpy gives the selection `inner` of a box of `shape`, without building it.

    Integers count as coordinate arrays once there is one; the selected axes
    go where the first of them is if they are adjacent, else first.
    """
    lengths = [len(range(*s.indices(n))) for s, n in zip(inner, shape, strict=False) if isinstance(s, slice)]
    rest = list(shape[len(inner) :])
    picked = [i for i, entry in enumerate(inner) if not isinstance(entry, slice)]
    if not any(isinstance(entry, np.ndarray) for entry in inner):
        return (*lengths, *rest)
    try:
        coords = np.broadcast_shapes(*(np.shape(inner[i]) for i in picked))
    except ValueError:
        raise BadRequest("the index lists of indices cannot be broadcast together") from None
    if picked != list(range(picked[0], picked[-1] + 1)):
        return (*coords, *lengths, *rest)
    before = sum(1 for entry in inner[: picked[0]] if isinstance(entry, slice))
    return (*lengths[:before], *coords, *lengths[before:], *rest)
