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
