"""This module turns numpy dtypes and metadata values into JSON and back."""

from __future__ import annotations

import ast
import base64
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BadRequest

if TYPE_CHECKING:
    from .schema import DatasetMeta


def dtype_to_json(dtype: np.dtype) -> str | list:
    """Return `dtype` as JSON: its name (``"complex128"``), or a descr list."""
    if dtype.fields is None and dtype.subdtype is None:
        return str(dtype)
    return [list(field) for field in dtype.descr]


# The longest dtype written as Caterva2 writes records (a Python literal) that is read.
_MAX_LITERAL = 16384


def dtype_from_json(value: object) -> np.dtype:
    """Return the dtype that `dtype_to_json` gave `value` for, or that Caterva2 (and the
    subscriber's `/api/info`) writes as ``str(dtype)``: records as a Python literal,
    ``"[('a', '<i4'), ('b', '<f8')]"``."""

    def field(item: object) -> tuple:
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise TypeError(item)
        name, kind = item[0], item[1]
        kind = [field(sub) for sub in kind] if isinstance(kind, list) else kind
        return (name, kind, tuple(item[2])) if len(item) == 3 else (name, kind)

    try:
        if isinstance(value, str):
            dtype = _dtype_from_text(value)
        elif isinstance(value, list):
            dtype = np.dtype([field(item) for item in value])
        else:
            raise TypeError(value)
    except (TypeError, ValueError, SyntaxError, RecursionError, MemoryError):
        raise BadRequest(f"invalid dtype {value!r:.200}") from None
    if dtype.hasobject:
        raise BadRequest(f"object dtypes are not supported: {value!r:.200}")
    return dtype


def _dtype_from_text(text: str) -> np.dtype:
    """Return the dtype numpy reads in `text`, or that `text` writes as a Python literal."""
    try:
        return np.dtype(text)
    except (TypeError, ValueError):
        if not text.startswith(("[", "(")) or len(text) > _MAX_LITERAL:
            raise
    return np.dtype(ast.literal_eval(text))


def array_dtype(meta: DatasetMeta) -> np.dtype:
    """Return the dtype of an array's metadata, if its items are of ``typesize`` bytes."""
    dtype = dtype_from_json(meta["dtype"])
    if dtype.itemsize != meta["typesize"]:
        raise BadRequest(
            f"metadata of {meta['path']!r}: typesize {meta['typesize']} is not the size of its dtype"
            f" {dtype} ({dtype.itemsize} bytes)"
        )
    return dtype


def to_jsonable(value: Any) -> Any:
    """Return `value` (vlmeta, attributes) with everything made JSON-safe.

    Bytes become text when they are UTF-8, else ``{"base64": ...}``; numpy
    scalars and arrays become Python numbers and lists.
    """
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, complex):
        return [value.real, value.imag]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value
