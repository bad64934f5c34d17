"""This module writes and reads the arrays a fetch answers with: .npy (`wire.NPY`)
or a Blosc2 frame (`wire.CFRAME`).

Apart from `catmqtt.wire` because these formats need numpy and Blosc2, which
`wire` (and with it ``import catmqtt``) does without. They are imported by the
functions, not by the module: the client imports it with the rest of the
client (a module loaded at a first read cost that read a millisecond),
before it needs numpy.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

from .wire import CFRAME, NPY

if TYPE_CHECKING:
    import numpy as np


def encode_array(array: np.ndarray, npy: bool) -> tuple[bytes, str]:
    """Return `array` (0-d for a scalar, as numpy gives it) as .npy if `npy`, else as
    a Blosc2 frame, and its media type."""
    import blosc2
    import numpy as np

    if npy:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue(), NPY
    # np.ascontiguousarray would make a scalar an array of shape (1,).
    return blosc2.asarray(np.asarray(array, order="C")).to_cframe(), CFRAME


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """Return the header of a .npy file of an array of `dtype` and `shape` (its data follows)."""
    import numpy as np

    buffer = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(dtype)
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def decode_array(data: bytes, npy: bool) -> np.ndarray:
    """Return the array that `encode_array` wrote as `data` (.npy if `npy`, else a
    Blosc2 frame); raise ValueError if `data` is not that."""
    if npy:
        import numpy as np

        _check_npy(data)
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except EOFError:
            raise ValueError("not .npy: no data") from None
        # np.load also reads .npz archives.
        if not isinstance(array, np.ndarray):
            raise ValueError("not .npy: an .npz archive")
        return array
    import blosc2

    try:
        return blosc2.ndarray_from_cframe(data)[()]
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"not a Blosc2 frame of an array: {exc}") from None


def _check_npy(data: bytes) -> None:
    """Raise ValueError unless `data` is a .npy file whose header says as many bytes as
    follow it (before numpy allocates what the header says)."""
    import numpy as np

    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(f)
    except (ValueError, SyntaxError, TypeError, EOFError) as exc:
        raise ValueError(f"not .npy: {exc}") from None
    if dtype.hasobject:
        raise ValueError("not .npy of plain items: an object dtype")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != len(data) - f.tell():
        raise ValueError(f"its header says {nbytes} bytes, {len(data) - f.tell()} follow")
