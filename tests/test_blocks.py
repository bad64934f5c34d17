"""Tables for catmqtt.blocks: the layout of compressed Blosc2 chunks, read apart."""

from __future__ import annotations

import struct

import blosc2
import numpy as np
import pytest

from catmqtt import blocks, storage
from catmqtt.schema import parse_dataset
from catmqtt.tools.sample import write_sample

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
    ("spans", "size", "left"),
    [
        ([(0, 160)], 1000, [(160, 1000)]),
        ([(0, 160), (400, 500)], 1000, [(160, 400), (500, 1000)]),
        ([(0, 1000)], 1000, []),
        ([(0, 160), (160, 200)], 200, []),
    ],
)
def test_gaps(spans, size, left):
    assert blocks.gaps(spans, size) == left


# Checking a chunk against its dataset's metadata


def sample_chunks(tmp_path_factory) -> list[tuple[str, dict, int, bytes]]:
    """Return (name, metadata, number, bytes) of every chunk of datasets of every kind and layout."""
    root = write_sample(tmp_path_factory.mktemp("sample") / "root")
    datasets = {
        "zeros": blosc2.zeros((1000,), dtype=np.int64, chunks=(100,), blocks=(30,)),
        "uninit": blosc2.empty((1000,), dtype=np.int64, chunks=(100,), blocks=(30,)),
        "one value": blosc2.full((1000,), 7, dtype=np.int64, chunks=(100,), blocks=(30,)),
        "NaNs": blosc2.full((1000,), np.nan, chunks=(100,), blocks=(30,)),
        "one value of 300 bytes": blosc2.full((10,), np.void(b"x" * 300), chunks=(4,), blocks=(3,)),
        "items of 300 bytes": blosc2.asarray(
            np.frombuffer(RNG.bytes(3000), "V300"), chunks=(4,), blocks=(3,)
        ),
        "stored as is": blosc2.asarray(RANDOM[:1000], chunks=(100,), blocks=(30,), cparams={"clevel": 0}),
        "dictionary": blosc2.asarray(
            SMOOTH, chunks=(N,), blocks=(BLOCK,), cparams={"codec": blosc2.Codec.ZSTD, "use_dict": True}
        ),
        "uneven stream": blosc2.SChunk(chunksize=100, data=RNG.bytes(250), cparams={"typesize": 8}),
    }
    special = datasets["special stream"] = blosc2.SChunk(chunksize=1000)
    special.fill_special(2500, blosc2.SpecialValue.ZERO)
    for path in sorted(root.rglob("*.b2*")):
        datasets[path.name] = storage.open_blosc2(path)
    found = []
    for name, obj in datasets.items():
        meta = storage.describe(obj, name, "e")
        schunk = storage.schunk_of(obj)
        found += [(name, meta, n, schunk.get_chunk(n)) for n in range(schunk.nchunks)]
    readme = root / "README.md"
    meta = storage.describe_file("README.md", readme.stat().st_size, "e")
    frame = storage.compress_file(readme, tmp_path_factory.mktemp("file") / "f", storage.file_etag(readme))
    return found + [("README.md", meta, n, frame.get_chunk(n)) for n in range(frame.nchunks)]


def test_every_kind_of_chunk_passes_its_check(tmp_path_factory):
    chunks = sample_chunks(tmp_path_factory)
    assert len({name for name, *_ in chunks}) >= 19
    for name, meta, n, data in chunks:
        assert parse_dataset(dict(meta), name) == meta
        assert blocks.chunk_problem(data, meta, n) is None, (name, n)
        assert blocks.chunk_problem(bytearray(data), meta, n) is None, (name, n)


ARRAY = blosc2.asarray(np.arange(1000, dtype=np.int64), chunks=(100,), blocks=(10,))
META = storage.describe(ARRAY, "a.b2nd", "e")
GOOD = ARRAY.schunk.get_chunk(1)
ZEROS = blosc2.zeros((1000,), dtype=np.int64, chunks=(100,), blocks=(10,))
ONE_BLOCK = blosc2.asarray(np.arange(100), chunks=(100,), blocks=(100,))


def patched(chunk: bytes, *fields: tuple[str, int, int]) -> bytes:
    """Return `chunk` with `fields` (struct format, offset, value) written over it."""
    out = bytearray(chunk)
    for fmt, offset, value in fields:
        struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(
    ("chunk", "problem"),
    [
        (b"", "0 bytes, too short for a Blosc2 chunk"),
        (GOOD[:31], "31 bytes, too short for a Blosc2 chunk"),
        (patched(GOOD, ("B", 2, 0x10)), "not a Blosc2 chunk (no extended header)"),
        (GOOD[:-1], f"its header says {len(GOOD)} bytes, but {len(GOOD) - 1} came"),
        (GOOD + b"\0", f"its header says {len(GOOD)} bytes, but {len(GOOD) + 1} came"),
        (b"\xff" * 1000, "its header says -1 bytes, but 1000 came"),
        (patched(GOOD, ("<i", 4, 8000)), "it holds 8000 bytes, not 800"),
        (blosc2.compress2(np.arange(10).tobytes(), typesize=8), "it holds 80 bytes, not 800"),
        (patched(GOOD, ("B", 3, 4)), "its typesize is 4, not 8"),
        # The remote crash of issue 10: one block, where the metadata has blocks of 10 items.
        (ONE_BLOCK.schunk.get_chunk(0), "its blocks are of 800 bytes, not 80 (blocks [10])"),
        (patched(GOOD, ("<i", 8, 0)), "its blocks are of 0 bytes, not 80"),
        (patched(GOOD, ("B", 30, 1)), "its blocks are of variable length"),
        (patched(ZEROS.schunk.get_chunk(0), ("B", 31, 0x70)), "an unknown special value (7)"),
        (
            patched(ZEROS.schunk.get_chunk(0) + b"\0" * 8, ("<i", 12, 40)),
            "a chunk of one value, of 40 bytes, not 32",
        ),
        (
            patched(GOOD, ("B", 2, GOOD[2] | blocks.COPIED)),
            f"a chunk stored as is, of {len(GOOD)} bytes, not 832",
        ),
        (patched(GOOD[:40], ("<i", 12, 40)), "40 bytes, too short for the offsets of its 10 blocks"),
        (patched(GOOD, ("<i", 32, len(GOOD))), f"its blocks start out of its {len(GOOD)} bytes"),
        (patched(GOOD, ("<i", 36, -5)), f"its blocks start out of its {len(GOOD)} bytes"),
        (patched(GOOD, ("<i", 32, 40)), f"its blocks start out of its {len(GOOD)} bytes"),
    ],
    ids=lambda value: value if isinstance(value, str) else "chunk",
)
def test_a_chunk_that_lies_is_named(chunk, problem):
    found = blocks.chunk_problem(chunk, META, 1)
    assert found is not None and problem in found, found


def test_a_stream_checks_the_size_of_its_last_chunk():
    schunk = blosc2.SChunk(chunksize=1000, data=RNG.bytes(2500), cparams={"typesize": 1})
    meta = storage.describe(schunk, "s.b2frame", "e")
    last, whole = schunk.get_chunk(2), schunk.get_chunk(0)
    assert blocks.chunk_problem(last, meta, 2) is None
    assert blocks.chunk_problem(whole, meta, 2) == "it holds 1000 bytes, not 500"
    assert blocks.chunk_problem(last, meta, 0) == "it holds 500 bytes, not 1000"
    assert blocks.chunk_problem(patched(whole, ("<i", 8, 2000)), meta, 0) == (
        "its blocks are of 2000 bytes, in a chunk of 1000"
    )
