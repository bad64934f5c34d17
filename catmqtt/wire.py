"""This module names what crosses HTTP between catmqtt nodes: media types, headers, frames."""

from __future__ import annotations

import json
import struct
from typing import Any

from .errors import CatmqttError, Changed, from_status

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
