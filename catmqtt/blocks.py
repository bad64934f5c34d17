"""This module reads the layout of a compressed Blosc2 chunk: where its blocks
lie, so that a publisher can send the blocks a selection needs before the
rest of the chunk, and how to cut a chunk down to some of its blocks, so that
only those are decoded.

A chunk starts with a 32-byte header (sizes, flags, filters). Then come
either its bytes as they are (a chunk that did not compress), or the offset
of each block as a little-endian int32 followed by the blocks, each
compressed on its own (or nothing more, for a chunk of one special value).

Chunks come from publishers and subscribers that may lie: `chunk_problem`
checks one against its dataset's metadata before anything decodes it.
"""

from __future__ import annotations

import bisect
import math
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .schema import DatasetMeta

HEADER = 32
# Blosc2's limits: the largest chunk (BLOSC2_MAX_BUFFERSIZE) and block
# (BLOSC2_MAXBLOCKSIZE), in bytes; a chunk records a typesize of at most 255
# (larger items are stored as bytes, of typesize 1).
MAX_CHUNKSIZE = (1 << 31) - 1 - HEADER
MAX_BLOCKSIZE = 536866816
MAX_STORED_TYPESIZE = 255
# Chunks of more blocks are decoded whole (a damaged header could claim millions).
MAX_BLOCKS = 1 << 16
# Flags (byte 2): an extended header (bits 0 and 2), bytes stored as they are (bit 1).
EXTENDED, COPIED = 0x05, 0x02
# The delta filter (its Blosc2 code) decodes every block against the first one.
DELTA = 3
# Blosc2 flags: a chunk of one special value (byte 31, bits 4 to 6: zeros, NaNs,
# one repeated value of typesize bytes, uninitialized), blocks of variable length
# (byte 30, bit 0).
SPECIAL_VALUE, SPECIAL_LAST = 3, 4
VL_BLOCKS = 0x01


def head_size(nblocks: int) -> int:
    return HEADER + 4 * nblocks


def block_bounds(head: bytes, nbytes: int, cbytes: int) -> tuple[list[int], list[int]] | None:
    """Return the start and end (in bytes) of each block of a chunk of `nbytes`
    bytes, `cbytes` compressed, from its first bytes (`head`: at least its header
    and block offsets); None if its blocks cannot be read apart: a chunk of one
    special value, with a dictionary or the delta filter, or `head` not the
    start of such a chunk.

    Blocks are not always stored in order (Blosc2's threads write them as
    they finish): a block ends where the next one in the chunk's bytes begins.
    """
    if len(head) < HEADER:
        return None
    size, blocksize, csize = struct.unpack_from("<iii", head, 4)
    # No Blosc2 flags (bytes 30 and 31): no special value, no dictionary, no
    # blocks of variable length.
    plain = head[2] & EXTENDED == EXTENDED and head[30:32] == b"\0\0" and DELTA not in head[16:22]
    if not plain or (size, csize) != (nbytes, cbytes) or nbytes <= 0 or blocksize <= 0:
        return None
    nblocks = -(-nbytes // blocksize)
    if nblocks > MAX_BLOCKS:
        return None
    if head[2] & COPIED:
        if cbytes != HEADER + nbytes:
            return None
        starts = [HEADER + b * blocksize for b in range(nblocks)]
        return starts, [min(s + blocksize, cbytes) for s in starts]
    if len(head) < head_size(nblocks):
        return None
    starts = list(struct.unpack_from(f"<{nblocks}i", head, HEADER))
    if len(set(starts)) != nblocks or not all(head_size(nblocks) <= s < cbytes for s in starts):
        return None
    bounds = [*sorted(starts), cbytes]
    return starts, [bounds[bisect.bisect_right(bounds, s)] for s in starts]


def block_parts(chunk: bytes, blocks: range, nbytes: int) -> list[tuple[int, int]] | None:
    """Return the spans of bytes ``(start, stop)`` of `chunk` (`nbytes` bytes
    uncompressed) that `cut` needs for `blocks`: its header and block offsets,
    and the bytes of those blocks (maybe of others too, stored among them);
    None if the blocks cannot be read apart."""
    bounds = block_bounds(chunk, nbytes, len(chunk))
    if bounds is None or not 0 <= blocks.start < blocks.stop <= len(bounds[0]):
        return None
    starts, ends = bounds
    head = min(starts)
    start, stop = min(starts[b] for b in blocks), max(ends[b] for b in blocks)
    return [(0, stop)] if start == head else [(0, head), (start, stop)]


def gaps(spans: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """Return the spans of ``range(size)`` that ordered, disjoint `spans` leave out."""
    bounds = [0, *(x for span in spans for x in span), size]
    return [(a, b) for a, b in zip(bounds[::2], bounds[1::2], strict=True) if b > a]


def cut(chunk: bytes, blocks: range, nbytes: int) -> bytes | None:
    """Return a chunk of just `blocks` of `chunk` (`nbytes` bytes uncompressed),
    which decodes to their bytes; None if the blocks cannot be read apart.

    Only the header, the offsets and `blocks` of `chunk` are read: its other
    bytes may be anything.
    """
    bounds = block_bounds(chunk, nbytes, len(chunk))
    if bounds is None or not 0 <= blocks.start < blocks.stop <= len(bounds[0]):
        return None
    starts, ends = bounds
    blocksize = struct.unpack_from("<i", chunk, 8)[0]
    view = memoryview(chunk)
    header = bytearray(view[:HEADER])
    struct.pack_into("<i", header, 4, min(blocks.stop * blocksize, nbytes) - blocks.start * blocksize)
    if chunk[2] & COPIED:
        body = view[starts[blocks.start] : ends[blocks.stop - 1]]
        struct.pack_into("<i", header, 12, HEADER + len(body))
        return b"".join([header, body])
    pieces = [view[starts[b] : ends[b]] for b in blocks]
    offsets = [head_size(len(blocks))]
    for piece in pieces[:-1]:
        offsets.append(offsets[-1] + len(piece))
    struct.pack_into("<i", header, 12, offsets[-1] + len(pieces[-1]))
    return b"".join([header, struct.pack(f"<{len(blocks)}i", *offsets), *pieces])


def chunk_nbytes(meta: DatasetMeta, nchunk: int) -> int:
    """Return the uncompressed size of chunk `nchunk` of a dataset described by `meta`."""
    if meta["kind"] == "ndarray":
        return meta["chunksize"]
    # The last chunk of a byte stream may be short.
    return min(meta["chunksize"], meta["nbytes"] - nchunk * meta["chunksize"])


def chunk_problem(chunk: bytes | bytearray, meta: DatasetMeta, nchunk: int) -> str | None:
    """Return what makes `chunk` not chunk `nchunk` of a dataset described by `meta`
    (checked by ``schema.parse_dataset``); None if nothing does.

    Everything decoding relies on is checked: the sizes in the header (a
    chunk of an array decodes into a buffer sized by its metadata, and Blosc2
    writes as many bytes as the header says), the typesize, the block size,
    and where the blocks lie (within the chunk). What the blocks hold is
    Blosc2's to check as it decodes them.
    """
    if len(chunk) < HEADER:
        return f"{len(chunk)} bytes, too short for a Blosc2 chunk"
    flags, typesize = chunk[2], chunk[3]
    nbytes, blocksize, cbytes = struct.unpack_from("<iii", chunk, 4)
    want_nbytes = chunk_nbytes(meta, nchunk)
    want_typesize = meta["typesize"] if meta["typesize"] <= MAX_STORED_TYPESIZE else 1
    if flags & EXTENDED != EXTENDED:
        return "not a Blosc2 chunk (no extended header)"
    if cbytes != len(chunk):
        return f"its header says {cbytes} bytes, but {len(chunk)} came"
    if nbytes != want_nbytes:
        return f"it holds {nbytes} bytes, not {want_nbytes}"
    if typesize != want_typesize:
        return f"its typesize is {typesize}, not {want_typesize}"
    if meta["kind"] == "ndarray":
        want_blocksize = math.prod(meta["blocks"]) * meta["typesize"]
        if blocksize != want_blocksize:
            return f"its blocks are of {blocksize} bytes, not {want_blocksize} (blocks {meta['blocks']})"
    if not 0 < blocksize <= nbytes:
        return f"its blocks are of {blocksize} bytes, in a chunk of {nbytes}"
    if chunk[30] & VL_BLOCKS:
        return "its blocks are of variable length"
    special = chunk[31] >> 4 & 0x7
    if special > SPECIAL_LAST:
        return f"an unknown special value ({special})"
    if special:
        # Just the header, and the value repeated, if any.
        size = HEADER + (meta["typesize"] if special == SPECIAL_VALUE else 0)
        return None if cbytes == size else f"a chunk of one value, of {cbytes} bytes, not {size}"
    if flags & COPIED:
        size = HEADER + nbytes
        return None if cbytes == size else f"a chunk stored as is, of {cbytes} bytes, not {size}"
    nblocks = -(-nbytes // blocksize)
    if cbytes < head_size(nblocks):
        return f"{cbytes} bytes, too short for the offsets of its {nblocks} blocks"
    starts = struct.unpack_from(f"<{nblocks}i", chunk, HEADER)
    if min(starts) < head_size(nblocks) or max(starts) >= cbytes:
        return f"its blocks start out of its {cbytes} bytes"
    return None
