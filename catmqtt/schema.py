"""This module defines the JSON payloads of catmqtt's MQTT topics, and the
types of what they carry: `DatasetMeta`, `RootInfo` and `NodeStatus`.

Builders stamp ``"schema": 1``; parsers check every field a node relies on,
so that junk published by anyone on a catmqtt topic is refused here with a
BadRequest instead of breaking a node later.

The types are typed dictionaries, not classes: metadata crosses JSON at
every hop (MQTT, the cache's index, HTTP, the client) and is served as it
was announced, fields catmqtt does not know included; a class would
convert it at each. What is checked once `parse_dataset` or `parse_root`
returns is what the types say. A node's status is the exception: it is kept
in memory for every node anyone names, so `parse_node` keeps only the fields
known, in a new dictionary.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any, Literal, NotRequired, TypedDict
from urllib.parse import urlsplit

from .blocks import MAX_BLOCKSIZE, MAX_CHUNKSIZE
from .errors import BadRequest
from .topics import parse_node_id, parse_path, parse_root_name

SCHEMA = 1
MAX_PAYLOAD = 4 * 1024 * 1024
# A node's status is a few hundred bytes (its URL and summary are bounded below): beyond
# 64 KiB it is junk, refused before the MQTT thread parses it, which anyone can make it do.
MAX_STATUS_PAYLOAD = 64 * 1024
# numpy counts items in int64.
MAX_ITEMS = (1 << 63) - 1
# Blosc2's limit on dimensions, and bounds that keep a node's work finite.
MAX_DIM = 16
MAX_CHUNKS = 1 << 32
_ETAG = re.compile(r"[A-Za-z0-9._:+-]{1,128}")
# The digest of a chunk manifest: XXH3-128 in lowercase hex (storage.manifest_digest).
_MANIFEST = re.compile(r"[0-9a-f]{32}")
KINDS = ("ndarray", "schunk", "file")
NODE_STATES = ("online", "offline", "lost")
KEY_PREFIX = "ed25519:"
# Integers in payloads: at most 20 digits (Python's int() takes thousands of
# digits slowly, then refuses past 4300); sequence numbers and sessions fit 64 bits.
MAX_DIGITS = 20
MAX_SEQ = (1 << 63) - 1
# The summary an "online" status may carry: its byte counts (a subscriber's cache),
# and bounds on the fields of later versions.
SUMMARY_COUNTS = ("cache_bytes", "upstream_bytes", "served_bytes")
MAX_SUMMARY_FIELDS = 16
MAX_SUMMARY_NAME = 64
# The longest version string kept of a node's status, and the longest URL in a payload.
MAX_VERSION = 64
MAX_URL = 2048
# What a URL may hold: printable ASCII but the space; others are percent-encoded.
_URL_CHARS = re.compile(r"[!-~]+")


class DatasetMeta(TypedDict):
    """A dataset's metadata: announced on ``.../ds/<path>``, kept by the
    subscriber, answered by ``/api/info``; built by `storage.describe`,
    `storage.describe_file` and the HDF5 root, checked by `parse_dataset`."""

    path: str
    kind: Literal["ndarray", "schunk", "file"]
    # Items along each axis, and per chunk (a byte stream's are 1-D).
    shape: list[int]
    chunks: list[int]
    # Arrays only: items per block along each axis, and the dtype (`dtypes.dtype_to_json`).
    blocks: NotRequired[list[int]]
    dtype: NotRequired[str | list]
    nchunks: int
    # Bytes of a whole chunk, of an item, of the data, and compressed (not for plain files).
    chunksize: int
    typesize: int
    nbytes: int
    cbytes: NotRequired[int]
    cratio: NotRequired[float]
    cparams: dict[str, Any]
    vlmeta: dict[str, Any]
    # The version: any change of the data gives another etag.
    etag: str
    # The digest of the chunks' manifest, where the root keeps one (directory roots):
    # chunks of an older version that it confirms are kept (see `has_manifest`).
    manifest: NotRequired[str]
    # HDF5 roots: what the dataset was in its file.
    hdf5: NotRequired[dict[str, Any]]


class RootInfo(TypedDict):
    """A root's announcement on ``.../roots/<name>``, checked by `parse_root`."""

    name: str
    url: str
    publisher: str
    datasets: int
    etag: str
    time: float
    skipped: NotRequired[list[dict[str, str]]]
    groups: NotRequired[dict[str, dict[str, Any]]]
    # The public key that signed it, if signed.
    key: NotRequired[str]


class NodeStatus(TypedDict):
    """What a subscriber keeps of a node's status on ``.../nodes/<role>/<id>``,
    built by `parse_node`: the status, and of an "online" one its URL."""

    status: Literal["online", "offline", "lost"]
    url: NotRequired[str]
    # The node's run, and its sequence number (signed statuses); that of the last will
    # an "online" names.
    session: NotRequired[int]
    seq: NotRequired[int]
    will: NotRequired[int]
    # When the node says it sent the status (a finite number), and its catmqtt version.
    time: NotRequired[float]
    version: NotRequired[str]
    # A subscriber's figures (see `_summary`).
    summary: NotRequired[dict[str, float | None]]


def has_manifest(meta: DatasetMeta) -> bool:
    """Whether a manifest vouches for the dataset's chunks: then a chunk is known
    by its digest, whatever version or URL it was fetched for."""
    return "manifest" in meta


def dumps(obj: dict[str, Any]) -> bytes:
    """Return `obj` stamped with the schema version, as compact UTF-8 JSON."""
    return json.dumps({"schema": SCHEMA, **obj}, separators=(",", ":")).encode()


def loads(payload: bytes, limit: int = MAX_PAYLOAD) -> dict[str, Any] | None:
    """Return the JSON object in `payload`, or None for an empty (cleared) one;
    refuse one of more than `limit` bytes (`MAX_STATUS_PAYLOAD` for a node's status)."""
    if not payload:
        return None
    if len(payload) > limit:
        raise BadRequest(f"payload of {len(payload)} bytes is over the {limit} byte limit")
    try:
        obj = json.loads(payload, parse_int=_integer)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("payload is not JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise BadRequest("payload is not a JSON object")
    if type(obj.get("schema")) is not int or obj["schema"] != SCHEMA:
        raise BadRequest(f"payload has schema {obj.get('schema')!r}, expected {SCHEMA}")
    return obj


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise BadRequest(f"payload has an integer of more than {MAX_DIGITS} digits")
    return int(text)


def _field(obj: dict[str, Any], key: str, types: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    # bool is an int to Python but never a count or a size here.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise BadRequest(f"{what}: field {key!r} is missing or not {_names(types)}")
    return value


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _tuple(types))


def _count(obj: dict[str, Any], key: str, what: str) -> int:
    value = _field(obj, key, int, what)
    if value < 0:
        raise BadRequest(f"{what}: field {key!r} is negative")
    return value


def _ints(obj: dict[str, Any], key: str, what: str, *, positive: bool) -> list[int]:
    value = _field(obj, key, list, what)
    low = 1 if positive else 0
    if len(value) > MAX_DIM or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value
    ):
        raise BadRequest(f"{what}: field {key!r} is not a list of integers >= {low}")
    return value


def _url(obj: dict[str, Any], key: str, what: str) -> str:
    """Return the http(s) URL in field `key`, without trailing slash.

    urlsplit drops tabs and newlines, and takes spaces and non-ASCII in a host
    name: such a URL is refused, not passed on raw to whoever reads it next.
    """
    url = _field(obj, key, str, what)
    if len(url) > MAX_URL:
        raise BadRequest(f"{what}: field {key!r} is not an http(s) URL of at most {MAX_URL} characters")
    if not _URL_CHARS.fullmatch(url):
        raise BadRequest(
            f"{what}: field {key!r} has whitespace, control characters or non-ASCII:"
            " percent-encode them in a URL (a host name in punycode)"
        )
    parts = urlsplit(url)
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        host = None
    if parts.scheme not in ("http", "https") or not host:
        raise BadRequest(f"{what}: field {key!r} is not an http(s) URL")
    return url.rstrip("/")


def parse_root(obj: dict[str, Any], name: str) -> RootInfo:
    """Check the announcement of root `name` and return it."""
    what = f"announcement of root {name!r}"
    if _field(obj, "name", str, what) != name:
        raise BadRequest(f"{what}: its name is {obj['name']!r}")
    parse_root_name(name)
    _url(obj, "url", what)
    parse_node_id(_field(obj, "publisher", str, what))
    _count(obj, "datasets", what)
    _field(obj, "etag", str, what)
    skipped = obj.get("skipped", [])
    if not isinstance(skipped, list) or not all(
        isinstance(s, dict) and isinstance(s.get("path"), str) and isinstance(s.get("reason"), str)
        for s in skipped
    ):
        raise BadRequest(f"{what}: 'skipped' must be a list of objects with a path and a reason")
    groups = obj.get("groups", {})
    if not isinstance(groups, dict) or not all(isinstance(g, dict) for g in groups.values()):
        raise BadRequest(f"{what}: 'groups' must map directories to their attributes")
    return obj


def parse_dataset(obj: dict[str, Any], path: str) -> DatasetMeta:
    """Check the metadata of dataset `path` and return it."""
    what = f"metadata of {path!r}"
    if _field(obj, "path", str, what) != path:
        raise BadRequest(f"{what}: its path is {obj['path']!r}")
    parse_path(path)
    kind = _field(obj, "kind", str, what)
    if kind not in KINDS:
        raise BadRequest(f"{what}: kind {kind!r} is not one of {', '.join(KINDS)}")
    shape = _ints(obj, "shape", what, positive=False)
    # An empty array has chunks of 0 along its empty axes.
    chunks = _ints(obj, "chunks", what, positive=False)
    if kind == "ndarray":
        blocks = _ints(obj, "blocks", what, positive=False)
        _field(obj, "dtype", (str, list), what)
        if not (len(shape) == len(chunks) == len(blocks)):
            raise BadRequest(f"{what}: shape, chunks and blocks differ in length")
    elif len(shape) != 1 or len(chunks) != 1:
        raise BadRequest(f"{what}: a {kind} has a 1-D shape and chunks")
    if any(c == 0 < size for size, c in zip(shape, chunks, strict=True)):
        raise BadRequest(f"{what}: chunks of 0 along an axis that is not empty")
    if kind == "ndarray" and any(b == 0 < c for c, b in zip(chunks, blocks, strict=True)):
        raise BadRequest(f"{what}: blocks of 0 along an axis whose chunks are not empty")
    nchunks = _count(obj, "nchunks", what)
    if nchunks > MAX_CHUNKS:
        raise BadRequest(f"{what}: {nchunks} chunks is more than {MAX_CHUNKS}")
    expected = 1
    for size, chunk in zip(shape, chunks, strict=True):
        expected *= -(-size // chunk) if chunk else 0
    if nchunks != expected:
        raise BadRequest(f"{what}: nchunks {nchunks} does not match shape and chunks")
    typesize = _count(obj, "typesize", what)
    if typesize == 0:
        raise BadRequest(f"{what}: typesize is 0")
    chunksize = _count(obj, "chunksize", what)
    nbytes = _count(obj, "nbytes", what)
    if kind == "ndarray":
        _array_sizes(what, shape, chunks, blocks, typesize, chunksize)
        if nbytes != nchunks * chunksize:
            raise BadRequest(f"{what}: nbytes {nbytes} is not nchunks {nchunks} times chunksize {chunksize}")
    else:
        _stream_sizes(what, shape, chunks, typesize, chunksize, nbytes, nchunks)
    if "cbytes" in obj:
        _count(obj, "cbytes", what)
    _field(obj, "cparams", dict, what)
    _field(obj, "vlmeta", dict, what)
    if not _ETAG.fullmatch(_field(obj, "etag", str, what)):
        raise BadRequest(f"{what}: etag {obj['etag'][:100]!r} is not 1 to 128 of A-Z a-z 0-9 . _ : + -")
    if "manifest" in obj and not _MANIFEST.fullmatch(_field(obj, "manifest", str, what)):
        raise BadRequest(f"{what}: manifest {obj['manifest'][:100]!r} is not a digest (32 of 0-9 a-f)")
    return obj


def _array_sizes(
    what: str, shape: list[int], chunks: list[int], blocks: list[int], typesize: int, chunksize: int
) -> None:
    """Check that an array's sizes agree with its shape, chunks and blocks, within Blosc2's limits.

    Blosc2 pads a chunk to whole blocks: its chunks are of that many items.
    """
    if math.prod(shape) > MAX_ITEMS:
        raise BadRequest(f"{what}: shape {shape} has more than {MAX_ITEMS} items")
    if any(b > c for c, b in zip(chunks, blocks, strict=True)):
        raise BadRequest(f"{what}: blocks {blocks} are larger than chunks {chunks}")
    padded = math.prod(-(-c // b) * b if b else 0 for c, b in zip(chunks, blocks, strict=True))
    if padded * typesize > MAX_CHUNKSIZE:
        raise BadRequest(f"{what}: chunks of {padded * typesize} bytes, more than Blosc2's {MAX_CHUNKSIZE}")
    if math.prod(blocks) * typesize > MAX_BLOCKSIZE:
        raise BadRequest(
            f"{what}: blocks of {math.prod(blocks) * typesize} bytes, more than Blosc2's {MAX_BLOCKSIZE}"
        )
    if chunksize != padded * typesize:
        raise BadRequest(
            f"{what}: chunksize {chunksize} is not {padded * typesize}, the bytes of chunks {chunks}"
            f" in blocks {blocks} of items of {typesize} bytes"
        )


def _stream_sizes(
    what: str, shape: list[int], chunks: list[int], typesize: int, chunksize: int, nbytes: int, nchunks: int
) -> None:
    """Check that a byte stream's sizes agree with its shape and chunks, in items of `typesize` bytes."""
    if chunksize > MAX_CHUNKSIZE or typesize > MAX_BLOCKSIZE:
        raise BadRequest(f"{what}: chunksize {chunksize} or typesize {typesize} is beyond Blosc2's limits")
    if shape[0] != nbytes // typesize or chunks[0] != chunksize // typesize:
        raise BadRequest(
            f"{what}: shape {shape} and chunks {chunks} are not nbytes {nbytes} and chunksize"
            f" {chunksize} in items of {typesize} bytes"
        )
    if nchunks != (-(-nbytes // chunksize) if chunksize else 0) or (nbytes and not chunksize):
        raise BadRequest(
            f"{what}: nchunks {nchunks} does not match nbytes {nbytes} and chunksize {chunksize}"
        )


def parse_node(obj: dict[str, Any], role: str, node_id: str) -> NodeStatus:
    """Check the status of node `node_id` of `role` and return a new `NodeStatus`
    of the fields a subscriber uses: anything else in `obj` is left behind, and an
    optional field that is junk (a time that is no number, a version too long, a
    sequence number unsigned statuses need not carry) is left out."""
    what = f"status of {role} {node_id!r}"
    state = _field(obj, "status", str, what)
    if state not in NODE_STATES:
        raise BadRequest(f"{what}: status {state!r} is not one of {', '.join(NODE_STATES)}")
    status: NodeStatus = {"status": state}
    if state == "online":
        status["url"] = _url(obj, "url", what)
    for key in ("session", "will"):
        if key in obj:
            if _count(obj, key, what) > MAX_SEQ:
                raise BadRequest(f"{what}: {key} {obj[key]} is over {MAX_SEQ}")
            status[key] = obj[key]
    seq = obj.get("seq")
    if type(seq) is int and 0 <= seq <= MAX_SEQ:
        status["seq"] = seq
    when = obj.get("time")
    if isinstance(when, int | float) and not isinstance(when, bool) and math.isfinite(when):
        status["time"] = when
    version = obj.get("version")
    if isinstance(version, str) and len(version) <= MAX_VERSION:
        status["version"] = version
    if "summary" in obj:
        _summary(obj["summary"], what)
        status["summary"] = dict(obj["summary"])
    return status


def _summary(summary: object, what: str) -> None:
    """Check the summary a node's status carries (a subscriber's: `SUMMARY_COUNTS`,
    ``cache_limit`` or null, ``hit_ratio`` from 0 to 1 or null); other fields, of
    later versions, must be short names of finite numbers or null."""
    if not isinstance(summary, dict) or len(summary) > MAX_SUMMARY_FIELDS:
        raise BadRequest(f"{what}: the summary is not an object of at most {MAX_SUMMARY_FIELDS} fields")
    for key, value in summary.items():
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if key in SUMMARY_COUNTS or key == "cache_limit":
            good = (number and isinstance(value, int) and 0 <= value <= MAX_SEQ) or (
                value is None and key == "cache_limit"
            )
        elif key == "hit_ratio":
            good = value is None or (number and 0 <= value <= 1)
        else:
            good = len(key) <= MAX_SUMMARY_NAME and (value is None or number)
        if not good:
            raise BadRequest(f"{what}: summary field {key[:MAX_SUMMARY_NAME]!r} is out of bounds")


def parse_public_key(text: object) -> str:
    """Return `text` if it is an Ed25519 public key as ``catmqtt keygen`` prints it."""
    if isinstance(text, str) and text.startswith(KEY_PREFIX):
        try:
            raw = base64.b64decode(text[len(KEY_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == 32:
            return text
    shown = text[:60] if isinstance(text, str) else text
    raise BadRequest(f"invalid public key {shown!r}: expected ed25519:<base64 of 32 bytes>, as keygen prints")
