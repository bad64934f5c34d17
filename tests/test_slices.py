"""Tables of good and bad inputs for catmqtt.slices, checked against numpy."""

from __future__ import annotations

import re

import blosc2
import numpy as np
import pytest

from catmqtt import storage
from catmqtt.errors import BadRequest
from catmqtt.slices import (
    as_key,
    chunks_touched,
    format_key,
    forward,
    items_at_most,
    parse_slice,
    result_shape,
    select,
)

STEPS = (None, 1, 2, 3, 5, 13, -1, -2, -3, -5, -13)
SEEDS = (0, 1, 2, 3)
CASES_PER_SEED = 100


# Random keys and shapes


def random_bound(rng: np.random.Generator, size: int) -> int | None:
    if rng.random() < 0.3:
        return None
    return int(rng.integers(-size - 3, size + 4))


def random_slice(rng: np.random.Generator, size: int) -> slice:
    step = STEPS[int(rng.integers(len(STEPS)))]
    return slice(random_bound(rng, size), random_bound(rng, size), step)


def random_item(rng: np.random.Generator, size: int, *, valid: bool) -> int | slice:
    if rng.random() < 0.5:
        return random_slice(rng, size)
    if valid:
        return int(rng.integers(-size, size)) if size else random_slice(rng, size)
    return int(rng.integers(-size - 2, size + 2))


def random_case(rng: np.random.Generator, *, valid: bool = True) -> tuple[tuple[int, ...], tuple]:
    """Return a random shape and a random numpy basic-indexing key for it.

    With `valid`, numpy accepts the key; otherwise it may hold out-of-range
    integers or one index too many.
    """
    ndim = int(rng.integers(0, 5))
    shape = tuple(int(rng.integers(0, 13)) for _ in range(ndim))
    nitems = int(rng.integers(0, ndim + 1))
    if not valid and rng.random() < 0.2:
        nitems = ndim + 1
    ellipsis = rng.random() < 0.3
    at = int(rng.integers(0, nitems + 1)) if ellipsis else nitems
    # The axes the items before and after the ellipsis stand for.
    axes = list(range(at)) + list(range(ndim - (nitems - at), ndim))
    items = [random_item(rng, shape[axis] if 0 <= axis < ndim else 0, valid=valid) for axis in axes]
    key = tuple(items[:at]) + ((Ellipsis,) if ellipsis else ()) + tuple(items[at:])
    return shape, key


def take(a: np.ndarray, sel: tuple) -> np.ndarray:
    """Index `a` with a Selection, using outer indexing on explicit index lists."""
    assert len(sel) == a.ndim
    for s, size in zip(sel, a.shape, strict=True):
        if isinstance(s, range):
            assert all(0 <= i < size for i in s), (s, size)
        else:
            assert type(s) is int and 0 <= s < size, (s, size)
    picked = a[tuple(s if isinstance(s, int) else slice(None) for s in sel)]
    lists = [np.array(list(s), dtype=np.intp) for s in sel if isinstance(s, range)]
    return np.asarray(picked[np.ix_(*lists)] if lists else picked)


def brute_chunks(sel: tuple, shape: tuple[int, ...], chunks: tuple[int, ...]) -> set[int]:
    """Return the C-order numbers of the chunks holding every selected element."""
    if not sel:
        return {0}
    axes = [np.array([s] if isinstance(s, int) else list(s), dtype=np.intp) for s in sel]
    if any(len(x) == 0 for x in axes):
        return set()
    grid = [-(-n // c) for n, c in zip(shape, chunks, strict=True)]
    mesh = np.meshgrid(*axes, indexing="ij")
    coords = [m.ravel() // c for m, c in zip(mesh, chunks, strict=True)]
    return set(np.ravel_multi_index(coords, grid).tolist())


def random_chunks(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(rng.integers(1, n + 3)) if n else int(rng.choice([0, 1, 5])) for n in shape)


# parse_slice


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("", ()),
        ("  ", ()),
        ("()", ()),
        ("[]", ()),
        ("[ ]", ()),
        ("1", (1,)),
        ("-1", (-1,)),
        ("+2", (2,)),
        (" 3 ", (3,)),
        ("1,", (1,)),
        ("[1:3]", (slice(1, 3, None),)),
        ("  [ 1 ,2 ]  ", (1, 2)),
        (":", (slice(None, None, None),)),
        ("::", (slice(None, None, None),)),
        ("1:", (slice(1, None, None),)),
        (":5", (slice(None, 5, None),)),
        ("::2", (slice(None, None, 2),)),
        ("::-1", (slice(None, None, -1),)),
        ("-3:-1", (slice(-3, -1, None),)),
        ("1:10:3", (slice(1, 10, 3),)),
        ("1 : 3 : 2", (slice(1, 3, 2),)),
        ("...", (Ellipsis,)),
        ("..., 0", (Ellipsis, 0)),
        ("1, ::-2, ...", (1, slice(None, None, -2), Ellipsis)),
        ("[0, :, 2:]", (0, slice(None, None, None), slice(2, None, None))),
        ("12345678901234567890", (12345678901234567890,)),
        (",".join(["0"] * 64), (0,) * 64),
        ("0" + " " * 4095, (0,)),
        ("::-" + "9" * 4000, (slice(None, None, -int("9" * 4000)),)),
        ("0" * 4000 + "7:", (slice(7, None, None),)),
    ],
)
def test_parse_slice_good(text: str, key: tuple) -> None:
    assert parse_slice(text) == key


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("::0", "slice step cannot be zero"),
        ("1:2:0", "slice step cannot be zero"),
        ("::-0", "slice step cannot be zero"),
        ("1e3", r"'1e3' is not an integer, a start:stop:step slice or '\.\.\.'"),
        ("1.5", r"'1\.5' is not an integer"),
        ("a:b", "'a:b' is not an integer"),
        ("1:2:3:4", "'1:2:3:4' is not an integer"),
        ("None", "'None' is not an integer"),
        ("1 2", "'1 2' is not an integer"),
        ("--1", "'--1' is not an integer"),
        ("1,,2", "malformed slice '1,,2': '' is not an integer"),
        (",", "malformed slice ','"),
        ("[1:3", r"malformed slice '\[1:3'"),
        ("(1, 2)", r"malformed slice '\(1, 2\)'"),
        ("..", r"'\.\.' is not an integer"),
        ("....", r"'\.\.\.\.' is not an integer"),
        ("...,...", r"more than one '\.\.\.'"),
        ("1, ..., 2, ...", r"more than one '\.\.\.'"),
        (",".join(["0"] * 65), "slice has more than 64 items"),
        ("0" + " " * 4096, "slice is longer than 4096 characters"),
        ("::" + "9" * 5000, "slice is longer than 4096 characters"),
        ("\u0661:\u0663", "is not an integer"),
    ],
)
def test_parse_slice_bad(text: str, match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        parse_slice(text)


@pytest.mark.parametrize("value", [None, 3, b"1", (1,), [1, 2]])
def test_parse_slice_not_a_string(value: object) -> None:
    with pytest.raises(BadRequest, match=f"slice must be a string, not {type(value).__name__}"):
        parse_slice(value)  # type: ignore[arg-type]


# format_key


@pytest.mark.parametrize(
    "key",
    [
        (),
        (0,),
        (-1,),
        (12345678901234567890,),
        (slice(None),),
        (slice(1, None),),
        (slice(None, 5),),
        (slice(None, None, -1),),
        (slice(1, 10, 3),),
        (slice(0, 0, 1),),
        (slice(-3, -1),),
        (Ellipsis,),
        (1, slice(None, None, -2), Ellipsis),
        (Ellipsis, 0, slice(-3, -1)),
        tuple(range(64)),
    ],
)
def test_format_key_round_trip(key: tuple) -> None:
    text = format_key(key)
    assert isinstance(text, str)
    assert parse_slice(text) == key


def test_format_key_round_trip_random() -> None:
    rng = np.random.default_rng(42)
    for _ in range(300):
        _, key = random_case(rng, valid=False)
        assert parse_slice(format_key(key)) == key, key


def test_format_key_numpy_ints() -> None:
    key = (np.int64(3), slice(np.int32(1), np.int64(-1), np.int8(2)))
    assert parse_slice(format_key(key)) == (3, slice(1, -1, 2))


# as_key


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (3, (3,)),
        (-1, (-1,)),
        (np.int64(5), (5,)),
        (np.uint8(2), (2,)),
        (np.intp(-2), (-2,)),
        (slice(1, 3), (slice(1, 3, None),)),
        (slice(None), (slice(None, None, None),)),
        (slice(np.int32(1), None, np.int64(-1)), (slice(1, None, -1),)),
        (Ellipsis, (Ellipsis,)),
        ((), ()),
        ((1, slice(None), ...), (1, slice(None), Ellipsis)),
        ((..., np.int16(0)), (Ellipsis, 0)),
    ],
)
def test_as_key_good(value: object, key: tuple) -> None:
    got = as_key(value)
    assert got == key
    for item in got:
        if isinstance(item, slice):
            assert all(v is None or type(v) is int for v in (item.start, item.stop, item.step))
        elif item is not Ellipsis:
            assert type(item) is int


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (1.0, r"only integers, slices and '\.\.\.' are valid indices \(basic indexing\), not 1\.0"),
        (np.float64(2.0), "are valid indices"),
        ([1, 2], r"are valid indices \(basic indexing\), not \[1, 2\]"),
        (True, "are valid indices .*, not True"),
        (np.True_, "are valid indices"),
        (None, "are valid indices .*, not None"),
        ("1", "are valid indices .*, not '1'"),
        ((1, (2,)), r"are valid indices .*, not \(2,\)"),
        (slice(1.0, 2), r"slice bounds must be integers, not 1\.0"),
        (slice(None, "3"), "slice bounds must be integers, not '3'"),
        (slice(None, None, 0), "slice step cannot be zero"),
        (slice(None, None, np.int64(0)), "slice step cannot be zero"),
        ((..., ...), r"an index can only have a single ellipsis \('\.\.\.'\)"),
        ((0, ..., 1, ...), "single ellipsis"),
    ],
)
def test_as_key_bad(value: object, match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        as_key(value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(np.array(2.7), id="0d-float-array"),
        pytest.param(np.array(True), id="0d-bool-array"),
        pytest.param(np.array([1, 2]), id="1d-int-array"),
        pytest.param(slice(np.array(1.5), None), id="float-array-bound"),
    ],
)
def test_as_key_refuses_arrays_numpy_would_not_take_as_ints(value: object) -> None:
    # numpy refuses a float array index, and reads a bool or 1-d array as
    # advanced indexing: none of them is the basic integer index as_key makes.
    with pytest.raises(BadRequest, match="valid indices|slice bounds must be integers"):
        as_key(value)


def test_as_key_of_0d_int_array_is_an_int() -> None:
    assert as_key(np.array(2)) == (2,)


# select and result_shape


@pytest.mark.parametrize("seed", SEEDS)
def test_select_matches_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(CASES_PER_SEED):
        shape, key = random_case(rng)
        a = np.arange(int(np.prod(shape))).reshape(shape)
        expected = np.asarray(a[key])
        sel = select(key, shape)
        assert result_shape(sel) == expected.shape, (shape, key, sel)
        got = take(a, sel)
        assert got.shape == expected.shape and np.array_equal(got, expected), (shape, key, sel)


@pytest.mark.parametrize("seed", SEEDS)
def test_select_refuses_what_numpy_refuses(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    refused = 0
    for _ in range(CASES_PER_SEED):
        shape, key = random_case(rng, valid=False)
        a = np.empty(shape, dtype=np.int8)
        try:
            a[key]
        except IndexError:
            refused += 1
            with pytest.raises(BadRequest, match="out of range for axis|too many indices"):
                select(key, shape)
        else:
            assert len(select(key, shape)) == len(shape)
    assert refused > 10  # the generator does produce bad keys


@pytest.mark.parametrize(
    ("key", "shape", "match"),
    [
        ((3,), (3,), "index 3 is out of range for axis 0 with size 3"),
        ((-4,), (3,), "index -4 is out of range for axis 0 with size 3"),
        ((0, 7), (2, 7), "index 7 is out of range for axis 1 with size 7"),
        ((..., -8), (5, 7), "index -8 is out of range for axis 1 with size 7"),
        ((0,), (0,), "index 0 is out of range for axis 0 with size 0"),
        ((0, 0), (3,), "too many indices: the array has 1 dimensions, 2 were given"),
        ((0,), (), "too many indices: the array has 0 dimensions, 1 were given"),
        ((0, ..., 0), (2,), "too many indices: the array has 1 dimensions, 2 were given"),
        ((slice(None),) * 3, (2, 2), "too many indices: the array has 2 dimensions, 3 were given"),
    ],
)
def test_select_bad(key: tuple, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(match)):
        select(key, shape)


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("", ()),
        ("...", ()),
        ("", (4, 5)),
        ("1", (4, 5)),
        ("..., 1", (4, 5)),
        ("::-1, ::-2", (4, 5)),
        ("-1, -1", (4, 5)),
        ("100:, -100:", (4, 5)),
        ("2:2", (4,)),
        (":", (0, 3)),
        ("::-1", (0,)),
    ],
)
def test_select_parsed_keys(text: str, shape: tuple[int, ...]) -> None:
    key = parse_slice(text)
    a = np.arange(int(np.prod(shape))).reshape(shape)
    sel = select(key, shape)
    assert result_shape(sel) == np.asarray(a[key]).shape
    assert np.array_equal(take(a, sel), a[key])


# chunks_touched


@pytest.mark.parametrize("seed", SEEDS)
def test_chunks_touched_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    for _ in range(CASES_PER_SEED):
        shape, key = random_case(rng)
        chunks = random_chunks(rng, shape)
        sel = select(key, shape)
        got = chunks_touched(sel, shape, chunks)
        assert len(got) == len(set(got)), (shape, chunks, key, got)
        assert set(got) == brute_chunks(sel, shape, chunks), (shape, chunks, key, got)


@pytest.mark.parametrize(
    ("text", "shape", "chunks"),
    [
        ("", (), ()),  # a scalar is one chunk
        ("...", (), ()),
        ("", (0,), (0,)),  # empty arrays have no chunks
        ("", (0, 5), (0, 5)),
        ("", (5, 0), (5, 0)),
        ("2:2", (10,), (3,)),
        ("::-1, 5:1", (4, 10), (2, 3)),
        ("", (10,), (3,)),
        ("::4", (10,), (3,)),
        ("::7", (10,), (3,)),  # steps past a chunk skip chunk 1
        ("::-7", (10,), (3,)),
        ("9", (10,), (3,)),
        ("-1, 1:5", (7, 11), (3, 4)),
        ("..., ::5", (3, 4, 13), (2, 3, 4)),
        ("", (10,), (64,)),  # chunks larger than the array
    ],
)
def test_chunks_touched_table(text: str, shape: tuple[int, ...], chunks: tuple[int, ...]) -> None:
    sel = select(parse_slice(text), shape)
    got = chunks_touched(sel, shape, chunks)
    assert len(got) == len(set(got))
    assert set(got) == brute_chunks(sel, shape, chunks)


def test_chunks_touched_scalar_and_empty() -> None:
    assert chunks_touched((), (), ()) == [0]
    assert chunks_touched(select((slice(3, 3),), (10,)), (10,), (4,)) == []
    assert chunks_touched(select((), (0, 4)), (0, 4), (0, 4)) == []


# forward


@pytest.mark.parametrize("seed", SEEDS)
def test_forward_matches_numpy(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    for _ in range(CASES_PER_SEED):
        shape, key = random_case(rng)
        a = np.arange(int(np.prod(shape))).reshape(shape)
        sel = select(key, shape)
        fkey, flip = forward(sel)
        assert len(fkey) == len(shape)
        for item, size in zip(fkey, shape, strict=True):
            if isinstance(item, slice):
                assert item.step >= 1 and 0 <= item.start <= item.stop, (shape, key, fkey)
            else:
                assert type(item) is int and 0 <= item < size
        ndim = len(result_shape(sel))
        assert list(flip) == sorted(set(flip)) and all(0 <= ax < ndim for ax in flip)
        read = np.asarray(a[fkey])
        got = np.flip(read, axis=flip) if flip else read
        expected = np.asarray(a[key])
        assert got.shape == expected.shape and np.array_equal(got, expected), (shape, key, fkey, flip)


@pytest.mark.parametrize(
    ("text", "shape", "flips"),
    [
        ("", (3, 4), ()),
        ("::-1", (3, 4), (0,)),
        ("0, ::-1", (3, 4), (0,)),
        ("::-1, 0, ::-2", (3, 4, 5), (0, 1)),
        ("5:1", (10,), ()),
    ],
)
def test_forward_flips(text: str, shape: tuple[int, ...], flips: tuple[int, ...]) -> None:
    key = parse_slice(text)
    a = np.arange(int(np.prod(shape))).reshape(shape)
    fkey, flip = forward(select(key, shape))
    assert flip == flips
    read = a[fkey]
    assert np.array_equal(np.flip(read, axis=flip) if flip else read, a[key])


HUGE = 10**30


@pytest.mark.parametrize(
    "key",
    [
        (slice(None, None, -9999999999999999999),),
        (slice(None, None, HUGE),),
        (slice(None, None, -HUGE),),
        (slice(HUGE, None, None),),
        (slice(-HUGE, HUGE, None),),
        (slice(HUGE, -HUGE, -1),),
        (slice(-HUGE, None, -HUGE),),
        (slice(HUGE, None, -HUGE),),
        (slice(3, 4, HUGE), slice(None, None, -HUGE)),
        (slice(None, None, 2**63), slice(-HUGE, 2, 2**64)),
        (Ellipsis, slice(5, HUGE, HUGE)),
    ],
)
def test_forward_huge_values_read_from_blosc2(key: tuple) -> None:
    # numpy takes bounds and steps of any size; a Blosc2 array refuses steps past 64 bits.
    a = np.arange(200, dtype=np.uint16).reshape(10, 20)
    fkey, flip = forward(select(key, a.shape))
    read = storage.read_array(blosc2.asarray(a, chunks=(5, 5), blocks=(2, 3)), fkey, flip)
    assert np.array_equal(read, a[key])


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("", None),
        ("5", 1),
        ("1000:2000", 1000),
        ("-20:-10", 10),
        ("10:0:-2", 5),
        ("3, 4:8, 0:10:3", 16),
        ("5:1", 0),
        (":10", None),
        ("10:", None),
        ("-5:10", None),
        ("..., 1:3", None),
        ("1:3, :", None),
    ],
)
def test_items_at_most(text: str, want: int | None) -> None:
    assert items_at_most(parse_slice(text)) == want
    if want is not None:
        # Whatever the shape, within the bound along the axes named.
        for size in (0, 7, 30, 3000):
            shape = (size,) * len(parse_slice(text))
            try:
                got = np.broadcast_to(0.0, shape)[parse_slice(text)]
            except IndexError:
                continue
            assert np.size(got) <= want
