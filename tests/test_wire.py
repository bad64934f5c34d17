"""What crosses HTTP between catmqtt nodes, encoded and decoded by catmqtt.wire: each
format read back as it was written, and what is not that format refused."""

from __future__ import annotations

import io
import json

import pytest
from werkzeug.http import parse_range_header

from catmqtt.errors import (
    BadRequest,
    CatmqttError,
    Changed,
    InsufficientStorage,
    NotFound,
    NotSubscribed,
    TooLarge,
    Unavailable,
)
from catmqtt.wire import (
    FRAME,
    asks_no_bytes,
    encode_frame,
    error_frame,
    error_from_json,
    error_json,
    error_trailer,
    format_block_range,
    format_chunk_list,
    format_content_range,
    format_parts,
    format_range,
    frames,
    parse_block_range,
    parse_chunk_list,
    parse_content_range,
    parse_int,
    parse_parts,
    pick_range,
    quote_dataset,
    read_error_trailer,
    read_frames,
)

ERRORS = [
    BadRequest("malformed slice 'a'"),
    NotFound("no root 'x'"),
    NotSubscribed("root 'foo' is not subscribed"),
    TooLarge("the selection is 9 bytes"),
    Unavailable("the publisher is unreachable"),
    Unavailable("no answer in time", status=504),
    InsufficientStorage("the disk is full"),
    Changed("foo/ds.b2nd"),
    Changed("foo/ds.b2nd", "foo/ds.b2nd changed (etag 2, not 1); read its metadata again", 412),
    CatmqttError("internal error (KeyError)", 500),
]


def same(a: CatmqttError, b: CatmqttError) -> bool:
    return (type(a), a.message, a.status, getattr(a, "path", None)) == (
        type(b),
        b.message,
        b.status,
        getattr(b, "path", None),
    )


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: f"{type(e).__name__}-{e.status}")
def test_errors_are_read_back_as_they_were_sent(error):
    body = json.loads(json.dumps(error_json(error)))
    assert same(error_from_json(body, error.status), error)
    # A frame's error carries its status.
    assert same(error_from_json(body), error)
    trailer = error_trailer(error)
    assert same(read_error_trailer(trailer), error)
    assert same(read_error_trailer(b"\x00" * 1000 + trailer), error)


def test_only_a_change_names_a_path():
    assert "changed" not in error_json(Unavailable("down"))
    assert error_json(Changed("foo/a"))["changed"] == "foo/a"
    # A changed dataset is unavailable to those that do not look closer.
    assert isinstance(error_from_json({"error": "x", "status": 503, "changed": "foo/a"}), Unavailable)
    # A path that is not text is not a change.
    assert type(error_from_json({"error": "x", "status": 503, "changed": 5})) is Unavailable


def test_a_long_message_is_cut():
    assert len(error_json(BadRequest("x" * 100_000))["error"]) == 4096


@pytest.mark.parametrize(
    "body", [None, [], "error", {}, {"status": 500}, {"error": "x", "status": "five"}, {"error": "x"}]
)
def test_what_is_no_error_body_is_none(body):
    assert error_from_json(body) is None


@pytest.mark.parametrize(
    "tail",
    [
        b"",
        b"\x00" * 15,
        b"\x00" * 100,
        error_trailer(CatmqttError("x", 500))[:-1],
        b'{"error": "x", "status": 500}' + FRAME.pack(-2, 29),
        b'{"error": "x", "status": 500}' + FRAME.pack(-1, 30),
        b'{"error": "x", "status": 500}' + FRAME.pack(-1, 1 << 40),
        b"[1, 2, 3]" + FRAME.pack(-1, 9),
        b'{"status": 500}' + FRAME.pack(-1, 15),
        b"not json" + FRAME.pack(-1, 8),
    ],
)
def test_a_tail_without_an_error_trailer_is_none(tail: bytes):
    assert read_error_trailer(tail) is None


# Integers, chunk lists and block ranges in query arguments


@pytest.mark.parametrize(
    ("numbers", "text"),
    [([0], "0"), ([0, 1, 2, 5], "0-2,5"), ([3, 5, 7], "3,5,7"), ([9, 10, 11, 12], "9-12"), ([], "")],
)
def test_format_chunk_list(numbers, text):
    assert format_chunk_list(numbers) == text
    if numbers:
        assert parse_chunk_list(text, 13) == numbers


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "no chunks given"),
        ("1,,2", "is not N or N-M"),
        ("-1", "is not N or N-M"),
        ("1-", "is not N or N-M"),
        ("\u0661", "is not N or N-M"),
        ("5-2", "runs backwards"),
        ("13", "chunk 13 is out of range"),
        ("0-12,0", "more than once"),
        ("0-" + "9" * 5000, r"chunk '9{100}'\.\.\. is out of range: more than 20 digits"),
        ("9" * 21, "is out of range: more than 20 digits"),
        ("1" + "0" * 20 + "-0", "is out of range: more than 20 digits"),
        ("9" * 20, "chunk 99999999999999999999 is out of range: the dataset has 13 chunks"),
        ("x" * 5000, r"malformed chunk list 'x{100}'\.\.\.: 'x{100}'\.\.\. is not N or N-M"),
    ],
)
def test_parse_chunk_list_bad(text, match):
    with pytest.raises(BadRequest, match=match):
        parse_chunk_list(text, 13)


@pytest.mark.parametrize(("text", "numbers"), [("0" * 5000 + "1-2", [1, 2]), ("12", [12])])
def test_parse_chunk_list_good(text, numbers):
    assert parse_chunk_list(text, 13) == numbers


@pytest.mark.parametrize(
    ("text", "blocks"),
    [
        ("0-3", range(0, 4)),
        ("5", range(5, 6)),
        (" 2-2 ", range(2, 3)),
        ("10-11", range(10, 12)),
        ("0" * 5000 + "1", range(1, 2)),
        ("0-" + "9" * 20, range(0, 10**20)),
    ],
)
def test_parse_block_range(text, blocks):
    assert parse_block_range(text) == blocks


@pytest.mark.parametrize("text", ["", "-1", "3-1", "a-b", "1-", "1--2", "0,2", "\u0661"])
def test_parse_block_range_bad(text):
    with pytest.raises(BadRequest, match="malformed block range"):
        parse_block_range(text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("0-" + "9" * 5000, r"block '9{100}'\.\.\. is out of range: more than 20 digits"),
        ("9" * 5000, "is out of range: more than 20 digits"),
        ("9" * 21 + "-" + "9" * 22, "is out of range: more than 20 digits"),
    ],
)
def test_parse_block_range_too_large(text, match):
    with pytest.raises(BadRequest, match=match):
        parse_block_range(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        (" 7 ", 7),
        ("-3", -3),
        ("+4", 4),
        ("0" * 5000 + "1", 1),
        ("-" + "0" * 5000 + "2", -2),
        ("9" * 20, 10**20 - 1),
        ("-" + "9" * 20, 1 - 10**20),
    ],
)
def test_parse_int(text, value):
    assert parse_int(text, "query argument n") == value


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "query argument n '' is not an integer"),
        ("x", "query argument n 'x' is not an integer"),
        ("1_0", "'1_0' is not an integer"),
        ("\u0663", "'\u0663' is not an integer"),
        ("1e3", "'1e3' is not an integer"),
        ("0x10", "'0x10' is not an integer"),
        ("--1", "'--1' is not an integer"),
        ("9" * 21, "is out of range: more than 20 digits"),
        ("9" * 5000, r"query argument n '9{100}'\.\.\. is out of range: more than 20 digits"),
        ("-" + "9" * 5000, "is out of range: more than 20 digits"),
        ("x" * 5000, r"'x{100}'\.\.\. is not an integer"),
    ],
)
def test_parse_int_bad(text, match):
    with pytest.raises(BadRequest, match=match):
        parse_int(text, "query argument n")


@pytest.mark.parametrize("blocks", [range(0, 1), range(3, 9), range(0, 10**20)])
def test_block_ranges_are_read_back(blocks):
    assert parse_block_range(format_block_range(blocks)) == blocks


@pytest.mark.parametrize(
    ("dataset", "directory", "quoted"),
    [
        ("foo/ds-1d.b2nd", False, "foo/ds-1d.b2nd"),
        ("foo/dir 1/a%b.b2nd", False, "foo/dir%201/a%25b.b2nd"),
        ("foo", True, "foo"),
        ("foo/dir1", True, "foo/dir1"),
    ],
)
def test_dataset_paths_are_quoted(dataset, directory, quoted):
    assert quote_dataset(dataset, directory=directory) == quoted


@pytest.mark.parametrize(
    ("dataset", "directory", "match"),
    [("foo", False, "expected ROOT/PATH"), ("foo/", False, "ROOT/PATH"), ("foo/", True, "ROOT/PATH")],
)
def test_bad_dataset_paths_are_refused(dataset, directory, match):
    with pytest.raises(BadRequest, match=match):
        quote_dataset(dataset, directory=directory)


def test_bad_dataset_paths_are_refused_as_topics_refuses_them():
    with pytest.raises(BadRequest):
        quote_dataset("foo/../x.b2nd")
    with pytest.raises(BadRequest):
        quote_dataset("fo+o/x.b2nd")


# Parts of a chunk and byte ranges


@pytest.mark.parametrize(
    ("spans", "size", "text"),
    [
        ([(0, 160)], 1000, "0-159/1000"),
        ([(0, 160), (400, 500)], 1000, "0-159,400-499/1000"),
        ([(0, 1000)], 1000, "0-999/1000"),
        ([(0, 160), (160, 200)], 200, "0-159,160-199/200"),
    ],
)
def test_parts_header(spans, size, text):
    assert format_parts(spans, size) == text
    assert parse_parts(text) == (spans, size)


@pytest.mark.parametrize(
    "text", ["", "0-159", "0-159/100", "5-3/10", "0-4,2-6/10", "a-b/10", "0-1/x", "-5-1/10", "0-1,/10"]
)
def test_parts_header_bad(text):
    assert parse_parts(text) is None


@pytest.mark.parametrize(
    "header",
    [
        "bytes 0-" + "9" * 5000 + "/10",
        "bytes \u0663-4/10",
        "bytes 0-4/" + "1" * 21,
        "bytes 0-4",
        "bytes -4/10",
        "bytes */10",
        "bytes 5-3/10",
        "bytes 0-10/10",
        "bytes 0-4/10 ",
        "bits 0-4/10",
        "",
    ],
)
def test_a_lying_content_range_is_refused(header):
    # What a publisher says of the bytes it sent is read only if it is plainly a range.
    assert parse_content_range(header) is None


@pytest.mark.parametrize(
    ("header", "size", "span"),
    [
        ("bytes=0-9", 100, (0, 10)),
        ("bytes=10-", 100, (10, 100)),
        ("bytes=90-199", 100, (90, 100)),
        ("bytes=-10", 100, (90, 100)),
        ("bytes=-1000", 100, (0, 100)),
        ("bytes=100-199", 100, (100, 100)),
        ("bytes=0-0", 1, (0, 1)),
        # Several ranges get the whole chunk.
        ("bytes=0-1,5-6", 100, None),
    ],
)
def test_a_range_is_picked_as_http_says(header, size, span):
    assert pick_range(parse_range_header(header).ranges, size) == span


@pytest.mark.parametrize(("span", "size"), [((0, 10), 100), ((99, 100), 100), ((5, 6), 6)])
def test_ranges_are_read_back(span, size):
    picked = pick_range(parse_range_header(format_range(span)).ranges, size)
    assert picked == span
    first, last, whole = parse_content_range(format_content_range(picked, size))
    assert (first, last + 1, whole) == (*span, size)


@pytest.mark.parametrize(
    ("header", "none"),
    [
        # A suffix of no bytes is unsatisfiable (RFC 9110, 14.1.1), which werkzeug reads as no range.
        ("bytes=-0", True),
        ("bytes=-000", True),
        ("BYTES=-0", True),
        (" bytes=-0 ", True),
        ("bytes=-0, -0", True),
        ("bytes=-0,-00", True),
        (None, False),
        ("", False),
        ("bytes=-1", False),
        ("bytes=-10", False),
        ("bytes=0-0", False),
        ("bytes=0-", False),
        ("bytes=-0,0-1", False),
        ("bytes=-0-", False),
        ("bytes=--0", False),
        ("items=-0", False),
        ("bytes -0", False),
    ],
)
def test_a_suffix_of_no_bytes_is_told(header, none):
    assert asks_no_bytes(header) is none
    if none:
        assert parse_range_header(header) is None


def test_an_unsatisfiable_range_names_the_size():
    assert pick_range(None, 10) is None
    start, stop = pick_range(parse_range_header("bytes=10-").ranges, 10)
    assert start >= stop
    assert format_content_range(None, 10) == "bytes */10"


# Frames of /api/chunks


CHUNKS = [(0, b"abc"), (7, b""), (2**40, bytes(range(256)) * 100)]


def reader(body: bytes, piece: int = 1 << 20):
    """Return a read(size) over `body` that gives at most `piece` bytes at a time."""
    stream = io.BytesIO(body)
    return lambda size: stream.read(min(size, piece))


@pytest.mark.parametrize("piece", [1, 7, 1 << 20])
def test_frames_are_read_back(piece):
    body = b"".join(frames(iter(CHUNKS)))
    assert body == b"".join(encode_frame(n, data) for n, data in CHUNKS)
    assert list(read_frames(reader(body, piece), "x")) == CHUNKS
    assert list(read_frames(reader(b""), "x")) == []


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: f"{type(e).__name__}-{e.status}")
def test_an_error_raised_while_framing_is_read_back(error):
    def chunks():
        yield CHUNKS[0]
        raise error

    body = b"".join(frames(chunks()))
    assert body == encode_frame(*CHUNKS[0]) + error_frame(error)
    read = read_frames(reader(body), "x")
    assert next(read) == CHUNKS[0]
    with pytest.raises(CatmqttError) as raised:
        next(read)
    assert same(raised.value, error)


def test_a_foreign_error_is_no_frame():
    def chunks():
        yield CHUNKS[0]
        raise KeyError("x")

    with pytest.raises(KeyError):
        b"".join(frames(chunks()))


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (FRAME.pack(0, 10) + b"abc", "the transfer from the subscriber at u was cut off"),
        (encode_frame(0, b"abc")[:-1], "was cut off"),
        (FRAME.pack(0, 3)[:10], "was cut off"),
        (FRAME.pack(0, -1), "the subscriber at u sent a malformed frame"),
        (encode_frame(-1, b"not json"), "the subscriber at u sent a malformed error frame"),
        (encode_frame(-1, b"[1, 2]"), "sent a malformed error frame"),
        (encode_frame(-1, b'{"status": 500}'), "sent a malformed error frame"),
        (encode_frame(-1, b"\xff"), "sent a malformed error frame"),
    ],
)
def test_a_bad_frame_is_refused(body, match):
    with pytest.raises(Unavailable, match=match):
        list(read_frames(reader(body), "the subscriber at u"))


# Arrays that a fetch answers with


ARRAYS = [
    ("float", lambda np: np.arange(12.0).reshape(3, 4)),
    ("scalar", lambda np: np.array(5, dtype=np.int16)),
    ("records", lambda np: np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")])),
    ("strided", lambda np: np.arange(10)[::-2]),
    ("empty", lambda np: np.zeros((0, 3))),
    ("fortran", lambda np: np.arange(6).reshape(2, 3).T),
]


@pytest.mark.parametrize("npy", [True, False], ids=["npy", "cframe"])
@pytest.mark.parametrize(("name", "make"), ARRAYS, ids=[name for name, _ in ARRAYS])
def test_arrays_are_read_back(name, make, npy):
    np = pytest.importorskip("numpy")
    from catmqtt.arrays import decode_array, encode_array
    from catmqtt.wire import CFRAME, NPY

    array = make(np)
    data, mimetype = encode_array(array, npy)
    assert mimetype == (NPY if npy else CFRAME)
    back = decode_array(data, npy)
    assert isinstance(back, np.ndarray)
    assert (back.shape, back.dtype) == (array.shape, array.dtype)
    assert np.array_equal(back, array)


@pytest.mark.parametrize("npy", [True, False], ids=["npy", "cframe"])
@pytest.mark.parametrize("cut", ["empty", "short", "garbage", "npz"])
def test_what_is_no_array_is_refused(cut, npy):
    np = pytest.importorskip("numpy")
    from catmqtt.arrays import decode_array, encode_array

    data = encode_array(np.arange(100), npy)[0]
    npz = io.BytesIO()
    np.savez(npz, a=np.arange(3))
    bad = {"empty": b"", "short": data[:-8], "garbage": b"x" * 100, "npz": npz.getvalue()}[cut]
    with pytest.raises(ValueError):
        decode_array(bad, npy)
