"""This module maps roots, dataset paths and nodes to MQTT topic names.

Pure string logic, no I/O: a dataset path becomes one topic level per path
component, with the characters MQTT reserves percent-encoded.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import quote, unquote

from .errors import BadRequest

DEFAULT_PREFIX = "catmqtt/v1"
ROLES = ("broker", "publisher", "subscriber")

_ROOT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_NODE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,99}")
# Characters MQTT forbids or reserves in a topic level, those brokers refuse
# (C1 controls, non-characters), and our own escape.
_NONCHARACTERS = "".join(chr(plane << 16 | low) for plane in range(17) for low in (0xFFFE, 0xFFFF))
_RESERVED = re.compile(rf"[+#%\x00-\x1f\x7f-\x9f\ufdd0-\ufdef{_NONCHARACTERS}]|^\$")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_MAX_PATH = 4096


class Topic(NamedTuple):
    """What a catmqtt topic names: a root, a dataset of a root, or a node."""

    kind: str  # "root", "dataset" or "node"
    name: str  # root name, or node role
    path: str  # dataset path, or node id; "" for a root


def parse_root_name(name: object) -> str:
    """Return `name` if it is a valid root name, else raise BadRequest."""
    if isinstance(name, str) and _ROOT_NAME.fullmatch(name) and name not in (".", ".."):
        return name
    raise BadRequest(
        f"invalid root name {name!r}: use 1 to 100 letters, digits, '_', '-' or '.',"
        " not starting with '.' or '-'"
    )


def parse_node_id(node_id: object) -> str:
    """Return `node_id` if it is a valid node id, else raise BadRequest."""
    if isinstance(node_id, str) and _NODE_ID.fullmatch(node_id):
        return node_id
    raise BadRequest(f"invalid node id {node_id!r}: use 1 to 100 letters, digits, '_', '-', '.' or '@'")


def parse_path(path: object) -> str:
    """Return the dataset path `path` if it is safe, else raise BadRequest.

    A path is relative, uses ``/`` as separator and has no empty, ``.`` or
    ``..`` component, so that it can never name anything outside its root.
    """
    if not isinstance(path, str):
        raise BadRequest(f"invalid dataset path {path!r}: not a string")
    if not path:
        raise BadRequest("invalid dataset path '': it is empty")
    if _SURROGATE.search(path):
        raise BadRequest(f"invalid dataset path {path!r}: not valid UTF-8")
    if len(path) > _MAX_PATH:
        raise BadRequest(f"invalid dataset path: longer than {_MAX_PATH} characters")
    if path.startswith("/") or "\\" in path or "\x00" in path:
        raise BadRequest(f"invalid dataset path {path!r}: it must be relative, with '/' separators")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise BadRequest(f"invalid dataset path {path!r}: empty, '.' or '..' component")
    return path


def parse_prefix(prefix: object) -> str:
    """Return the topic prefix `prefix` if valid, else raise BadRequest."""
    if (
        isinstance(prefix, str)
        and prefix
        and not prefix.startswith(("/", "$"))
        and not prefix.endswith("/")
        and not _RESERVED.search(prefix.replace("/", ""))
        and "//" not in prefix
    ):
        return prefix
    raise BadRequest(f"invalid topic prefix {prefix!r}: use levels like 'catmqtt/v1', no wildcards")


def encode_level(part: str) -> str:
    """Percent-encode the characters of `part` that MQTT reserves."""
    return _RESERVED.sub(lambda m: quote(m.group(), safe=""), part)


def decode_level(level: str) -> str:
    """Undo `encode_level`."""
    return unquote(level, errors="strict")


def root_topic(prefix: str, root: str) -> str:
    """Return the topic of the announcement of `root`."""
    return f"{prefix}/roots/{parse_root_name(root)}"


def dataset_topic(prefix: str, root: str, path: str) -> str:
    """Return the topic of the metadata of dataset `path` in `root`."""
    levels = "/".join(encode_level(p) for p in parse_path(path).split("/"))
    return f"{root_topic(prefix, root)}/ds/{levels}"


def node_topic(prefix: str, role: str, node_id: str) -> str:
    """Return the status topic of node `node_id` of `role`."""
    if role not in ROLES:
        raise BadRequest(f"invalid node role {role!r}: one of {', '.join(ROLES)}")
    return f"{prefix}/nodes/{role}/{parse_node_id(node_id)}"


def parse_topic(prefix: str, topic: str) -> Topic:
    """Return what `topic` names, or raise BadRequest if it is no catmqtt topic."""
    if not topic.startswith(prefix + "/"):
        raise BadRequest(f"topic {topic!r} is not under {prefix!r}")
    levels = topic[len(prefix) + 1 :].split("/")
    if levels[0] == "roots" and len(levels) == 2:
        return Topic("root", parse_root_name(levels[1]), "")
    if levels[0] == "roots" and len(levels) > 3 and levels[2] == "ds":
        try:
            parts = [decode_level(level) for level in levels[3:]]
        except UnicodeDecodeError:
            raise BadRequest(f"topic {topic!r} has a bad percent-encoding") from None
        path = parse_path("/".join(parts))
        # One dataset, one topic: anything but our own encoding is refused.
        if [encode_level(part) for part in parts] != levels[3:]:
            raise BadRequest(f"topic {topic!r} is not encoded as catmqtt encodes dataset paths")
        return Topic("dataset", parse_root_name(levels[1]), path)
    if levels[0] == "nodes" and len(levels) == 3 and levels[1] in ROLES:
        return Topic("node", levels[1], parse_node_id(levels[2]))
    raise BadRequest(f"topic {topic!r} is not a catmqtt topic")
