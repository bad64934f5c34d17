"""Signed announcements and trust: what a stranger on the broker can no longer do."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import resource
import signal
import stat
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import blosc2
import numpy as np
import paho.mqtt.client as paho
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask, Response, jsonify, request
from paho.mqtt.enums import CallbackAPIVersion

from catmqtt import config, signing, storage
from catmqtt.errors import BadRequest, ConfigError
from catmqtt.schema import parse_public_key
from catmqtt.subscriber.cache import Cache
from catmqtt.subscriber.trust import Trust
from catmqtt.web import Server
from catmqtt.wire import DIGEST, ETAG

from conftest import DEADLINE, catmqtt_cmd, publish, rogue_client, run_cli, start_publisher, wait_for

ROOT = "catmqtt/v1/roots/foo"
DATASET = f"{ROOT}/ds/ds-1d.b2nd"


# Keys and signatures


def test_a_signature_covers_the_topic_and_every_field(tmp_path):
    signer = signing.generate(tmp_path / "k.pem")
    other = signing.generate(tmp_path / "other.pem")
    signed = signer.sign(ROOT, {"schema": 1, "name": "foo", "url": "http://a:1"})
    assert signing.verify(ROOT, signed) == signer.public
    # Through JSON and back, as it crosses the broker.
    assert signing.verify(ROOT, json.loads(json.dumps(signed))) == signer.public
    assert signing.verify(ROOT, {"schema": 1, "name": "foo"}) is None
    forgeries = [
        ("catmqtt/v1/roots/bar", signed),
        (ROOT, {**signed, "url": "http://evil:1"}),
        (ROOT, {**signed, "seq": signed["seq"] + 1}),
        (ROOT, {**signed, "key": other.public}),
        (ROOT, {k: v for k, v in signed.items() if k != "sig"}),
        (ROOT, {**signed, "sig": "not base64!"}),
        (ROOT, {**signed, "key": "ed25519:short"}),
        (ROOT, {**signed, "seq": "1"}),
    ]
    for topic, obj in forgeries:
        with pytest.raises(BadRequest):
            signing.verify(topic, obj)


def signed_with_seq(key: Ed25519PrivateKey, topic: str, obj: dict, seq: int) -> dict:
    """Return `obj` signed by `key` for `topic` with sequence number `seq`."""
    body = {**obj, "key": signing.Signer(key).public, "seq": seq}
    return {**body, "sig": base64.b64encode(key.sign(signing.canonical(topic, body))).decode()}


def test_a_sequence_number_fits_64_bits():
    key = Ed25519PrivateKey.generate()
    public = signing.Signer(key).public
    for seq, fits in [(0, True), ((1 << 63) - 1, True), (1 << 63, False), (10**19, False)]:
        signed = signed_with_seq(key, ROOT, {"schema": 1, "name": "foo"}, seq)
        if fits:
            assert signing.verify(ROOT, signed) == public
        else:
            with pytest.raises(BadRequest, match="without a valid 'seq'"):
                signing.verify(ROOT, signed)


def test_sequence_numbers_only_grow(tmp_path):
    signer = signing.generate(tmp_path / "k.pem")
    seqs = [signer.sign(ROOT, {})["seq"] for _ in range(100)]
    assert seqs == sorted(set(seqs))
    # A restarted publisher (a new Signer of the same key) goes on above.
    assert signing.load(tmp_path / "k.pem").sign(ROOT, {})["seq"] > seqs[-1]


def test_keygen_command(tmp_path):
    result = run_cli("keygen", tmp_path / "k.pem")
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert parse_public_key(key) == key and result.stdout.count("\n") == 1
    assert stat.S_IMODE(os.stat(tmp_path / "k.pem").st_mode) == 0o600
    assert signing.load(tmp_path / "k.pem").public == key
    again = run_cli("keygen", tmp_path / "k.pem")
    assert again.returncode == 1 and again.stderr.startswith("Error: ") and "exists already" in again.stderr
    assert signing.load(tmp_path / "k.pem").public == key
    (tmp_path / "junk.pem").write_text("not a key")
    (tmp_path / "root").mkdir()
    bad = run_cli(
        "pub", "foo", tmp_path / "root", "--sign-key", tmp_path / "junk.pem", "--http", "127.0.0.1:0",
        cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "not an unencrypted PEM" in bad.stderr
    # Refused before anything was made: no state directory (./_catmqtt/publisher).
    assert not (tmp_path / "_catmqtt").exists()


def test_keygen_writes_a_whole_key_or_nothing(tmp_path):
    """A write that fails (here: a file size limit) leaves no file, empty or half written,
    that would be taken for a key and keep the next keygen from writing one."""

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    path = tmp_path / "keys" / "k.pem"
    path.parent.mkdir()
    result = subprocess.run(
        catmqtt_cmd("keygen", path), capture_output=True, text=True, timeout=60, preexec_fn=small_files
    )
    assert result.returncode == 1 and result.stderr == f"Error: cannot write {path}: File too large\n"
    assert list(path.parent.iterdir()) == []
    assert run_cli("keygen", path).returncode == 0
    assert [p.name for p in path.parent.iterdir()] == ["k.pem"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


KEY_A = "ed25519:" + "A" * 43 + "="
KEY_B = "ed25519:" + "B" * 43 + "="


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ([], None),
        (KEY_A, {"*": [KEY_A]}),
        ([KEY_A, KEY_B], {"*": [KEY_A, KEY_B]}),
        ({"foo": [KEY_A], "*": KEY_B}, {"foo": [KEY_A], "*": [KEY_B]}),
    ],
)
def test_trust_settings(value, expected):
    assert config.parse_trust(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ed25519:abc", "invalid public key"),
        (["ssh-ed25519 AAAA"], "invalid public key"),
        (5, "a list of keys or a map"),
        ({"foo": []}, "must map to a list of keys"),
        ({"foo": {"a": 1}}, "must map to a list of keys"),
        ({"../x": [KEY_A]}, "invalid root name"),
    ],
)
def test_bad_trust_settings(value, message):
    with pytest.raises(ConfigError, match=message):
        config.parse_trust(value)


def test_trust_on_first_use_then_only_that_key(tmp_path):
    a, b = signing.generate(tmp_path / "a.pem"), signing.generate(tmp_path / "b.pem")
    cache = Cache.open(tmp_path / "state")
    try:
        trust = Trust(None, cache.catalogue)
        unsigned = {"schema": 1, "name": "foo"}
        # Neither a clear nor an announcement that failed other checks (pin=False) pins.
        assert trust.check(ROOT, "foo", None, None, pin=False) is None
        assert trust.check(ROOT, "foo", b.sign(ROOT, unsigned), None, pin=False) == b.public
        assert cache.catalogue.first_key("foo") is None
        first = a.sign(ROOT, unsigned)
        assert trust.check(ROOT, "foo", first, None, pin=True) == a.public
        assert cache.catalogue.first_key("foo") == a.public
        for refused, message in [
            (unsigned, "unsigned, but root 'foo' was first announced under"),
            (b.sign(ROOT, unsigned), re.escape(f"signed by {b.public}")),
            (None, "bare clear"),
        ]:
            with pytest.raises(BadRequest, match=message):
                trust.check(ROOT, "foo", refused, first, pin=True)
        newer = a.sign(ROOT, unsigned)
        assert trust.check(ROOT, "foo", newer, first, pin=True) == a.public
        with pytest.raises(BadRequest, match="a replay"):
            trust.check(ROOT, "foo", first, None, pin=True)
        # The same announcement again (a retained copy replayed on reconnect) is fine.
        assert trust.check(ROOT, "foo", newer, newer, pin=True) == a.public
        # Configured keys win over the pinned one.
        configured = Trust({"foo": [b.public], "*": [a.public]}, cache.catalogue)
        assert configured.check(ROOT, "foo", b.sign(ROOT, unsigned), None, pin=True) == b.public
        with pytest.raises(BadRequest, match="subscriber.trust accepts root 'foo' only under"):
            configured.check(ROOT, "foo", a.sign(ROOT, unsigned), None, pin=True)
        bar = "catmqtt/v1/roots/bar"
        assert configured.check(bar, "bar", a.sign(bar, unsigned), None, pin=True) == a.public
        with pytest.raises(BadRequest, match="unsigned"):
            configured.check(bar, "bar", unsigned, None, pin=True)
        # A root first announced unsigned stays so, even once cleared and forgotten.
        assert trust.check(bar, "bar", unsigned, None, pin=True) is None
        assert trust.check(bar, "bar", None, unsigned, pin=False) is None
        stranger = signed_with_seq(Ed25519PrivateKey.generate(), bar, unsigned, (1 << 63) - 1)
        assert trust.check(bar, "bar", stranger, None, pin=True) == stranger["key"]
        assert cache.catalogue.first_key("bar") == "" and trust.keys("bar") is None
        # A stranger's high sequence number does not make another key's announcements replays.
        assert trust.check(bar, "bar", a.sign(bar, unsigned), stranger, pin=True) == a.public
    finally:
        cache.close()


def test_a_version_is_its_etag_and_its_manifest(tmp_path):
    """Chunks checked against one manifest are not served under another, even with the same etag."""
    arr = blosc2.asarray(np.arange(100), chunks=(10,), blocks=(5,))
    data = arr.schunk.get_chunk(0)
    meta = {**storage.describe(arr, "x.b2nd", "e1"), "manifest": "m1"}
    cache = Cache.open(tmp_path / "state")
    try:
        cache.set_dataset("foo", "x.b2nd", meta)
        assert cache.store_chunk("foo", "x.b2nd", meta, 0, data, storage.chunk_digest(data), "http://x")
        assert cache.cached_chunks("foo", "x.b2nd", meta, [0]) == {0}
        other = {**meta, "manifest": "m2"}
        cache.set_dataset("foo", "x.b2nd", other)
        assert cache.cached_chunks("foo", "x.b2nd", other, [0]) == set()
        # A chunk fetched for the version before is not stored.
        assert not cache.store_chunk("foo", "x.b2nd", meta, 0, data, storage.chunk_digest(data), "http://x")
    finally:
        cache.close()


# Real processes against a rogue MQTT client


@contextmanager
def retained(broker, topic_filter: str, history: list[bytes] | None = None) -> Iterator[dict[str, bytes]]:
    """The retained and live messages of `topic_filter`, as a watcher on the broker sees
    them: the last of each topic, and every one in `history` if given."""
    seen: dict[str, bytes] = {}
    lock = threading.Lock()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="watcher", protocol=paho.MQTTv311)

    def on_message(client, userdata, message):
        with lock:
            seen[message.topic] = message.payload
            if history is not None:
                history.append(message.payload)

    subscribed = threading.Event()
    client.on_message = on_message
    client.on_connect = lambda client, *_: client.subscribe(topic_filter)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        # Subscribed before anything is published: a topic published and cleared before
        # would never be seen cleared.
        wait_for(subscribed.is_set, f"the watcher of {topic_filter} subscribed")
        yield seen
    finally:
        client.loop_stop()
        client.disconnect()


def signed_by(payload: bytes, topic: str) -> str | None:
    try:
        return signing.verify(topic, json.loads(payload)) if payload else None
    except (ValueError, BadRequest):
        return None


def keygen(tmp_path, name: str) -> tuple[str, str]:
    result = run_cli("keygen", tmp_path / name)
    assert result.returncode == 0, result.stderr
    return str(tmp_path / name), result.stdout.strip()


def signed_foo(d, root_dir, tmp_path, *, trust: bool = True) -> tuple[str, str]:
    """Publish `root_dir` as foo signed with a new key, start a subscriber
    (trusting that key, or on first use), wait for the root; return the key
    and the subscriber's URL."""
    keyfile, key = keygen(tmp_path, "foo.pem")
    d.start_pub("foo", root_dir, "--sign-key", keyfile)
    sub_url = d.start_sub("sub", "--trust", key) if trust else d.start_sub()
    d.wait_root("foo")
    return key, sub_url


def test_a_rogue_client_cannot_change_list_or_hide_a_signed_root(deployment, root_dir, tmp_path):
    d = deployment
    key, sub_url = signed_foo(d, root_dir, tmp_path)
    rogue_key = signing.generate(tmp_path / "rogue.pem")
    assert d.cli("subscribe", "foo").stdout == "Ok\n"
    genuine = requests.get(f"{sub_url}/api/roots", timeout=5).json()["foo"]
    evil_url = "http://127.0.0.1:9"
    root = {"schema": 1, "name": "foo", "url": evil_url, "publisher": "foo", "datasets": 1, "etag": "x"}
    with retained(d.broker, f"{ROOT}/#") as seen, rogue_client(d.broker) as rogue:
        wait_for(lambda: signed_by(seen.get(DATASET, b""), DATASET) == key, "the signed announcements")
        old = seen[DATASET]
        publish(rogue, ROOT, json.dumps(root))
        publish(rogue, ROOT, json.dumps(rogue_key.sign(ROOT, root)))
        publish(rogue, ROOT, b"")
        publish(rogue, DATASET, b"")
        publish(rogue, "catmqtt/v1/nodes/publisher/foo", json.dumps({"schema": 1, "status": "lost"}))
        lost = rogue_key.sign(
            "catmqtt/v1/nodes/publisher/foo", {"schema": 1, "status": "lost", "session": 1e15}
        )
        publish(rogue, "catmqtt/v1/nodes/publisher/foo", json.dumps(lost))
        publish(rogue, "catmqtt/v1/roots/evil", json.dumps({**root, "name": "evil"}))
        # The publisher puts its own announcements back, as the broker keeps them.
        wait_for(lambda: signed_by(seen.get(ROOT, b""), ROOT) == key, "the root announcement restored")
        wait_for(lambda: signed_by(seen.get(DATASET, b""), DATASET) == key, "the dataset restored")
        wait_for(lambda: d.procs["sub"].output.count("ignoring the message") >= 5, "the subscriber to refuse")

        # A replay of an earlier signed announcement, after the dataset changed.
        data = np.arange(20, 30)
        blosc2.asarray(data, urlpath=str(root_dir / "ds-1d.b2nd"), mode="w")
        wait_for(lambda: seen[DATASET] != old and b'"shape":[10]' in seen[DATASET], "the change announced")
        wait_for(lambda: d.cli("show", "foo/ds-1d.b2nd").stdout == f"{data}\n", "the change seen")
        publish(rogue, DATASET, old)
        wait_for(lambda: "a replay" in d.procs["sub"].output, "the replay refused")

    roots = requests.get(f"{sub_url}/api/roots", timeout=5).json()
    assert roots == {"foo": genuine} and genuine["key"] == key and genuine["online"]
    assert d.cli("show", "foo/ds-1d.b2nd").stdout == f"{data}\n"
    assert "foo/ds-1d.b2nd" in d.cli("list", "foo").stdout
    log = d.procs["sub"].output
    assert "unsigned, but subscriber.trust accepts root 'foo' only under" in log
    assert f"signed by {rogue_key.public}" in log
    assert "a bare clear of signed root 'foo'" in log
    assert "Traceback" not in log + d.procs["pub-foo"].output


def test_trust_on_first_use_outlives_a_restart(deployment, root_dir, tmp_path):
    d = deployment
    key, sub_url = signed_foo(d, root_dir, tmp_path, trust=False)
    rogue_key = signing.generate(tmp_path / "rogue.pem")
    assert d.cli("subscribe", "foo").stdout == "Ok\n"
    url = requests.get(f"{sub_url}/api/roots", timeout=5).json()["foo"]["url"]
    assert f"trusting key {key} for root 'foo'" in d.procs["sub"].output
    assert d.cli("show", "foo/ds-1d.b2nd[3:6]").stdout == "[3 4 5]\n"
    # With the publisher gone, nobody restores what the rogue announces.
    d.stop("pub-foo")
    d.stop("sub")
    with rogue_client(d.broker) as rogue:
        root = {"schema": 1, "name": "foo", "url": "http://127.0.0.1:9", "publisher": "foo", "datasets": 1}
        publish(rogue, ROOT, json.dumps(rogue_key.sign(ROOT, {**root, "etag": "x"})))
    sub_url = d.start_sub()
    wait_for(lambda: "first announced under" in d.procs["sub"].output, "the rogue's announcement refused")
    assert requests.get(f"{sub_url}/api/roots", timeout=5).json()["foo"]["url"] == url
    assert d.cli("show", "foo/ds-1d.b2nd[3:6]").stdout == "[3 4 5]\n"


def lying_publisher(values: np.ndarray, etag: str) -> tuple[Flask, list[str]]:
    """A publisher's HTTP API serving `values` (as ds-1d.b2nd's chunks) under `etag`, and its digests."""
    arr = blosc2.asarray(values, chunks=(100,), blocks=(10,))
    digests = [storage.chunk_digest(arr.schunk.get_chunk(n)) for n in range(arr.schunk.nchunks)]
    app = Flask("liar")

    @app.get("/api/manifest/<path:path>")
    def manifest(path: str):
        return jsonify({"path": path, "etag": etag, "digests": digests})

    @app.get("/api/chunk/<path:path>")
    def chunk(path: str):
        n = int(request.args["nchunk"])
        headers = {ETAG: etag, DIGEST: digests[n]}
        return Response(arr.schunk.get_chunk(n), mimetype="application/octet-stream", headers=headers)

    return app, digests


def test_an_impostor_cannot_poison_the_cache(deployment, root_dir, tmp_path):
    """Unsigned roots: an impostor's chunks are refused unless its announcement also
    names its own manifest, and then they do not outlive the genuine announcement."""
    d = deployment
    d.start_pub("foo", root_dir)
    sub_url = d.start_sub()
    d.wait_root("foo")
    assert d.cli("subscribe", "foo").stdout == "Ok\n"
    d.stop("pub-foo")

    meta = requests.get(f"{sub_url}/api/info/foo/ds-1d.b2nd", timeout=5).json()
    liar_app, digests = lying_publisher(np.full(1000, 666), meta["etag"])
    # Its own manifest, under the same etag as the genuine dataset: the hardest case.
    liar_meta = {**meta, "manifest": storage.manifest_digest(digests)}
    liar = Server(liar_app, "127.0.0.1", 0, 4).start()
    try:
        with retained(d.broker, ROOT) as seen, rogue_client(d.broker) as rogue:
            wait_for(lambda: ROOT in seen, "the root announcement")
            root = json.loads(seen[ROOT])
            publish(rogue, ROOT, json.dumps({**root, "url": liar.url}))
            wait_for(
                lambda: requests.get(f"{sub_url}/api/roots", timeout=5).json()["foo"]["url"] == liar.url,
                "the impostor's URL",
            )
            response = requests.get(f"{sub_url}/api/fetch/foo/ds-1d.b2nd?slice=0:5", timeout=30)
            assert response.status_code == 502, response.text
            assert "does not vouch for" in response.json()["error"]
            # Its own metadata too: then its values are served (nothing can tell them
            # apart without signatures) ...
            publish(rogue, DATASET, json.dumps(liar_meta))
            wait_for(
                lambda: d.cli("show", "foo/ds-1d.b2nd[0:5]").stdout == "[666 666 666 666 666]\n",
                "the impostor's values",
            )
        # ... but not once the genuine announcements are back, nor after a restart.
        d.start_pub("foo", root_dir)
        wait_for(lambda: d.cli("show", "foo/ds-1d.b2nd[0:5]").stdout == "[0 1 2 3 4]\n", "the genuine values")
        d.stop("sub")
        d.start_sub()
        d.wait_root("foo")
        assert d.cli("show", "foo/ds-1d.b2nd[0:5]").stdout == "[0 1 2 3 4]\n"
    finally:
        liar.stop()


def test_a_node_puts_its_status_back(deployment, root_dir):
    """Unsigned, a fake 'lost' is believed, but only until the publisher answers it."""
    d = deployment
    d.start_pub("foo", root_dir)
    d.start_sub()
    d.wait_root("foo")
    status = "catmqtt/v1/nodes/publisher/foo"
    with retained(d.broker, status) as seen, rogue_client(d.broker) as rogue:
        wait_for(lambda: b'"online"' in seen.get(status, b""), "the publisher's status")
        for _ in range(3):
            publish(rogue, status, json.dumps({"schema": 1, "status": "lost"}))
        wait_for(lambda: b'"online"' in seen[status], "the status put back")
    d.wait_root("foo")
    assert "someone else changed or cleared catmqtt/v1/nodes/publisher/foo" in d.procs["pub-foo"].output


def test_a_manifest_that_is_no_digest_is_refused(deployment, root_dir):
    """A list or a map in an announcement's 'manifest' gave a 500 (unhashable) at the next fetch."""
    d = deployment
    d.serve_foo(root_dir)
    sub_url = d.url("sub")
    assert d.cli("show", "foo/ds-1d.b2nd[0:5]").stdout == "[0 1 2 3 4]\n"
    meta = requests.get(f"{sub_url}/api/info/foo/ds-1d.b2nd", timeout=5).json()
    # With its publisher gone, nobody restores what the rogue announces.
    d.stop("pub-foo")
    with rogue_client(d.broker) as rogue:
        publish(rogue, DATASET, json.dumps({"schema": 1, **meta, "manifest": [meta["manifest"]]}))
    wait_for(lambda: "field 'manifest' is missing or not str" in d.procs["sub"].output, "the refusal")
    response = requests.get(f"{sub_url}/api/fetch/foo/ds-1d.b2nd?slice=0:5", timeout=30)
    assert response.status_code == 200, response.text
    assert "Traceback" not in d.procs["sub"].output


def test_junk_numbers_and_a_replayed_status_are_refused(deployment, root_dir, tmp_path):
    d = deployment
    key, sub_url = signed_foo(d, root_dir, tmp_path)
    rogue_key = signing.generate(tmp_path / "rogue.pem")
    status = "catmqtt/v1/nodes/publisher/foo"
    with retained(d.broker, status) as seen, rogue_client(d.broker) as rogue:
        wait_for(lambda: b'"online"' in seen.get(status, b""), "the publisher's status")
        online = seen[status]
        # Past Python's 4300 digits int() raises ValueError (a traceback a message);
        # a session that is no number broke the comparison with the last one.
        publish(rogue, ROOT, b'{"schema": 1, "datasets": 1' + b"0" * 5000 + b"}")
        rogue_status = "catmqtt/v1/nodes/publisher/rogue"
        for session in (1, "x", 1 << 64):
            fields = {"schema": 1, "status": "offline", "session": session}
            publish(rogue, rogue_status, json.dumps(rogue_key.sign(rogue_status, fields)))
        # A clean stop ends the session: its last "online", replayed, is refused.
        d.stop("pub-foo")
        d.wait_root("foo", online=False)
        publish(rogue, status, online)
        wait_for(lambda: "older than its last: a replay" in d.procs["sub"].output, "the replay refused")
    assert not requests.get(f"{sub_url}/api/roots", timeout=5).json()["foo"]["online"]
    log = d.procs["sub"].output
    assert "an integer of more than 20 digits" in log
    assert "field 'session' is missing or not int" in log and "session 18446744073709551616 is over" in log
    assert "Traceback" not in log


def test_trust_on_first_use_pins_only_what_it_believes(deployment, root_dir, tmp_path):
    """A root known unsigned is not pinned to a stranger's key after a bare clear made
    it forgotten, and a signed announcement refused for its fields pins nothing."""
    d = deployment
    rogue_key = signing.generate(tmp_path / "rogue.pem")
    d.start_pub("foo", root_dir)
    sub_url = d.start_sub()
    d.wait_root("foo")
    url = requests.get(f"{sub_url}/api/roots", timeout=5).json()["foo"]["url"]
    # With its publisher gone, nobody restores what the rogue announces.
    d.stop("pub-foo")
    evil = {"schema": 1, "name": "foo", "url": "http://127.0.0.1:9", "publisher": "foo", "datasets": 1}
    bar = "catmqtt/v1/roots/bar"
    with rogue_client(d.broker) as rogue:
        publish(rogue, ROOT, b"")
        publish(rogue, ROOT, json.dumps(rogue_key.sign(ROOT, {**evil, "etag": "x"})))
        publish(rogue, bar, json.dumps(rogue_key.sign(bar, {**evil, "name": "bar", "url": "ftp://x"})))
    wait_for(lambda: "field 'url' is not an http(s) URL" in d.procs["sub"].output, "the junk refused")
    d.start_pub("foo", root_dir)
    d.start_pub("bar", root_dir)
    d.wait_root("bar")
    wait_for(lambda: requests.get(f"{sub_url}/api/roots", timeout=5).json()["foo"]["url"] == url, "foo back")
    assert "trusting key" not in d.procs["sub"].output


def test_a_replayed_tombstone_is_put_right(deployment, root_dir, tmp_path):
    """An old signed tombstone of a dataset that came back hid it: its publisher took the
    tombstone for its own and left it, and subscribers that came later believed it."""
    d = deployment
    key, _ = signed_foo(d, root_dir, tmp_path)
    assert d.cli("subscribe", "foo").stdout == "Ok\n"
    history: list[bytes] = []
    with retained(d.broker, DATASET, history) as seen, rogue_client(d.broker) as rogue:
        wait_for(lambda: signed_by(seen.get(DATASET, b""), DATASET) == key, "the dataset announced")
        (root_dir / "ds-1d.b2nd").rename(tmp_path / "away.b2nd")
        wait_for(lambda: seen[DATASET] == b"", "the dataset withdrawn")
        tombstone = next(p for p in history if b'"deleted":true' in p)
        (tmp_path / "away.b2nd").rename(root_dir / "ds-1d.b2nd")
        wait_for(lambda: "foo/ds-1d.b2nd" in d.cli("list", "foo").stdout, "the dataset back")
        publish(rogue, DATASET, tombstone)
        wait_for(lambda: "a replay" in d.procs["sub"].output, "the replay refused")
        wait_for(lambda: seen[DATASET] and b'"deleted"' not in seen[DATASET], "the announcement restored")
        assert signed_by(seen[DATASET], DATASET) == key
    assert "foo/ds-1d.b2nd" in d.cli("list", "foo").stdout
    # A subscriber that comes later sees the dataset.
    d.start_sub("sub2", "--trust", key)
    d.wait_root("foo", key="sub2")
    assert d.cli("subscribe", "foo", key="sub2").stdout == "Ok\n"
    assert "foo/ds-1d.b2nd" in d.cli("list", "foo", key="sub2").stdout


def test_chunks_no_manifest_vouches_for_are_kept_only_from_their_roots_url(deployment, tmp_path):
    """HDF5 roots keep no manifests: a chunk from an impostor's URL, sent however late,
    is not cached once the genuine announcement is back, nor served after a restart."""
    sample = tmp_path / "sample.h5"
    assert run_cli("sample", "--h5", sample).returncode == 0
    d = deployment
    d.start_pub("foo", sample)
    sub_url = d.start_sub()
    d.wait_root("foo")
    assert d.cli("subscribe", "foo").stdout == "Ok\n"
    meta = requests.get(f"{sub_url}/api/info/foo/contiguous-1d.b2nd", timeout=5).json()
    assert "manifest" not in meta

    def served_from() -> str:
        return requests.get(f"{sub_url}/api/roots", timeout=5).json()["foo"]["url"]

    url = served_from()
    d.stop("pub-foo")
    values = np.full(meta["shape"], 666, dtype=meta["dtype"])
    arr = blosc2.asarray(values, chunks=tuple(meta["chunks"]), blocks=tuple(meta["blocks"]))
    asked, answer = threading.Event(), threading.Event()
    app = Flask("late-liar")

    @app.get("/api/chunk/<path:path>")
    def chunk(path: str):
        asked.set()
        answer.wait(DEADLINE)
        data = arr.schunk.get_chunk(int(request.args["nchunk"]))
        headers = {ETAG: meta["etag"], DIGEST: storage.chunk_digest(data)}
        return Response(data, mimetype="application/octet-stream", headers=headers)

    liar = Server(app, "127.0.0.1", 0, 4).start()
    try:
        with retained(d.broker, ROOT) as seen, rogue_client(d.broker) as rogue:
            wait_for(lambda: ROOT in seen, "the root announcement")
            publish(rogue, ROOT, json.dumps({**json.loads(seen[ROOT]), "url": liar.url}))
        wait_for(lambda: served_from() == liar.url, "the impostor's URL")
        with ThreadPoolExecutor(1) as pool:
            fetch = f"{sub_url}/api/fetch/foo/contiguous-1d.b2nd?slice=0:5"
            impostor = pool.submit(requests.get, fetch, timeout=DEADLINE * 2)
            wait_for(asked.is_set, "the impostor asked for a chunk")
            d.start_pub("foo", sample)
            moved_back = f"root 'foo' is now served from {url}"
            wait_for(lambda: moved_back in d.procs["sub"].output, "the genuine announcement back")
            answer.set()
            # Asked while the impostor's URL was announced: its values.
            assert impostor.result().status_code == 200
        assert d.cli("show", "foo/contiguous-1d.b2nd[0:5]").stdout == "[0 1 2 3 4]\n"
        d.stop("sub")
        d.start_sub()
        d.wait_root("foo")
        assert d.cli("show", "foo/contiguous-1d.b2nd[0:5]").stdout == "[0 1 2 3 4]\n"
    finally:
        liar.stop()


def test_a_last_will_of_an_earlier_connection_is_refused(deployment, root_dir, tmp_path):
    """Once the broker sent a publisher's last will, anyone could replay it to mark the
    publisher lost whenever they liked: each connection now has a will of its own."""
    d = deployment
    if d.broker.kind == "amqtt":
        pytest.skip("amqtt sends no last will when another client takes over a client id")
    key, _ = signed_foo(d, root_dir, tmp_path)
    status = "catmqtt/v1/nodes/publisher/foo"
    history: list[bytes] = []
    with retained(d.broker, status, history) as seen:
        wait_for(lambda: b'"online"' in seen.get(status, b""), "the publisher's status")
        # Taking over the publisher's client id makes the broker send its will, for all to see.
        impostor = paho.Client(CallbackAPIVersion.VERSION2, client_id="catmqtt-publisher-foo")
        impostor.connect("127.0.0.1", d.broker.port)
        impostor.loop_start()
        try:
            wait_for(lambda: any(b'"lost"' in p for p in history), "the publisher's last will")
        finally:
            impostor.disconnect()
            impostor.loop_stop()
        will = next(p for p in history if b'"lost"' in p)
        assert signed_by(will, status) == key
        # The publisher is back, under a will of its new connection.
        wait_for(lambda: b'"online"' in history[-1] and will in history[:-1], "the publisher online again")
        d.wait_root("foo")
        with rogue_client(d.broker) as rogue:
            publish(rogue, status, will)
    refused = "the last will of an earlier connection of publisher 'foo': a replay"
    wait_for(lambda: refused in d.procs["sub"].output, "the replay refused")
    d.wait_root("foo")


def test_junk_on_the_broker_is_logged_a_few_lines_a_minute(deployment):
    d = deployment
    sub_url = d.start_sub()
    marker = {"schema": 1, "name": "marker", "url": "http://127.0.0.1:9", "publisher": "m", "datasets": 0}
    with rogue_client(d.broker) as rogue:
        for i in range(100):
            publish(rogue, f"catmqtt/v1/roots/junk{i}", b'{"schema": 1}')
        # Messages of one client are handled in order: once this one is in, so are the others.
        publish(rogue, "catmqtt/v1/roots/marker", json.dumps({**marker, "etag": "x"}))
    wait_for(lambda: "marker" in requests.get(f"{sub_url}/api/roots", timeout=5).json(), "the marker root")
    log = d.procs["sub"].output
    assert log.count("ignoring the message on 'catmqtt/v1/roots/junk") == 20
    assert "(more such lines within 60 s are counted, not written)" in log


def test_a_publisher_withdraws_junk_topics_and_forgets_them(broker, root_dir, tmp_path, caplog):
    """A stranger's junk on dataset topics of a root is withdrawn, logged a few lines a
    minute, and not kept: the publisher's memory no longer grows with every junk topic."""
    caplog.set_level(logging.INFO, logger="catmqtt.publisher")
    keyfile, _ = keygen(tmp_path, "foo.pem")
    pub = start_publisher(broker, tmp_path / "pub", root_dir, sign_key=keyfile)
    try:
        # Its root and its datasets.
        topics = len(pub.root.entries) + 1
        wait_for(lambda: len(pub.announcer._announced) == topics, "the publisher's announcements")
        junk = [f"{ROOT}/ds/junk{i}" for i in range(100)]
        with retained(broker, f"{ROOT}/ds/#") as seen, rogue_client(broker) as rogue:
            for topic in junk:
                publish(rogue, topic, b'{"schema": 1}')
            wait_for(lambda: all(seen.get(topic) == b"" for topic in junk), "the junk withdrawn")
        wait_for(
            lambda: len(pub.announcer._announced) == topics and not pub.announcer._tombstones,
            "the junk forgotten",
        )
    finally:
        pub.stop()
    withdrawals = [r for r in caplog.records if "withdrawing the announcement of junk" in r.getMessage()]
    assert len(withdrawals) == 20


def test_what_a_tombstone_withdrew_stays_withdrawn_after_a_restart(deployment, root_dir, tmp_path):
    d = deployment
    key, _ = signed_foo(d, root_dir, tmp_path)
    assert d.cli("subscribe", "foo").stdout == "Ok\n"
    with retained(d.broker, DATASET) as seen:
        wait_for(lambda: signed_by(seen.get(DATASET, b""), DATASET) == key, "the dataset announced")
        announcement = seen[DATASET]
        (root_dir / "ds-1d.b2nd").unlink()
        wait_for(lambda: seen[DATASET] == b"", "the dataset withdrawn")
    wait_for(lambda: "foo/ds-1d.b2nd" not in d.cli("list", "foo").stdout, "the dataset gone")
    # With its publisher gone, nobody withdraws it again.
    d.stop("pub-foo")
    d.stop("sub")
    d.start_sub("sub", "--trust", key)
    with rogue_client(d.broker) as rogue:
        publish(rogue, DATASET, announcement)
    wait_for(lambda: "a replay" in d.procs["sub"].output, "the replay refused")
    assert "foo/ds-1d.b2nd" not in d.cli("list", "foo").stdout
