"""Node statuses: which one of a node ``/api/nodes`` shows when several keys sign
them (a table, forged statuses among them), how many are kept (junk published
by a rogue client on a real broker), and ``catmqtt nodes`` against real
processes on both brokers: a publisher killed shows ``lost`` (its last will),
one stopped cleanly ``offline``; ``nodes`` and ``stats`` refusing in one line
an answer they do not read; and a node's own earlier status coming back to it,
late or replayed by a rogue client, put right only if the broker holds it."""

from __future__ import annotations

import argparse
import json
import queue
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import paho.mqtt.client as paho
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion

from catmqtt import config, signing
from catmqtt.cli_watch import cmd_nodes, cmd_stats
from catmqtt.errors import BadRequest, Unavailable
from catmqtt.mqtt import Node
from catmqtt.publisher import Publisher
from catmqtt.schema import MAX_STATUS_PAYLOAD, SCHEMA
from catmqtt.subscriber import statuses as statuses_module
from catmqtt.subscriber.statuses import Statuses
from catmqtt.topics import node_topic

from conftest import DEADLINE, publish, rogue_client, start_publisher, start_subscriber, wait_for

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


def test_a_full_table_refuses_new_nodes_but_those_a_known_root_vouches_for(tmp_path):
    key, forger = (signing.generate(tmp_path / f"{name}.pem") for name in ("key", "forger"))
    roots = {"foo": root("foo", key), "bar": root("bar")}
    statuses = Statuses(lambda: roots, limit=3)
    record(statuses, "subscriber", "junk0", "online", 1.0, GOOD)
    record(statuses, "subscriber", "junk1", "online", 1.0, GOOD, forger)
    record(statuses, "subscriber", "junk2", "online", 1.0, GOOD)
    full = "3 node statuses are kept, the most: the status of a new node is refused until one is cleared"
    for args in (
        ("subscriber", "junk3", "online", 1.0, GOOD),
        # An unsigned root vouches for nobody; a stranger's key for none of its nodes.
        ("publisher", "bar", "online", 1.0, GOOD),
        ("publisher", "foo", "online", 1.0, GOOD, forger),
        ("subscriber", "junk0", "online", 1.0, GOOD, forger),
    ):
        with pytest.raises(BadRequest, match=full):
            record(statuses, *args)
    # A node known already goes on; a signed root's publisher gets in.
    record(statuses, "subscriber", "junk0", "offline", 2.0)
    record(statuses, "publisher", "foo", "online", 1.0, GOOD, key)
    assert [(n["id"], n["status"]) for n in statuses.nodes(roots)] == [
        ("foo", "online"),
        ("junk0", "offline"),
        ("junk1", "online"),
        ("junk2", "online"),
    ]
    # A clear frees the place of a node's unsigned status and of those a stranger signed,
    # not that of a status its root's key signed.
    for node in ("junk1", "foo"):
        for role in ("publisher", "subscriber"):
            statuses.record(node_topic(PREFIX, role, node), role, node, None)
    assert [n["id"] for n in statuses.nodes(roots)] == ["foo", "junk0", "junk2"]
    with pytest.raises(BadRequest, match=full):
        record(statuses, "subscriber", "junk4", "online", 1.0, GOOD)
    statuses.record(node_topic(PREFIX, "subscriber", "junk2"), "subscriber", "junk2", None)
    record(statuses, "subscriber", "junk4", "online", 1.0, GOOD)
    # Past twice the limit, even a root's key gets no room: roots are anyone's to announce too.
    for i in range(2):
        roots[f"r{i}"] = root(f"r{i}", key)
        record(statuses, "publisher", f"r{i}", "online", 1.0, GOOD, key)
    roots["r2"] = root("r2", key)
    record(statuses, "publisher", "r2", "online", 1.0, GOOD, key)
    roots["r3"] = root("r3", key)
    with pytest.raises(BadRequest, match="6 node statuses are kept"):
        record(statuses, "publisher", "r3", "online", 1.0, GOOD, key)


def test_junk_statuses_keep_the_nodes_bounded(broker, tmp_path, sample_root, monkeypatch):
    """Each status was kept whole, junk fields included, for any number of nodes:
    thousands of them grew a subscriber by hundreds of MB. A root announced during
    such a flood showed offline until its publisher reconnected."""
    monkeypatch.setattr(statuses_module, "MAX_NODES", 40)
    signing.generate(tmp_path / "foo.pem")
    pub = start_publisher(broker, tmp_path / "pub", sample_root, sign_key=str(tmp_path / "foo.pem"))
    try:
        sub = start_subscriber(broker, tmp_path / "sub")
        try:
            _flood(broker, tmp_path, f"{sub.url}/api/nodes")
            # A root announced now: its publisher's status, which comes before the root
            # is known, is refused then for want of room, asked for again once the root
            # is, and believed.
            signing.generate(tmp_path / "bar.pem")
            settings = config.node_settings(
                {},
                "publisher",
                broker=broker.url,
                http="127.0.0.1:0",
                statedir=tmp_path / "bar",
                sign_key=str(tmp_path / "bar.pem"),
            )
            bar = Publisher("bar", sample_root, settings).start()
            try:
                wait_for(lambda: sub.reader.roots().get("bar", {}).get("online"), "root bar online")
            finally:
                bar.stop()
            # The publisher's signed statuses are still believed.
            pub.stop()
            wait_for(lambda: not sub.reader.roots()["foo"]["online"], "root foo offline")
        finally:
            sub.stop()
    finally:
        pub.stop()


def _flood(broker, tmp_path, url: str) -> None:
    def nodes() -> dict[str, dict]:
        return {n["id"]: n for n in requests.get(url, timeout=5).json()}

    wait_for(lambda: {"foo", "sub-test"} <= set(nodes()), "the two nodes")
    forger = signing.generate(tmp_path / "forger.pem")
    with rogue_client(broker) as rogue:
        huge = node_topic(PREFIX, "subscriber", "huge")
        status = {"schema": 1, "status": "online", "url": "http://huge.example:1", "pad": ""}
        status["pad"] = "y" * (MAX_STATUS_PAYLOAD - len(json.dumps(status)) + 1)
        publish(rogue, huge, json.dumps(status))
        for i in range(150):
            topic = node_topic(PREFIX, "subscriber", f"flood-{i}")
            publish(rogue, topic, json.dumps({**status, "url": f"http://x{i}.example:1", "pad": "y" * 2000}))
            topic = node_topic(PREFIX, "publisher", f"evil-{i}")
            signed = forger.sign(topic, {"schema": 1, "status": "lost", "session": 1, "pad": "y" * 2000})
            publish(rogue, topic, json.dumps(signed))
        # A clear frees the place of an unsigned status, and of one signed by a stranger.
        publish(rogue, node_topic(PREFIX, "subscriber", "flood-0"), b"")
        publish(rogue, node_topic(PREFIX, "publisher", "evil-0"), b"")
        for name in ("late-1", "late-2"):
            publish(rogue, node_topic(PREFIX, "subscriber", name), json.dumps({**status, "pad": 0}))
    # Messages of one client are handled in order: once the last one is in, so are the others.
    shown = wait_for(lambda: "late-2" in nodes() and nodes(), "the last status")
    assert len(shown) <= 40 and {"late-1", "late-2"} <= set(shown)
    assert shown["foo"]["status"] == "online" and shown["foo"]["key"] is not None
    assert shown["sub-test"]["status"] == "online" and "summary" in shown["sub-test"]
    assert "huge" not in shown and "flood-0" not in shown and "evil-0" not in shown
    assert not any("pad" in n for n in shown.values())


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


@contextmanager
def two_statuses(broker) -> Iterator[tuple[Node, list[bytes], bytes, bytes]]:
    """Run a node that published two statuses, both back from the broker: yield it,
    the statuses it is sent on its topic (in order), the earlier and the later."""
    seen: list[bytes] = []
    topic = node_topic(PREFIX, "subscriber", "own")

    def record(message_topic: str, payload: bytes) -> None:
        if message_topic == topic:
            seen.append(payload)

    s = config.node_settings({}, "subscriber", broker=broker.url)
    node = Node.for_node("subscriber", "own", s, "http://127.0.0.1:9", on_message=record)
    try:
        node.start()
        wait_for(lambda: node._unechoed == [node._current] and node._current in seen, "the first status back")
        earlier = node._current
        node.set_summary({"cache_bytes": 1})
        wait_for(
            lambda: node._unechoed == [node._current] and node._current in seen, "the second status back"
        )
        yield node, seen, earlier, node._current
    finally:
        node.stop()


def held(broker, topic: str) -> bytes:
    """Return the message the broker retains on `topic`, as a client subscribing gets it."""
    got: queue.Queue[bytes] = queue.Queue()

    def on_message(client, userdata, message) -> None:
        # amqtt sends a client that connects the retained messages of others' subscriptions.
        if message.topic == topic:
            got.put(message.payload)

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="reader", protocol=paho.MQTTv311)
    client.on_message = on_message
    client.on_connect = lambda client, *_: client.subscribe(topic)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        return got.get(timeout=DEADLINE)
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_late_copy_of_its_own_earlier_status_is_not_put_right(broker, caplog):
    """amqtt may send a node its earlier status after a later one (a live copy after
    the retained copy of a later one, sent to a subscription made meanwhile): the
    broker holds the later one, and the node published its status again for
    nothing. It asks the broker which one it holds instead."""
    with two_statuses(broker) as (node, seen, earlier, later), rogue_client(broker) as rogue:
        sent = len(seen)
        # A copy of the earlier status as the node gets it late: live, not retained.
        rogue.publish(node.status_topic, earlier, qos=1).wait_for_publish(10)

        def answered() -> list[bytes]:
            late = seen[sent:]
            return earlier in late and late[late.index(earlier) + 1 :]

        # What follows the late copy: the broker's retained copy, asked for.
        assert wait_for(answered, "what follows the late copy")[0] == later, (
            "the node published its status again"
        )
        assert node._current == later
        assert held(broker, node.status_topic) == later
    assert "announcing it again" not in caplog.text


def test_an_earlier_status_of_its_own_replayed_is_put_right(broker, caplog):
    """What the node guards against: anyone may publish its earlier status again,
    retained, to have the broker hold it (an older summary, or an "online" naming
    the last will of an earlier connection); the node puts its own back."""
    with two_statuses(broker) as (node, seen, earlier, later), rogue_client(broker) as rogue:
        publish(rogue, node.status_topic, earlier)
        wait_for(lambda: "announcing it again" in caplog.text, "the status put back")
        wait_for(lambda: node._unechoed == [node._current] != [later], "the status put back, back")
        assert held(broker, node.status_topic) == node._current


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
