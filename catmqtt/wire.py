"""This module names what crosses HTTP between catmqtt nodes: media types, headers, frames."""

import json
import struct

NPY = "application/x-npy"
CFRAME = "application/x-blosc2"
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


def error_trailer(message: str, status: int) -> bytes:
    """Return the end of a stream cut short by an error: ``{"error", "status"}``, then its frame."""
    error = json.dumps({"error": message[:4096], "status": status}).encode()
    return error + FRAME.pack(-1, len(error))


def read_error_trailer(tail: bytes) -> tuple[str, int] | None:
    """Return (message, status) if `tail`, the last bytes of a cut stream, ends with an error trailer."""
    if len(tail) < FRAME.size:
        return None
    number, size = FRAME.unpack(tail[-FRAME.size :])
    if number != -1 or not 0 < size <= min(TRAILER_MAX, len(tail) - FRAME.size):
        return None
    try:
        error = json.loads(tail[-FRAME.size - size : -FRAME.size])
        return str(error["error"]), int(error["status"])
    except (ValueError, TypeError, KeyError):
        return None
