"""This module writes and reads what crosses HTTP between catmqtt nodes: media types,
headers, query arguments, frames and errors.

Pure logic, no I/O: each format has one function that writes it and one that
reads it back, and reading refuses what the format is not (a peer may lie).
The arrays a fetch answers with (.npy or a Blosc2 frame, `NPY` and `CFRAME`)
need numpy and Blosc2, and are written and read in `catmqtt.arrays`.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

from .errors import BadRequest, CatmqttError, Changed, Unavailable, from_status
from .topics import parse_path, parse_root_name

NPY = "application/x-npy"
OCTETS = "application/octet-stream"
CFRAME = "application/x-blosc2"
ZIP = "application/zip"
# /api/chunks answers a sequence of frames: (chunk number, length) as two
# little-endian int64, then that many bytes; number -1 carries a JSON error.
FRAMES = "application/x-catmqtt-chunks"
FRAME = struct.Struct("<qq")
# A chunk's headers: the etag of its dataset's version, and its digest.
ETAG = "X-Catmqtt-Etag"
DIGEST = "X-Catmqtt-Digest"
# Asked for some blocks of a chunk (?blocks=A-B), a publisher may send only
# parts of its bytes, one after the other: this header says which ("0-159,
# 4000-9999/3529755": first-last byte of each part, then the chunk's size).
PARTS = "X-Catmqtt-Parts"
# A large answer that fails once sent in part ends with its error, then the
# frame (-1, length of the error), and the connection is closed short of the
# announced Content-Length.
TRAILER_MAX = 64 << 10


# Integers a request names (chunk and block numbers, query arguments) have at
# most this many digits: more cannot name anything, and int() refuses over 4300.
MAX_DIGITS = 20
_INTEGER = re.compile(r"[+-]?[0-9]+")
# One or more suffix ranges of no bytes: "bytes=-0", "bytes=-0, -00".
_NO_BYTES = re.compile(r"bytes=-0+(?:[ \t]*,[ \t]*-0+)*", re.IGNORECASE)
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,20})-([0-9]{1,20})/([0-9]{1,20})")


# Dataset paths in URLs, integers, chunk lists and block ranges in query arguments


def quote_dataset(dataset: str, *, directory: bool = False) -> str:
    """Check ``root/path`` (just ``root`` too if `directory`) and quote it for a URL;
    raise BadRequest."""
    root, sep, path = dataset.partition("/")
    parse_root_name(root)
    if sep or not directory:
        if not path:
            raise BadRequest(f"invalid dataset path {dataset!r}: expected ROOT/PATH, like foo/ds-1d.b2nd")
        parse_path(path)
    return quote(dataset)


def parse_int(text: str, what: str) -> int:
    """Parse the decimal integer (ASCII digits, an optional sign) that a request gives
    as `what`; raise BadRequest."""
    body = text.strip()
    if not _INTEGER.fullmatch(body):
        raise BadRequest(f"{what} {_shown(text)} is not an integer")
    return _natural(body.lstrip("+-"), what) * (-1 if body.startswith("-") else 1)


def format_chunk_list(numbers: Sequence[int]) -> str:
    """Write chunk numbers compactly, runs as ranges: ``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts = []
    run_start = prev = None
    for n in list(numbers) + [None]:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if run_start is not None:
            parts.append(str(run_start) if run_start == prev else f"{run_start}-{prev}")
        run_start = prev = n
    return ",".join(parts)


def parse_chunk_list(text: str, nchunks: int) -> list[int]:
    """Parse ``"0-15,20"`` into chunk numbers, each below `nchunks`; raise BadRequest."""
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("no chunks given: expected a list like 0-15,20")
    numbers: list[int] = []
    for part in text.split(","):
        run = _parse_run(part, "chunk")
        if run is None:
            raise BadRequest(f"malformed chunk list {_shown(text)}: {_shown(part.strip())} is not N or N-M")
        low, high = run
        if low > high:
            raise BadRequest(f"malformed chunk list {_shown(text)}: {_shown(part.strip())} runs backwards")
        if high >= nchunks:
            raise BadRequest(f"chunk {high} is out of range: the dataset has {nchunks} chunks")
        numbers.extend(range(low, high + 1))
        if len(numbers) > nchunks:
            raise BadRequest(f"chunk list {_shown(text)} names chunks more than once")
    return numbers


def format_block_range(blocks: range) -> str:
    """Write the blocks A to B of a chunk (a non-empty range of step 1) as ``"A-B"``."""
    return f"{blocks.start}-{blocks.stop - 1}"


def parse_block_range(text: str) -> range:
    """Parse ``"A-B"`` (or ``"A"``) into the blocks A to B of a chunk; raise BadRequest."""
    run = _parse_run(text, "block")
    if run is None or run[0] > run[1]:
        raise BadRequest(f"malformed block range {_shown(text)}: expected A-B, like 0-3")
    return range(run[0], run[1] + 1)


def _parse_run(text: str, what: str) -> tuple[int, int] | None:
    """Return the first and last number of ``"N-M"`` (or ``"N"``), or None if `text`
    is neither; raise BadRequest naming them `what` if one is too long."""
    first, sep, last = text.strip().partition("-")
    if not _is_number(first) or (sep and not _is_number(last)):
        return None
    return _natural(first, what), _natural(last if sep else first, what)


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdecimal()


def _natural(digits: str, what: str) -> int:
    """Return the number that ASCII `digits` write, if it has at most MAX_DIGITS digits;
    raise BadRequest naming it `what` otherwise."""
    significant = digits.lstrip("0")
    if len(significant) > MAX_DIGITS:
        raise BadRequest(f"{what} {_shown(digits)} is out of range: more than {MAX_DIGITS} digits")
    # Without the zeros: int() counts them towards its limit of 4300 digits.
    return int(significant or "0")


def _shown(text: str) -> str:
    """Return `text` quoted for a message, cut if long: a request may send megabytes."""
    return repr(text) if len(text) <= 100 else repr(text[:100]) + "..."


# Parts of a chunk (PARTS) and byte ranges (Range, Content-Range)


def format_parts(spans: list[tuple[int, int]], size: int) -> str:
    """Return spans ``(start, stop)`` of a chunk of `size` bytes as ``"0-159,4000-9999/3529755"``."""
    return ",".join(f"{start}-{stop - 1}" for start, stop in spans) + f"/{size}"


def parse_parts(text: str) -> tuple[list[tuple[int, int]], int] | None:
    """Parse what `format_parts` returns; None unless the spans are in order, apart
    and within the size."""
    spans_text, sep, size_text = text.partition("/")
    try:
        size = int(size_text)
        spans = [(int(a), int(b) + 1) for a, _, b in (span.partition("-") for span in spans_text.split(","))]
    except ValueError:
        return None
    ends = [x for span in spans for x in span]
    if not sep or ends != sorted(ends) or ends[0] < 0 or ends[-1] > size or any(a >= b for a, b in spans):
        return None
    return spans, size


def format_range(span: tuple[int, int]) -> str:
    """Return the ``Range`` header that asks for bytes ``start`` to ``stop - 1``."""
    return f"bytes={span[0]}-{span[1] - 1}"


def pick_range(ranges: Sequence[tuple[int, int | None]] | None, size: int) -> tuple[int, int] | None:
    """Return the span ``(start, stop)`` of a chunk of `size` bytes to answer a
    ``Range`` header with, given its byte ranges as werkzeug parses them
    (``(start, stop)``, `stop` None for the end, `start` negative for the last
    bytes); None for the whole chunk.

    One range gets its span, cut at the end of the chunk; an empty span
    (``start >= stop``) if it lies past the end, which is answered 416.
    Several ranges (or none) get the whole chunk, as HTTP allows.
    """
    if ranges is None or len(ranges) != 1:
        return None
    start, stop = ranges[0]
    if start < 0:
        # The last -start bytes (all of them if there are fewer).
        start, stop = max(size + start, 0), size
    return start, size if stop is None else min(stop, size)


def asks_no_bytes(header: str | None) -> bool:
    """Tell whether a ``Range`` header asks only for the last 0 bytes (``bytes=-0``):
    RFC 9110 (14.1.1) makes that unsatisfiable, a 416, where werkzeug reads no
    range at all, which would send the whole chunk."""
    return header is not None and _NO_BYTES.fullmatch(header.strip()) is not None


def format_content_range(span: tuple[int, int] | None, size: int) -> str:
    """Return the ``Content-Range`` of bytes ``start`` to ``stop - 1`` of `size`,
    or of none (``bytes */size``, a 416's) if `span` is None."""
    return f"bytes */{size}" if span is None else f"bytes {span[0]}-{span[1] - 1}/{size}"


def parse_content_range(text: str) -> tuple[int, int, int] | None:
    """Return (first, last, size) of ``"bytes first-last/size"``; None unless it is
    plainly that, of ASCII numbers of at most 20 digits, with first <= last < size."""
    found = _CONTENT_RANGE.fullmatch(text)
    if found is None:
        return None
    first, last, size = (int(x) for x in found.groups())
    return (first, last, size) if first <= last < size else None


# Frames of /api/chunks


def encode_frame(number: int, data: bytes) -> bytes:
    """Return chunk `number`'s frame: its header, then `data`."""
    return FRAME.pack(number, len(data)) + data


def error_frame(exc: CatmqttError) -> bytes:
    """Return the frame (number -1) that ends a /api/chunks body with error `exc`."""
    return encode_frame(-1, json.dumps(error_json(exc)).encode())


def frames(chunks: Iterable[tuple[int, bytes]]) -> Iterator[bytes]:
    """Yield the body of a /api/chunks answer: each chunk's frame header, then its
    bytes (apart: they are sent from where they are, not copied).

    A CatmqttError that `chunks` raises ends the body with its `error_frame`.
    """
    try:
        for number, data in chunks:
            yield FRAME.pack(number, len(data))
            yield data
    except CatmqttError as exc:
        yield error_frame(exc)


def read_frames(read: Callable[[int], bytes], sender: str) -> Iterator[tuple[int, bytes]]:
    """Yield (chunk number, bytes) from the body of a /api/chunks answer, read with
    `read` (as ``file.read(size)``: at most `size` bytes, none at the end).

    Raise the error that an error frame carries, or Unavailable if the body ends
    within a frame or a frame is malformed; `sender` names where the body came from.
    """
    while True:
        header = _read_exact(read, FRAME.size, sender, at_frame=True)
        if header is None:
            return
        number, size = FRAME.unpack(header)
        if size < 0:
            raise Unavailable(f"{sender} sent a malformed frame")
        data = _read_exact(read, size, sender)
        if number == -1:
            try:
                error = error_from_json(json.loads(data))
            except ValueError:
                error = None
            raise error or Unavailable(f"{sender} sent a malformed error frame")
        yield number, data


def _read_exact(
    read: Callable[[int], bytes], size: int, sender: str, *, at_frame: bool = False
) -> bytes | None:
    """Return `size` bytes; None if the body ends before the first when `at_frame`."""
    parts, left = [], size
    while left:
        part = read(left)
        if not part:
            if at_frame and left == size:
                return None
            raise Unavailable(f"the transfer from {sender} was cut off")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


# Errors


def error_json(exc: CatmqttError) -> dict[str, Any]:
    """Return the JSON body of an error: ``{"error", "status"}``, and ``"changed"``,
    the path, for `Changed` (a client reads it again)."""
    body: dict[str, Any] = {"error": exc.message[:4096], "status": exc.status}
    if isinstance(exc, Changed):
        body["changed"] = exc.path
    return body


def error_from_json(body: Any, status: int | None = None) -> CatmqttError | None:
    """Return the error that a JSON error body stands for, or None if it is none.

    `status` is the HTTP status of the answer; a frame's error carries its own.
    """
    if not isinstance(body, dict) or "error" not in body:
        return None
    changed = body.get("changed")
    try:
        status = int(body["status"]) if status is None else status
    except (KeyError, TypeError, ValueError):
        return None
    return from_status(status, str(body["error"])[:4096], changed if isinstance(changed, str) else None)


def error_trailer(exc: CatmqttError) -> bytes:
    """Return the end of a stream cut short by an error: its `error_json`, then its frame."""
    error = json.dumps(error_json(exc)).encode()
    return error + FRAME.pack(-1, len(error))


def read_error_trailer(tail: bytes) -> CatmqttError | None:
    """Return the error if `tail`, the last bytes of a cut stream, ends with an error trailer."""
    if len(tail) < FRAME.size:
        return None
    number, size = FRAME.unpack(tail[-FRAME.size :])
    if number != -1 or not 0 < size <= min(TRAILER_MAX, len(tail) - FRAME.size):
        return None
    try:
        return error_from_json(json.loads(tail[-FRAME.size - size : -FRAME.size]))
    except ValueError:
        return None
