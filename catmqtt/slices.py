"""This module parses numpy-style slice strings and maps selections to chunks.

Pure logic, no I/O. A selection is one entry per axis: an ``int`` (the axis
is dropped from the result) or a ``range`` (the indices kept, in the order
numpy returns them, so negative steps are ranges that count down).
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Sequence
from types import EllipsisType

from .errors import BadRequest, OutOfRange

Key = tuple[int | slice | EllipsisType, ...]
Selection = tuple[int | range, ...]

# ASCII digits only: \d would take other scripts' digits too, which int() reads.
_INT = r"\s*[+-]?[0-9]+\s*"
_ITEM = re.compile(
    rf"(?P<int>{_INT})|(?P<start>{_INT})?:(?P<stop>{_INT})?(?::(?P<step>{_INT})?)?|\s*\.\.\.\s*"
)
_MAX_ITEMS = 64
# Also keeps every integer of a slice under Python's 4300 digits for int().
_MAX_TEXT = 4096


def parse_slice(text: str) -> Key:
    """Parse a numpy basic-indexing expression such as ``"1, ::-2, ..."``.

    An empty string (or ``"()"``) selects everything. Enclosing brackets are
    accepted. Raises BadRequest saying what is wrong.
    """
    if not isinstance(text, str):
        raise BadRequest(f"slice must be a string, not {type(text).__name__}")
    if len(text) > _MAX_TEXT:
        raise BadRequest(f"slice is longer than {_MAX_TEXT} characters")
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1].strip()
    if body in ("", "()"):
        return ()
    items = body.split(",")
    if items[-1].strip() == "" and len(items) > 1:
        items.pop()  # a trailing comma, as in "1,"
    if len(items) > _MAX_ITEMS:
        raise BadRequest(f"slice has more than {_MAX_ITEMS} items")
    key: list[int | slice | EllipsisType] = []
    for item in items:
        match = _ITEM.fullmatch(item.strip())
        if match is None:
            raise BadRequest(
                f"malformed slice {text!r}: {item.strip()!r} is not an integer,"
                " a start:stop:step slice or '...'"
            )
        if match["int"] is not None:
            key.append(int(match["int"]))
        elif ":" in item:
            start, stop, step = (
                None if match[g] is None else int(match[g]) for g in ("start", "stop", "step")
            )
            if step == 0:
                raise BadRequest(f"malformed slice {text!r}: slice step cannot be zero")
            key.append(slice(start, stop, step))
        else:
            key.append(Ellipsis)
    if key.count(Ellipsis) > 1:
        raise BadRequest(f"malformed slice {text!r}: more than one '...'")
    return tuple(key)


def format_key(key: Key) -> str:
    """Return the slice string that `parse_slice` turns back into `key`."""

    def one(item: int | slice | EllipsisType) -> str:
        if item is Ellipsis:
            return "..."
        if isinstance(item, slice):
            parts = ["" if v is None else str(v) for v in (item.start, item.stop, item.step)]
            return ":".join(parts) if item.step is not None else ":".join(parts[:2])
        return str(int(item))

    return ",".join(one(item) for item in key)


def as_key(key: object) -> Key:
    """Turn what ``__getitem__`` received into a Key, or raise BadRequest."""
    items = key if isinstance(key, tuple) else (key,)
    out: list[int | slice | EllipsisType] = []
    for item in items:
        if item is Ellipsis:
            out.append(Ellipsis)
        elif isinstance(item, slice):
            parts = []
            for v in (item.start, item.stop, item.step):
                if v is not None and not _is_int(v):
                    raise BadRequest(f"slice bounds must be integers, not {_short(v)}")
                parts.append(None if v is None else operator.index(v))
            if parts[2] == 0:
                raise BadRequest("slice step cannot be zero")
            out.append(slice(*parts))
        elif _is_int(item):
            out.append(operator.index(item))
        else:
            raise BadRequest(
                f"only integers, slices and '...' are valid indices (basic indexing), not {_short(item)}"
            )
    if out.count(Ellipsis) > 1:
        raise BadRequest("an index can only have a single ellipsis ('...')")
    return tuple(out)


def _short(value: object) -> str:
    """Return what an error message says of an index: an array by its shape, else a short repr."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"an array of shape {tuple(shape)} and dtype {dtype}"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _is_int(value: object) -> bool:
    """Tell whether numpy takes `value` as an integer index (0-d integer arrays too)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def select(key: Key, shape: Sequence[int]) -> Selection:
    """Resolve `key` against `shape`: one int or range per axis.

    Follows numpy: missing trailing axes are taken whole, ``...`` stands for
    as many whole axes as needed, integers may be negative.
    """
    nfixed = sum(1 for item in key if item is not Ellipsis)
    if nfixed > len(shape):
        raise OutOfRange(f"too many indices: the array has {len(shape)} dimensions, {nfixed} were given")
    if Ellipsis in key:
        at = key.index(Ellipsis)
        key = key[:at] + (slice(None),) * (len(shape) - nfixed) + key[at + 1 :]
    else:
        key = key + (slice(None),) * (len(shape) - nfixed)
    sel: list[int | range] = []
    for axis, (item, size) in enumerate(zip(key, shape, strict=True)):
        if isinstance(item, slice):
            sel.append(range(*item.indices(size)))
            continue
        index = item + size if item < 0 else item
        if not 0 <= index < size:
            raise OutOfRange(f"index {item} is out of range for axis {axis} with size {size}")
        sel.append(index)
    return tuple(sel)


def items_at_most(key: Key) -> int | None:
    """Return how many items `key` selects at most along the axes it names, whatever
    their sizes, or None if that depends on them (no axis named, a slice open at
    one end or across zero, an ``...``). Axes it does not name add a factor not
    counted."""
    if not key:
        return None
    count = 1
    for item in key:
        if item is Ellipsis:
            return None
        if isinstance(item, slice):
            if item.start is None or item.stop is None or (item.start < 0) != (item.stop < 0):
                return None
            count *= len(range(item.start, item.stop, item.step or 1))
    return count


def result_shape(sel: Selection) -> tuple[int, ...]:
    """Return the shape of the array that `sel` selects."""
    return tuple(len(s) for s in sel if isinstance(s, range))


def _chunk_indices(sel: int | range, chunk: int) -> list[int]:
    """Return the sorted chunk numbers along one axis that `sel` touches."""
    if isinstance(sel, int):
        return [sel // chunk]
    if not sel:
        return []
    low, high = min(sel[0], sel[-1]), max(sel[0], sel[-1])
    if abs(sel.step) <= chunk:
        return list(range(low // chunk, high // chunk + 1))
    # A step past the chunk size visits at most one index per chunk.
    return sorted({i // chunk for i in sel})


def chunk_grid(shape: Sequence[int], chunks: Sequence[int]) -> tuple[int, ...]:
    """Return how many chunks there are along each axis."""
    return tuple(-(-s // c) if c else 0 for s, c in zip(shape, chunks, strict=True))


def chunk_number(coords: Sequence[int], grid: Sequence[int]) -> int:
    """Return the linear (C-order) number of the chunk at `coords` of `grid`."""
    n = 0
    for coord, extent in zip(coords, grid, strict=True):
        n = n * extent + coord
    return n


def chunk_coords(number: int, grid: Sequence[int]) -> tuple[int, ...]:
    """Return the coordinates of chunk `number` of `grid` (the inverse of `chunk_number`)."""
    coords = []
    for extent in reversed(grid):
        number, coord = divmod(number, extent)
        coords.append(coord)
    return tuple(reversed(coords))


def chunks_touched(sel: Selection, shape: Sequence[int], chunks: Sequence[int]) -> list[int]:
    """Return the linear (C-order) numbers of the chunks that `sel` touches."""
    grid = chunk_grid(shape, chunks)
    per_axis = [_chunk_indices(s, c) for s, c in zip(sel, chunks, strict=True)]
    return [chunk_number(coords, grid) for coords in itertools.product(*per_axis)]


def forward(sel: Selection) -> tuple[tuple[int | slice, ...], tuple[int, ...]]:
    """Return `sel` as ascending slices, and the result axes to flip after.

    Storage layers read ascending slices; numpy's order for a negative step
    is restored by flipping those axes of what was read.
    """
    key: list[int | slice] = []
    flip = []
    out_axis = 0
    for s in sel:
        if isinstance(s, int):
            key.append(s)
            continue
        if s.step < 0:
            s = s[::-1]
            flip.append(out_axis)
        # At most one index: step 1, as a step of any size (-10**30...) selects
        # the same, and Blosc2 refuses steps beyond 64 bits.
        key.append(slice(s.start, s.stop, s.step) if len(s) > 1 else slice(s.start, s.start + len(s), 1))
        out_axis += 1
    return tuple(key), tuple(flip)
