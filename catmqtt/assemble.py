"""This module turns compressed Blosc2 chunks into the selection a client asked for.

Chunks are decoded one at a time straight into the result, so that neither
the client nor a server ever holds a whole dataset, compressed or not,
beside the result. Each chunk is checked against the dataset's metadata
before it is decoded (`blocks.chunk_problem`): Blosc2 writes as many bytes
as a chunk's header says, whatever room it is given.

Several threads can decode at once, and read the network meanwhile, once
`release_gil` has told Blosc2 to release the GIL while it compresses and
decompresses (for the whole process; Blosc2's default keeps it): a warm
whole fetch of the benchmark's arrays took 20-30% less time. Those that
start threads that decode call it; importing this module changes nothing.
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING

import blosc2
import numpy as np

from .blocks import HEADER, chunk_problem, cut
from .dtypes import array_dtype
from .errors import Unavailable
from .slices import Selection, chunk_coords, chunk_grid, forward

if TYPE_CHECKING:
    from .schema import DatasetMeta


def release_gil() -> None:
    """Have Blosc2 release the GIL while it compresses and decompresses, in the whole process."""
    blosc2.set_releasegil(True)


class Assembler:
    """Build the result of selection `sel` of a dataset described by `meta`, chunk by chunk.

    Arrays (``ndarray``) decode into their dtype; byte streams (``schunk``,
    ``file``) into items of ``typesize`` bytes. `sender` names where the
    chunks come from, in the error that refuses one.
    """

    def __init__(
        self, meta: DatasetMeta, sel: Selection, *, nthreads: int | None = None, sender: str = ""
    ) -> None:
        # Blosc2 threads for each chunk: callers that decode several chunks at once
        # in threads of their own ask for one, else each call starts Blosc2's threads.
        self.dparams = {} if nthreads is None else {"nthreads": nthreads}
        self.meta = meta
        self.sender = sender
        self.kind = meta["kind"]
        self.shape = tuple(meta["shape"])
        self.chunks = tuple(meta["chunks"])
        if self.kind == "ndarray":
            self.dtype = array_dtype(meta)
            self.blocks = tuple(meta["blocks"])
        else:
            self.dtype = np.dtype(f"V{meta['typesize']}")
            self.blocks = self.chunks
        self.grid = chunk_grid(self.shape, self.chunks)
        # Whether a chunk's bytes, block after block, are its elements in C order.
        self.c_ordered = (
            len(self.chunks) > 0
            and all(b > 0 and c % b == 0 for c, b in zip(self.chunks, self.blocks, strict=True))
            and self.blocks[1:] == self.chunks[1:]
        )
        self.key, self.flip = forward(sel)
        out_shape = tuple(len(range(k.start, k.stop, k.step)) for k in self.key if isinstance(k, slice))
        self.out = np.empty(out_shape, dtype=self.dtype)

    def add(self, nchunk: int, data: bytes) -> None:
        """Decode chunk `nchunk` and copy the part of it that the selection wants.

        Where `partial_blocks` names some blocks of the chunk, only those are decoded: the
        other bytes of `data` may be anything (zeros, while they are on their way) if
        its blocks can be read apart (`blocks.block_parts`); else it is decoded whole.
        """
        place = self._place(nchunk)
        if place is None:
            return
        problem = chunk_problem(data, self.meta, nchunk)
        if problem is not None:
            raise self._refused(f"chunk {nchunk}", problem)
        src, dst = place
        target = self.out[(*dst, ...)]
        if self.c_ordered and target.shape == self.chunks and target.flags.c_contiguous:
            # A whole chunk into a contiguous place: decoded right there, no copy.
            self._decode_into(data, target)
            return
        rows = self._rows(src)
        part = None if rows is None else self._decode_rows(data, rows)
        if part is not None:
            target[...] = part[(_shift(src[0], rows.start), *src[1:])]
            return
        target[...] = self._decode(data)[tuple(src)]

    def partial_blocks(self, nchunk: int) -> range | None:
        """Return the blocks of chunk `nchunk` that `add` decodes, if not all of them."""
        place = self._place(nchunk)
        rows = None if place is None else self._rows(place[0])
        return None if rows is None else self._blocks_of(rows)

    def _place(self, nchunk: int) -> tuple[list[int | slice], list[slice]] | None:
        """Return where the selection's part of chunk `nchunk` is, in the chunk and in
        the result; None if the selection misses the chunk."""
        coords = chunk_coords(nchunk, self.grid)
        src: list[int | slice] = []
        dst: list[slice] = []
        for k, coord, size, extent in zip(self.key, coords, self.chunks, self.shape, strict=True):
            low, high = coord * size, min(coord * size + size, extent)
            if isinstance(k, int):
                if not low <= k < high:
                    return None
                src.append(k - low)
                continue
            first = k.start if k.start >= low else k.start + -(-(low - k.start) // k.step) * k.step
            end = min(high, k.stop)
            if first >= end:
                return None
            count = len(range(first, end, k.step))
            start = (first - k.start) // k.step
            src.append(slice(first - low, first - low + (count - 1) * k.step + 1, k.step))
            dst.append(slice(start, start + count))
        return src, dst

    def _rows(self, src: list[int | slice]) -> range | None:
        """Return the rows of an array's C-ordered chunk to decode for `src`, in whole
        blocks, if they are at most half the chunk's; None to decode it all."""
        rows = _rows(src[0]) if self.c_ordered and self.kind == "ndarray" else None
        if rows is None or 2 * (rows.stop - rows.start) > self.chunks[0]:
            return None
        block = self.blocks[0]
        return range(rows.start // block * block, min(-(-rows.stop // block) * block, self.chunks[0]))

    def _blocks_of(self, rows: range) -> range:
        return range(rows.start // self.blocks[0], -(-rows.stop // self.blocks[0]))

    def _decode_rows(self, data: bytes, rows: range) -> np.ndarray | None:
        """Return rows `rows` (whole blocks along the first axis) of a C-ordered chunk,
        decoding only the blocks that hold them; None if they cannot be read apart."""
        blocks = self._blocks_of(rows)
        part = cut(data, blocks, self.out.itemsize * math.prod(self.chunks))
        if part is None:
            return None
        out = np.empty((len(rows), *self.chunks[1:]), dtype=self.dtype)
        # Blosc2's threads share out blocks: for one, they would cost more than
        # they save (0.15 ms against 0.05 ms for a block of 128 KiB).
        self._decode_into(part, out, nthreads=1 if len(blocks) == 1 else None)
        return out

    def _decode(self, data: bytes) -> np.ndarray:
        """Return the chunk as an array of the (padded) chunk shape, in C order."""
        if self.kind != "ndarray":
            # Sized by its header, which `chunk_problem` checked.
            return np.frombuffer(blosc2.decompress2(data, **self.dparams), dtype=self.dtype)
        bgrid = [-(-c // b) if b else 0 for c, b in zip(self.chunks, self.blocks, strict=True)]
        padded = [g * b for g, b in zip(bgrid, self.blocks, strict=True)]
        buffer = np.empty(math.prod(padded), dtype=self.dtype)
        self._decode_into(data, buffer)
        ndim = len(self.chunks)
        if ndim == 0:
            return buffer.reshape(())
        # A chunk is stored block after block, each block in C order.
        blocked = buffer.reshape(*bgrid, *self.blocks)
        order = [axis for pair in zip(range(ndim), range(ndim, 2 * ndim), strict=True) for axis in pair]
        return blocked.transpose(order).reshape(padded)

    def _decode_into(self, data: bytes, dst: np.ndarray, *, nthreads: int | None = None) -> None:
        """Decode `data` into `dst`, if it decodes to just as many bytes.

        Blosc2 writes as many as the chunk's header says, past the end of `dst`
        if it is smaller: the last line of defence, should metadata that
        `schema.parse_dataset` did not check size `dst` otherwise.
        """
        nbytes = struct.unpack_from("<i", data, 4)[0] if len(data) >= HEADER else -1
        if nbytes != dst.nbytes:
            raise self._refused(
                "a chunk", f"it holds {nbytes} bytes, where its metadata has room for {dst.nbytes}"
            )
        dparams = self.dparams if nthreads is None else {"nthreads": nthreads}
        blosc2.decompress2(data, dst=dst, **dparams)

    def _refused(self, chunk: str, problem: str) -> Unavailable:
        what = f"{chunk} of {self.meta['path']!r}"
        if self.sender:
            what = f"{self.sender} sent {what}, which"
        return Unavailable(f"{what} is not what its metadata says: {problem}", status=502)

    def result(self) -> np.ndarray:
        """Return the selection, in numpy's order (negative steps flipped back)."""
        return np.flip(self.out, axis=self.flip) if self.flip else self.out


def _rows(index: int | slice) -> range | None:
    """Return the rows an index along the first axis of a chunk reads, as a step-1 range."""
    if isinstance(index, int):
        return range(index, index + 1)
    return range(index.start, index.stop) if index.stop > index.start else None


def _shift(index: int | slice, offset: int) -> int | slice:
    if isinstance(index, int):
        return index - offset
    return slice(index.start - offset, index.stop - offset, index.step)
