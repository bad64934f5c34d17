"""This module names what crosses HTTP between catmqtt nodes: media types, headers, frames."""

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
