"""Node statuses: which one of a node ``/api/nodes`` shows when several keys sign
them (a table, forged statuses among them), and ``catmqtt nodes`` against real
processes on both brokers: a publisher killed shows ``lost`` (its last will),
one stopped cleanly ``offline``; and ``nodes`` and ``stats`` refusing in one line
an answer they do not read."""

from __future__ import annotations

import argparse
import json
import signal

import pytest
import requests

from catmqtt import signing
from catmqtt.cli_watch import cmd_nodes, cmd_stats
from catmqtt.errors import Unavailable
from catmqtt.schema import SCHEMA
from catmqtt.subscriber.statuses import Statuses
from catmqtt.topics import node_topic

from conftest import wait_for

PREFIX = "catmqtt/v1"
GOOD, EVIL = "http://10.0.0.1:8001", "http://10.6.6.6:8001"


def record(statuses: Statuses, role: str, node_id: str, state: str, when, url=None, signer=None) -> None:
    topic = node_topic(PREFIX, role, node_id)
    obj = {"schema": SCHEMA, "role": role, "id": node_id, "status": state, "session": 1, "time": when}
    if url is not None:
        obj["url"] = url
    statuses.record(topic, role, node_id, obj if signer is None else signer.sign(topic, obj))


def root(publisher: str, signer=None) -> dict:
    info = {"name": publisher, "url": GOOD, "publisher": publisher, "datasets": 0, "etag": "1", "time": 1.0}
    return info if signer is None else {**info, "key": signer.public}


def test_each_node_is_shown_once_by_the_status_to_believe(tmp_path):
    key, forger, other = (signing.generate(tmp_path / f"{name}.pem") for name in ("key", "forger", "other"))
    statuses = Statuses()
    # A signed root's publisher: only its root's key counts, however new the forgeries.
    record(statuses, "publisher", "foo", "online", 1.0, GOOD, key)
    record(statuses, "publisher", "foo", "online", 5.0, EVIL)
    record(statuses, "publisher", "foo", "lost", 9.0, None, forger)
    # An unsigned root's publisher: its unsigned status, its URL kept past "online".
    record(statuses, "publisher", "bar", "online", 1.0, GOOD)
    record(statuses, "publisher", "bar", "offline", 2.0)
    record(statuses, "publisher", "bar", "online", 7.0, EVIL, forger)
    # A signed root whose publisher's only status is a forgery: not shown.
    record(statuses, "publisher", "baz", "online", 3.0, EVIL)
    # Nodes no known root names: unsigned first, else the latest.
    record(statuses, "subscriber", "s1", "online", 1.0, GOOD)
    record(statuses, "subscriber", "s1", "lost", 10.0, None, forger)
    record(statuses, "subscriber", "s2", "online", 1.0, GOOD, other)
    record(statuses, "subscriber", "s2", "lost", 2.0, None, forger)
    record(statuses, "publisher", "qux", "online", float("inf"), GOOD, other)
    roots = {"foo": root("foo", key), "bar": root("bar"), "baz": root("baz", key)}
    shown = [(n["role"], n["id"], n["status"], n["url"], n["key"], n["time"]) for n in statuses.nodes(roots)]
    assert shown == [
        ("publisher", "bar", "offline", GOOD, None, 2.0),
        ("publisher", "foo", "online", GOOD, key.public, 1.0),
        # A time that is no number is none.
        ("publisher", "qux", "online", GOOD, other.public, None),
        ("subscriber", "s1", "online", GOOD, None, 1.0),
        ("subscriber", "s2", "lost", None, forger.public, 2.0),
    ]
    assert [n.get("roots") for n in statuses.nodes(roots)] == [["bar"], ["foo"], [], None, None]


def test_catmqtt_nodes_shows_lost_and_offline(deployment, sample_root):
    d = deployment
    foo = d.start_pub("foo", sample_root)
    bar = d.start_pub("bar", sample_root)
    sub = d.start_sub()
    d.wait_root("foo")
    d.wait_root("bar")

    def states() -> dict[str, str]:
        return {n["id"]: n["status"] for n in requests.get(f"{sub}/api/nodes", timeout=5).json()}

    wait_for(lambda: len(states()) == 3, "the three nodes")
    sub_id = next(node_id for node_id in states() if node_id not in ("foo", "bar"))
    result = d.cli("nodes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"publisher bar online {bar}",
        f"publisher foo online {foo}",
        f"subscriber {sub_id} online {sub}",
    ]
    d.stop("pub-foo", signal.SIGKILL)
    d.stop("pub-bar")
    wait_for(lambda: states() == {"foo": "lost", "bar": "offline", sub_id: "online"}, "the broker's word")
    result = d.cli("nodes")
    assert result.stdout.splitlines() == [
        f"publisher bar offline {bar}",
        f"publisher foo lost {foo}",
        f"subscriber {sub_id} online {sub}",
    ]
    nodes = json.loads(d.cli("nodes", "--json").stdout)
    assert [(n["id"], n["status"], n["key"]) for n in nodes] == [
        ("bar", "offline", None),
        ("foo", "lost", None),
        (sub_id, "online", None),
    ]
    assert nodes[2]["summary"]["cache_bytes"] == 0 and nodes[0]["roots"] == ["bar"]


class Answering:
    """A client whose subscriber answers `answer` to everything."""

    urlbase = "http://127.0.0.1:8002"

    def __init__(self, answer) -> None:
        self.answer = answer

    def nodes(self):
        return self.answer

    def stats(self):
        return self.answer


@pytest.mark.parametrize("answer", [{"a": 1}, [None], [{"role": "publisher"}], 7, "text"])
def test_nodes_refuses_an_answer_it_does_not_read(answer, capsys):
    with pytest.raises(Unavailable, match="answered /api/nodes with what this catmqtt does not read"):
        cmd_nodes(argparse.Namespace(json=False), Answering(answer))
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "answer",
    [
        {},
        [],
        {"total": {"cache_hits": 1}},
        {"total": {"cache_hits": 1, "cache_misses": "2", "fetched_bytes": 3}, "cache": {}},
        {
            "total": {"cache_hits": 1, "cache_misses": 2, "fetched_bytes": "x"},
            "cache": {"bytes": 1, "limit": None, "evictions": 0},
            "served_bytes": 1,
        },
    ],
)
def test_stats_refuses_an_answer_it_does_not_read(answer, capsys):
    with pytest.raises(Unavailable, match="answered /api/stats with what this catmqtt does not read"):
        cmd_stats(argparse.Namespace(json=False), Answering(answer))
    assert capsys.readouterr().out == ""


def test_nodes_prints_one_line_a_node_whatever_a_node_says(capsys):
    forged = "http://10.6.6.6:8001\nsubscriber evil online http://10.6.6.6"
    answer = [{"role": "publisher", "id": "foo", "status": "online", "url": forged}]
    assert cmd_nodes(argparse.Namespace(json=False), Answering(answer)) == 0
    assert capsys.readouterr().out == (
        "publisher foo online http://10.6.6.6:8001\\x0asubscriber\\x20evil\\x20online\\x20http://10.6.6.6\n"
    )
