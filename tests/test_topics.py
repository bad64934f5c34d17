"""Tables of good and bad inputs for catmqtt.topics: names, paths, topic round trips."""

from __future__ import annotations

import re
import unicodedata

import pytest

from catmqtt.errors import BadRequest
from catmqtt.topics import (
    DEFAULT_PREFIX,
    ROLES,
    Topic,
    dataset_topic,
    node_topic,
    parse_node_id,
    parse_path,
    parse_prefix,
    parse_root_name,
    parse_topic,
    root_topic,
)

P = DEFAULT_PREFIX


def mqtt_valid(topic: str) -> bool:
    """Whether a broker such as mosquitto accepts `topic` as a topic name to publish on.

    MQTT 3.1.1/5 section 1.5: well-formed UTF-8, no U+0000, and brokers refuse
    control characters (U+0001-U+001F, U+007F-U+009F) and non-characters.
    """
    try:
        topic.encode("utf-8")
    except UnicodeEncodeError:
        return False
    for c in topic:
        cp = ord(c)
        if unicodedata.category(c) == "Cc" or 0xFDD0 <= cp <= 0xFDEF or cp & 0xFFFE == 0xFFFE:
            return False
    return "+" not in topic and "#" not in topic and not topic.startswith("$")


# Dataset paths and topics


GOOD_PATHS = [
    "a",
    "a.b2nd",
    "dir/sub/a.b2nd",
    "a+b",
    "a#b",
    "+/#",
    "100%",
    "%2B",
    "%25",
    "%",
    "$SYS",
    "$",
    "a/$b/c$",
    "é/日本/données.b2nd",
    "with space/x y ",
    " ",
    "ctl\x01\x1f\x7f",
    "tab\there/new\nline\r",
    "a.b/..c/c../...",
    ".hidden/-dash/_under",
    "a" * 4096,
    "/".join(["d"] * 1000),
]


@pytest.mark.parametrize("path", GOOD_PATHS)
@pytest.mark.parametrize("root", ["r", "Root_1.x-y"])
def test_dataset_topic_round_trip(root: str, path: str) -> None:
    topic = dataset_topic(P, root, path)
    assert topic.startswith(f"{P}/roots/{root}/ds/")
    assert parse_topic(P, topic) == Topic("dataset", root, path)
    levels = topic[len(f"{P}/roots/{root}/ds/") :].split("/")
    assert len(levels) == len(path.split("/"))
    assert mqtt_valid(topic), topic
    assert not any(level.startswith("$") for level in topic.split("/"))


@pytest.mark.parametrize("prefix", ["p", "a/b/c", "site 1/catmqtt"])
def test_topic_round_trip_other_prefixes(prefix: str) -> None:
    assert parse_topic(prefix, dataset_topic(prefix, "r", "a/b+c")) == Topic("dataset", "r", "a/b+c")
    assert parse_topic(prefix, root_topic(prefix, "r")) == Topic("root", "r", "")
    assert parse_topic(prefix, node_topic(prefix, "broker", "b1")) == Topic("node", "broker", "b1")


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("a\x80b", id="U+0080"),
        pytest.param("nel\x85", id="U+0085"),
        pytest.param("\x9f", id="U+009F"),
        pytest.param("x\ufdd0", id="U+FDD0"),
        pytest.param("x\uffff", id="U+FFFF"),
        pytest.param("x\U0001fffe", id="U+1FFFE"),
        pytest.param("x\ud800", id="lone-surrogate"),
    ],
)
def test_dataset_topic_is_a_valid_mqtt_topic_or_refused(path: str) -> None:
    try:
        topic = dataset_topic(P, "r", path)
    except BadRequest:
        return
    assert mqtt_valid(topic), topic
    assert parse_topic(P, topic) == Topic("dataset", "r", path)


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("", "invalid dataset path '': it is empty"),
        ("/abs", "it must be relative, with '/' separators"),
        ("/", "it must be relative"),
        ("a\\b", "it must be relative"),
        ("a\x00b", "it must be relative"),
        ("a//b", "empty, '.' or '..' component"),
        ("a/", "empty, '.' or '..' component"),
        ("a/./b", "empty, '.' or '..' component"),
        ("a/../b", "empty, '.' or '..' component"),
        ("..", "empty, '.' or '..' component"),
        (".", "empty, '.' or '..' component"),
        ("a/..", "empty, '.' or '..' component"),
        ("a" * 4097, "invalid dataset path: longer than 4096 characters"),
        (None, "invalid dataset path None"),
        (3, "invalid dataset path 3"),
        (b"a", "invalid dataset path b'a'"),
    ],
)
def test_parse_path_bad(path: object, match: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(match)):
        parse_path(path)
    with pytest.raises(BadRequest, match=re.escape(match)):
        dataset_topic(P, "r", path)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", [3, ["a"]])
def test_parse_path_non_string_message(path: object) -> None:
    with pytest.raises(BadRequest) as info:
        parse_path(path)
    assert "empty" not in str(info.value)


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_parse_path_good(path: str) -> None:
    assert parse_path(path) == path


# Root names, node ids, prefixes


@pytest.mark.parametrize("name", ["r", "R", "0", "_x", "a.b-c", "root_1", "a..b", "x-", "a" * 100])
def test_parse_root_name_good(name: str) -> None:
    assert parse_root_name(name) == name
    assert root_topic(P, name) == f"{P}/roots/{name}"
    assert parse_topic(P, root_topic(P, name)) == Topic("root", name, "")


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", ".x", "-x", "a/b", "a b", "a+", "a#", "a@b", "é", "a\n", "a" * 101, None, 3, b"r"],
)
def test_parse_root_name_bad(name: object) -> None:
    with pytest.raises(BadRequest, match=re.escape(f"invalid root name {name!r}: use 1 to 100")):
        parse_root_name(name)
    with pytest.raises(BadRequest, match="invalid root name"):
        root_topic(P, name)  # type: ignore[arg-type]


@pytest.mark.parametrize("node_id", ["p", "pub1", "a@b.c", "_", "x-y", "host.example@site", "a" * 100])
def test_parse_node_id_good(node_id: str) -> None:
    assert parse_node_id(node_id) == node_id


@pytest.mark.parametrize(
    "node_id", ["", "@a", ".a", "-a", "a/b", "a b", "a+", "a#", "é", "a\n", "a" * 101, None, 7]
)
def test_parse_node_id_bad(node_id: object) -> None:
    with pytest.raises(BadRequest, match=re.escape(f"invalid node id {node_id!r}: use 1 to 100")):
        parse_node_id(node_id)


@pytest.mark.parametrize(
    "prefix", [DEFAULT_PREFIX, "x", "a/b/c", "site 1/catmqtt", "a/$b", "é/v1", "a-b_c.d"]
)
def test_parse_prefix_good(prefix: str) -> None:
    assert parse_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "/a",
        "$SYS/x",
        "$",
        "a/",
        "a//b",
        "a/+",
        "+",
        "a/#",
        "#",
        "a%b",
        "a\x00",
        "a\x01b",
        "a\x7f",
        None,
        3,
    ],
)
def test_parse_prefix_bad(prefix: object) -> None:
    with pytest.raises(BadRequest, match=re.escape(f"invalid topic prefix {prefix!r}")):
        parse_prefix(prefix)


# Node topics


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("node_id", ["n1", "a@b.c"])
def test_node_topic_round_trip(role: str, node_id: str) -> None:
    topic = node_topic(P, role, node_id)
    assert topic == f"{P}/nodes/{role}/{node_id}"
    assert parse_topic(P, topic) == Topic("node", role, node_id)


@pytest.mark.parametrize("role", ["admin", "", "Publisher", "publishers", None])
def test_node_topic_bad_role(role: object) -> None:
    with pytest.raises(BadRequest, match=re.escape(f"invalid node role {role!r}: one of broker, publisher")):
        node_topic(P, role, "n1")  # type: ignore[arg-type]


@pytest.mark.parametrize("node_id", ["", "-x", "a/b", "a+b"])
def test_node_topic_bad_id(node_id: str) -> None:
    with pytest.raises(BadRequest, match="invalid node id"):
        node_topic(P, "publisher", node_id)


# parse_topic of topics that are no catmqtt topic


@pytest.mark.parametrize(
    ("topic", "match"),
    [
        ("other/roots/r", f"topic 'other/roots/r' is not under {P!r}"),
        (P, f"is not under {P!r}"),
        (f"{P}x/roots/r", "is not under"),
        (f"x/{P}/roots/r", "is not under"),
        (f"{P}/roots", "is not a catmqtt topic"),
        (f"{P}/roots/", "invalid root name ''"),
        (f"{P}/roots/r/ds", "is not a catmqtt topic"),
        (f"{P}/roots/r/xx/a", "is not a catmqtt topic"),
        (f"{P}/roots/r/extra", "is not a catmqtt topic"),
        (f"{P}/things/r", "is not a catmqtt topic"),
        (f"{P}/", "is not a catmqtt topic"),
        (f"{P}/nodes/admin/x", "is not a catmqtt topic"),
        (f"{P}/nodes/publisher", "is not a catmqtt topic"),
        (f"{P}/nodes/publisher/a/b", "is not a catmqtt topic"),
        (f"{P}/nodes/publisher/@x", "invalid node id '@x'"),
        (f"{P}/roots/.bad", "invalid root name '.bad'"),
        (f"{P}/roots/.bad/ds/a", "invalid root name '.bad'"),
        (f"{P}/roots/r/ds/%FF", "has a bad percent-encoding"),
        (f"{P}/roots/r/ds/a/%C3%28", "has a bad percent-encoding"),
        (f"{P}/roots/r/ds/a//b", "invalid dataset path 'a//b'"),
        (f"{P}/roots/r/ds/a/", "invalid dataset path 'a/'"),
        (f"{P}/roots/r/ds/%2E%2E", "invalid dataset path '..'"),
        (f"{P}/roots/r/ds/a/%2e", "invalid dataset path 'a/.'"),
        (f"{P}/roots/r/ds/%00", "invalid dataset path"),
        (f"{P}/roots/r/ds/a%5Cb", "invalid dataset path"),
        (f"{P}/roots/r/ds/..%2F..%2Fetc", "invalid dataset path"),
    ],
)
def test_parse_topic_bad(topic: str, match: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(match)):
        parse_topic(P, topic)


@pytest.mark.parametrize(
    "levels",
    [
        pytest.param("a%2Fb", id="escaped-slash"),
        pytest.param("%41", id="escaped-letter"),
        pytest.param("a%24", id="escaped-dollar-inside"),
        pytest.param("a\x01b", id="raw-control"),
        "a/b",
        "%24SYS",
        "a%2Bb/%23",
    ],
)
def test_parse_topic_accepts_only_canonical_dataset_topics(levels: str) -> None:
    topic = f"{P}/roots/r/ds/{levels}"
    try:
        what = parse_topic(P, topic)
    except BadRequest:
        return
    assert dataset_topic(P, what.name, what.path) == topic
