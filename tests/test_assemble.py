"""Chunk assembly against Blosc2's own slicing, for random shapes, chunkings and selections."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys

import blosc2
import numpy as np
import pytest

from catmqtt.assemble import Assembler, release_gil
from catmqtt.blocks import chunk_problem
from catmqtt.errors import BadRequest, Unavailable
from catmqtt.slices import chunks_touched, select
from catmqtt.storage import describe


def random_key(shape, rng):
    key = []
    for size in shape[: rng.integers(0, len(shape) + 1)]:
        if rng.integers(0, 4) == 0:
            key.append(int(rng.integers(-size, size)))
        else:
            start, stop = (int(v) for v in rng.integers(-size - 2, size + 3, size=2))
            key.append(slice(start, stop, int(rng.choice([1, 2, 5, -1, -3]))))
    return tuple(key)


@pytest.mark.parametrize("nthreads", [None, 1])
@pytest.mark.parametrize("seed", range(6))
def test_assembly_equals_numpy(seed, nthreads):
    rng = np.random.default_rng(seed)
    for _ in range(15):
        ndim = int(rng.integers(1, 5))
        shape = tuple(int(s) for s in rng.integers(1, 13, size=ndim))
        chunks = tuple(int(rng.integers(1, s + 1)) for s in shape)
        blocks = tuple(int(rng.integers(1, c + 1)) for c in chunks)
        dtype = rng.choice([np.int16, np.float64, np.complex128])
        data = (rng.random(shape) * 1000).astype(dtype)
        array = blosc2.asarray(data, chunks=chunks, blocks=blocks)
        meta = describe(array, "x.b2nd", "etag")
        for _ in range(6):
            key = random_key(shape, rng)
            sel = select(key, shape)
            assembler = Assembler(meta, sel, nthreads=nthreads)
            for n in chunks_touched(sel, shape, chunks):
                assembler.add(n, array.schunk.get_chunk(n))
            assert np.array_equal(assembler.result(), data[key]), (shape, chunks, blocks, key)


def test_structured_and_scalar():
    records = np.zeros(50, dtype=[("a", "<i4"), ("b", "S3")])
    records["a"] = np.arange(50)
    array = blosc2.asarray(records, chunks=(7,), blocks=(3,))
    meta = describe(array, "r.b2nd", "e")
    sel = select((slice(None, None, -4),), (50,))
    assembler = Assembler(meta, sel)
    for n in chunks_touched(sel, (50,), (7,)):
        assembler.add(n, array.schunk.get_chunk(n))
    assert np.array_equal(assembler.result(), records[::-4])

    scalar = blosc2.asarray(np.array("foobar"))
    assembler = Assembler(describe(scalar, "s.b2nd", "e"), select((), ()))
    assembler.add(0, scalar.schunk.get_chunk(0))
    assert assembler.result()[()] == "foobar"


def test_byte_streams():
    data = bytes(range(256)) * 40
    schunk = blosc2.SChunk(chunksize=1000, data=data, cparams={"typesize": 1})
    meta = describe(schunk, "h.b2frame", "e")
    for key in [(slice(None),), (slice(5, 9000, 7),), (slice(None, None, -3),), (-1,)]:
        sel = select(key, meta["shape"])
        assembler = Assembler(meta, sel)
        for n in chunks_touched(sel, meta["shape"], meta["chunks"]):
            assembler.add(n, schunk.get_chunk(n))
        expected = data[key[0]] if isinstance(key[0], slice) else data[key[0] :]
        assert assembler.result().tobytes() == expected


class CountingAssembler(Assembler):
    """Counts the chunks decoded apart (and copied) whole, and those decoded in part."""

    decoded = 0
    partly = 0

    def _decode(self, data):
        self.decoded += 1
        return super()._decode(data)

    def _decode_rows(self, data, rows):
        self.partly += 1
        return super()._decode_rows(data, rows)


@pytest.mark.parametrize(
    ("shape", "chunks", "blocks", "key", "copied", "partly"),
    [
        ((100,), (10,), (5,), (), 0, 0),
        ((100,), (10,), (3,), (), 10, 0),  # blocks do not divide the chunk: padded
        ((95,), (10,), (5,), (slice(0, 95),), 0, 1),  # the last chunk is cut: its first half
        ((97,), (10,), (5,), (slice(0, 97),), 1, 0),  # ...and more than half
        ((100,), (10,), (5,), (slice(10, 30),), 0, 0),
        ((100,), (10,), (5,), (slice(12, 14),), 0, 1),  # a few items: only their block
        ((100,), (10,), (3,), (slice(12, 14),), 1, 0),  # ...unless blocks are padded
        ((100,), (20,), (5,), (slice(22, 27),), 0, 1),  # one block's length, across two blocks
        ((100,), (10,), (5,), (slice(None, None, -1),), 0, 0),
        ((40, 6), (10, 6), (5, 6), (), 0, 0),
        ((40, 6), (10, 6), (5, 3), (), 4, 0),  # blocks are not rows of the chunk
        ((40, 6), (10, 3), (5, 3), (), 8, 0),  # not a contiguous place in the result
        ((40, 6, 2), (10, 6, 2), (2, 6, 2), (slice(10, 40),), 0, 0),
        ((40, 6), (10, 6), (5, 6), (slice(0, 40), slice(0, 5)), 4, 0),  # part of each chunk
        ((40, 6), (10, 6), (5, 6), (3,), 0, 1),  # one row
        ((40, 6), (10, 6), (5, 6), (slice(11, 17, 2), 4), 0, 1),
        ((80, 6), (20, 6), (5, 6), (slice(21, 26),), 0, 1),
    ],
)
def test_chunks_decode_in_place_or_in_part(shape, chunks, blocks, key, copied, partly):
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    array = blosc2.asarray(data, chunks=chunks, blocks=blocks)
    sel = select(key, shape)
    assembler = CountingAssembler(describe(array, "x.b2nd", "e"), sel)
    for n in chunks_touched(sel, shape, chunks):
        assembler.add(n, array.schunk.get_chunk(n))
    assert np.array_equal(assembler.result(), data[key])
    assert (assembler.decoded, assembler.partly) == (copied, partly)


def test_importing_assemble_leaves_the_gil_alone():
    # In a process of its own: tests in this one may have switched it on.
    code = (
        "import blosc2, catmqtt.assemble, catmqtt.client, catmqtt.client_reader\n"
        "assert blosc2.set_releasegil(False) is False, 'an import switched the GIL release on'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_release_gil_switches_it_on():
    # The client's decoder threads rely on it.
    old = blosc2.set_releasegil(False)
    try:
        release_gil()
        assert blosc2.set_releasegil(old) is True
    finally:
        blosc2.set_releasegil(old)


def test_a_chunk_is_checked_before_it_is_decoded():
    data = np.arange(1000, dtype=np.int64)
    array = blosc2.asarray(data, chunks=(100,), blocks=(10,))
    meta = describe(array, "x.b2nd", "e")
    # Items of 4 bytes: the same sizes, but not this dataset's chunk.
    other = blosc2.asarray(np.arange(200, dtype=np.int32), chunks=(200,), blocks=(20,))
    for sender, message in [
        ("", "chunk 0 of 'x.b2nd' is not what its metadata says: its typesize is 4, not 8"),
        (
            "the subscriber at http://h:1",
            "the subscriber at http://h:1 sent chunk 0 of 'x.b2nd', which is not",
        ),
    ]:
        assembler = Assembler(meta, select((slice(0, 5),), (1000,)), sender=sender)
        with pytest.raises(Unavailable, match=re.escape(message)) as raised:
            assembler.add(0, other.schunk.get_chunk(0))
        assert raised.value.status == 502
    # Metadata that no announcement would pass (its chunksize lies about its chunks
    # and blocks), with a chunk that agrees with it: still never decoded past the
    # buffer the chunks and blocks size.
    small = blosc2.asarray(np.arange(10), chunks=(10,), blocks=(10,))
    lying = {**meta, "chunks": [1000], "blocks": [10], "chunksize": 80, "nbytes": 80, "nchunks": 1}
    assembler = Assembler(lying, select((slice(0, 5),), (1000,)))
    with pytest.raises(Unavailable, match="it holds 80 bytes, where its metadata has room for 8000"):
        assembler.add(0, small.schunk.get_chunk(0))
    with pytest.raises(BadRequest, match=r"typesize 4 is not the size of its dtype int64 \(8 bytes\)"):
        Assembler({**meta, "typesize": 4}, select((), (1000,)))


def test_damaged_blocks_that_pass_the_check_never_crash_the_decoder():
    # What blocks hold is Blosc2's to check: with the header and offsets right,
    # damaged bytes decode to something or raise, never past the buffer.
    rng = np.random.default_rng(10)
    arrays = [
        blosc2.asarray(rng.random(1000), chunks=(100,), blocks=(10,)),
        blosc2.asarray(
            np.linspace(0, 1, 4000).reshape(40, 100),
            chunks=(20, 100),
            blocks=(5, 100),
            cparams={"filters": [blosc2.Filter.BITSHUFFLE]},
        ),
        blosc2.asarray(
            np.arange(1000, dtype=np.int32),
            chunks=(100,),
            blocks=(10,),
            cparams={"codec": blosc2.Codec.ZSTD, "use_dict": True},
        ),
    ]
    checked = 0
    for _ in range(300):
        array = arrays[rng.integers(len(arrays))]
        meta = describe(array, "x.b2nd", "e")
        chunk = bytearray(array.schunk.get_chunk(0))
        for position in rng.integers(16, len(chunk), size=rng.integers(1, 6)):
            chunk[position] = rng.integers(256)
        if chunk_problem(chunk, meta, 0) is not None:
            continue
        checked += 1
        for key in [(slice(0, 5),), (slice(None),)]:
            assembler = Assembler(meta, select(key, meta["shape"]))
            with contextlib.suppress(RuntimeError, ValueError, Unavailable):
                assembler.add(0, bytes(chunk))
    assert checked > 100
