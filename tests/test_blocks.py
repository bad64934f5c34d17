"""Tables for catmqtt.blocks: the layout of compressed Blosc2 chunks, read apart."""

from __future__ import annotations

import struct

import blosc2
import numpy as np
import pytest

from catmqtt import blocks, fetcher

N, BLOCK = 8 * 4096, 4096
RNG = np.random.default_rng(7)
RANDOM = RNG.random(N)
SMOOTH = np.linspace(0, 1, N)
BYTES = np.frombuffer(RNG.bytes(N), dtype=np.uint8)


def chunk_of(data: np.ndarray, reverse: bool = False, **cparams) -> bytes:
    """Return the one chunk of `data`, in blocks of BLOCK items (stored last to
    first if `reverse`)."""
    array = blosc2.asarray(data, chunks=data.shape, blocks=(BLOCK,), cparams=cparams)
    chunk = array.schunk.get_chunk(0)
    if reverse:
        chunk = reversed_blocks(chunk, data.nbytes)
        # Still a chunk Blosc2 reads.
        assert np.array_equal(np.frombuffer(blosc2.decompress2(chunk), dtype=data.dtype), data)
    return chunk


def reversed_blocks(chunk: bytes, nbytes: int) -> bytes:
    """Return `chunk` with its blocks stored last to first, as Blosc2's threads may
    store them (each writes its block when it is done)."""
    starts, ends = blocks.block_bounds(chunk, nbytes, len(chunk))
    head = bytearray(chunk[: min(starts)])
    position = len(head)
    body = []
    for b in reversed(range(len(starts))):
        struct.pack_into("<i", head, blocks.HEADER + 4 * b, position)
        body.append(chunk[starts[b] : ends[b]])
        position += ends[b] - starts[b]
    return bytes(head) + b"".join(body)


CHUNKS = {
    "random": (RANDOM, {}),
    "smooth, bitshuffle": (SMOOTH, {"filters": [blosc2.Filter.BITSHUFFLE]}),
    "stored as is (clevel 0)": (RANDOM, {"clevel": 0}),
    "incompressible bytes": (BYTES, {}),
    "blocks out of order": (SMOOTH, {"reverse": True}),
}
WANTED = [range(0, 1), range(3, 5), range(7, 8), range(0, 8)]


@pytest.mark.parametrize("name", CHUNKS)
@pytest.mark.parametrize("wanted", WANTED, ids=str)
def test_cut_decodes_to_the_blocks(name, wanted):
    data, cparams = CHUNKS[name]
    chunk = chunk_of(data, **cparams)
    part = blocks.cut(chunk, wanted, data.nbytes)
    decoded = np.frombuffer(blosc2.decompress2(part), dtype=data.dtype)
    assert np.array_equal(decoded, data[wanted.start * BLOCK : wanted.stop * BLOCK])


@pytest.mark.parametrize("name", CHUNKS)
@pytest.mark.parametrize("wanted", WANTED, ids=str)
def test_the_parts_of_a_chunk_are_enough_to_cut_it(name, wanted):
    data, cparams = CHUNKS[name]
    chunk = chunk_of(data, **cparams)
    spans = blocks.block_parts(chunk, wanted, data.nbytes)
    assert spans[0][0] == 0
    # Only what the spans hold: the other bytes are zeros, as while they are on their way.
    sparse = bytearray(len(chunk))
    for start, stop in spans:
        sparse[start:stop] = chunk[start:stop]
    assert blocks.cut(sparse, wanted, data.nbytes) == blocks.cut(chunk, wanted, data.nbytes)
    if wanted == range(0, 1):
        assert sum(stop - start for start, stop in spans) < len(chunk) / 4


def test_blocks_that_cannot_be_read_apart():
    smooth = chunk_of(SMOOTH)
    nbytes = SMOOTH.nbytes
    variable = bytearray(smooth)
    variable[30] = 1  # Blosc2's flag for blocks of variable length
    tiny = bytearray(chunk_of(RANDOM, clevel=0))
    struct.pack_into("<i", tiny, 8, 1)  # blocks of one byte: more than MAX_BLOCKS
    cases = {
        "blocks of variable length": bytes(variable),
        "too many blocks": bytes(tiny),
        "delta filter": chunk_of(SMOOTH, filters=[blosc2.Filter.DELTA]),
        "dictionary": chunk_of(SMOOTH, codec=blosc2.Codec.ZSTD, use_dict=True),
        "one special value": blosc2.compress2(np.zeros(N).tobytes(), typesize=8),
        "cut short": smooth[:20],
        "offsets cut short": smooth[:40],
        "another size": smooth[:-1],
    }
    for name, chunk in cases.items():
        assert blocks.block_bounds(chunk, nbytes, len(chunk)) is None, name
        assert blocks.block_parts(chunk, range(0, 1), nbytes) is None, name
        assert blocks.cut(chunk, range(0, 1), nbytes) is None, name
    assert blocks.block_bounds(smooth, nbytes + 8, len(smooth)) is None
    for wanted in (range(8, 9), range(2, 2), range(-1, 1)):
        assert blocks.cut(smooth, wanted, nbytes) is None, wanted
        assert blocks.block_parts(smooth, wanted, nbytes) is None, wanted


@pytest.mark.parametrize(
    ("spans", "size", "text", "left"),
    [
        ([(0, 160)], 1000, "0-159/1000", [(160, 1000)]),
        ([(0, 160), (400, 500)], 1000, "0-159,400-499/1000", [(160, 400), (500, 1000)]),
        ([(0, 1000)], 1000, "0-999/1000", []),
        ([(0, 160), (160, 200)], 200, "0-159,160-199/200", []),
    ],
)
def test_parts_header(spans, size, text, left):
    assert blocks.format_parts(spans, size) == text
    assert blocks.parse_parts(text) == (spans, size)
    assert blocks.gaps(spans, size) == left


@pytest.mark.parametrize(
    "text", ["", "0-159", "0-159/100", "5-3/10", "0-4,2-6/10", "a-b/10", "0-1/x", "-5-1/10", "0-1,/10"]
)
def test_parts_header_bad(text):
    assert blocks.parse_parts(text) is None


@pytest.mark.parametrize(
    "header",
    ["bytes 0-" + "9" * 5000 + "/10", "bytes ٣-4/10", "bytes 0-4/" + "1" * 21, "bytes 0-4", "bytes -4/10"],
)
def test_a_lying_content_range_is_refused(header):
    # What a publisher says of the bytes it sent is read only if it is plainly a range.
    assert fetcher.CONTENT_RANGE.fullmatch(header) is None
