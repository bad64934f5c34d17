"""This module republishes roots a subscriber follows (``subscriber.republish``,
``--republish ROOT[=ALIAS][@BROKER_URL]``): it announces each on a broker, its
own or another, as ALIAS with the subscriber as its publisher, and serves a
publisher's endpoints for it under ``/relay/<root>`` from the cache, fetching
what the cache lacks upstream (the ``relay`` blueprint).

What a relay announces is signed by its key and carries its ``origin``: the
topic and the payload its first publisher announced, verbatim, signature
included. Each dataset's metadata is the origin's; the root's announcement
is the origin's but for its name, URL, publisher and time. So etags and
manifests pass through unchanged: subscribers downstream keep chunk-level
change tracking, check every chunk against a manifest that the origin's
key vouches for, and can require that key (see `trust`). A relay of a relay
passes on the first origin.

A relay gives up a root (until it restarts, saying why once) that it would
announce over someone else: another root of that name on its own broker,
or the root's first publisher announcing it under that name where the
relay announces it (a loop of relays).

Threads: one worker (``relay``) makes every announcement, in the order
asked: all of a root on each connection to a broker (the node's MQTT thread
asks), and what each update the follower applies changed (its ``updates``
worker asks). Once all of a root is announced, the relay subscribes to its
topics, and withdraws the datasets the broker replays that it no longer
serves. It subscribes to a republished root once the root is known, which
waits for the broker to replay the root's datasets: never on the threads
that apply them. The MQTT threads of the relay's nodes call
`Announcer.message`, which takes the announcer's lock, and may give up a
root (`Relays._lock` guards those given up); HTTP threads call the views,
which only read.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Blueprint, current_app, jsonify, request, send_file

from .. import storage
from ..announcer import Announcer
from ..config import BrokerAddress, Republish
from ..errors import BadRequest, CatmqttError, NotFound
from ..mqtt import Node
from ..signing import Signer, verify
from ..topics import dataset_topic, root_topic
from ..web import OCTETS, arg_int, chunk_response
from ..wire import DIGEST, ETAG
from .answers import Answers
from .follower import Follower
from .reader import Reader
from .trust import RELAY_FIELDS, RELAY_ROOT_FIELDS

log = logging.getLogger(__name__)

PATH = "/relay"


class Relays:
    """The roots a subscriber republishes: one MQTT node a broker, signing with `signer`,
    and one announcer a root on it. `url` is the subscriber's own."""

    def __init__(
        self,
        entries: list[Republish],
        settings: dict[str, Any],
        node_id: str,
        url: str,
        follower: Follower,
        signer: Signer,
    ) -> None:
        self.entries = entries
        self.roots = frozenset(entry.root for entry in entries)
        self.prefix = settings["prefix"]
        self.own_broker = settings["broker"]
        self.node_id = node_id
        self.url = url
        self.follower = follower
        self.cache = follower.cache
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="relay")
        self._announcers: dict[Republish, Announcer] = {}
        self._nodes: list[Node] = []
        # One node a broker and account: the subscriber's own on its broker, those the
        # entries name elsewhere (never the subscriber's own credentials: no one else's business).
        brokers: dict[tuple[BrokerAddress, str | None, str | None], list[Republish]] = {}
        # Where each entry is announced: its own broker under another name (localhost
        # for 127.0.0.1) is its own broker, one connection (a node's client id is its own).
        self._targets = {
            entry: self.own_broker if _same_broker(entry.broker, self.own_broker) else entry.broker
            for entry in entries
        }
        for entry in entries:
            if self._targets[entry] == self.own_broker:
                account = (self.own_broker, settings["mqtt_user"], settings["mqtt_password"])
            else:
                account = (entry.broker, entry.user, entry.password)
            brokers.setdefault(account, []).append(entry)
        for (broker, user, password), group in brokers.items():
            node = Node(
                "publisher",
                node_id,
                broker,
                self.prefix,
                url,
                user=user,
                password=password,
                cafile=settings["cafile"],
                on_connect=self._connected(group),
                on_message=self._message(group),
                sign=signer.sign,
            )
            self._nodes.append(node)
            for entry in group:
                announcer = Announcer(self.prefix, entry.alias, signer, log)
                announcer.node = node
                self._announcers[entry] = announcer
        # The roots not known yet when asked to announce them, told once each.
        self._waiting: set[str] = set()
        # The entries given up, and why (see _give_up); under _lock.
        self._stopped: dict[Republish, str] = {}
        self._lock = threading.Lock()

    def start(self) -> Relays:
        self.follower.on_change.append(self._changed)
        self.follower.on_root.append(self._root_changed)
        for node in self._nodes:
            node.start()
        for entry in self.entries:
            where = "its own broker" if entry.broker is None else entry.broker.url
            log.info("republishing root %r as %r on %s", entry.root, entry.alias, where)
        return self

    def close(self) -> None:
        """Stop announcing, then leave the brokers ("offline")."""
        self._worker.shutdown(wait=True, cancel_futures=True)
        for node in self._nodes:
            node.stop()

    def _submit(self, entry: Republish, paths: list[str] | None) -> None:
        """Have the worker announce `entry`'s root after its datasets `paths` (see `_announce`)."""

        def run() -> None:
            try:
                self._announce(entry, paths)
            except CatmqttError as exc:
                # What a subscriber may meet (a full disk, a root gone meanwhile): the
                # next change or connection announces it again.
                log.warning("republishing root %r as %r failed: %s", entry.root, entry.alias, exc)
            except Exception:
                log.exception("error republishing root %r as %r", entry.root, entry.alias)

        try:
            self._worker.submit(run)
        except RuntimeError:
            # Closing: what is left to announce no longer matters.
            pass

    # On the MQTT threads of the relay's nodes, and on the follower's ``updates`` worker

    def _connected(self, group: list[Republish]) -> Callable[[], None]:
        def connected() -> None:
            for entry in group:
                self._submit(entry, None)

        return connected

    def _message(self, group: list[Republish]) -> Callable[[str, bytes], None]:
        def message(topic: str, payload: bytes) -> None:
            for entry in group:
                announcer = self._announcers[entry]
                if self._stopped_for(entry):
                    continue
                if topic == announcer.root_topic and payload and self._is_origin(entry, topic, payload):
                    self._give_up(
                        entry,
                        f"its first publisher announces it there under that name ({announcer.node.broker.url}"
                        " is where it comes from: this subscriber's own broker under another address, or"
                        " a loop of relays)",
                    )
                    continue
                announcer.message(topic, payload, lambda path, root=entry.root: self._has(root, path))

        return message

    def _is_origin(self, entry: Republish, topic: str, payload: bytes) -> bool:
        """Tell whether `payload` on `topic`, the root topic `entry` is announced on, is the
        announcement of the root's first publisher itself (signed by the origin's key,
        if signed), not a relay's."""
        try:
            info = self.follower.catalogue.root(entry.root)["info"]
            theirs = json.loads(payload)
            origin = _origin_of(root_topic(self.prefix, entry.root), info)["payload"]
            if not isinstance(theirs, dict) or "origin" in theirs:
                return False
            if origin.get("key") is not None:
                return verify(topic, theirs) == origin["key"]
        except (NotFound, ValueError, BadRequest):
            return False
        return theirs.get("url") == origin.get("url") and theirs.get("publisher") == origin.get("publisher")

    def _give_up(self, entry: Republish, why: str) -> None:
        """Stop republishing `entry` (until a restart), saying why once."""
        with self._lock:
            if entry in self._stopped:
                return
            self._stopped[entry] = why
        log.error("not republishing root %r as %r any more: %s", entry.root, entry.alias, why)

    def _stopped_for(self, entry: Republish) -> bool:
        with self._lock:
            return entry in self._stopped

    def _changed(self, root: str, path: str) -> None:
        for entry in self.entries:
            if entry.root == root:
                self._submit(entry, [path])

    def _root_changed(self, root: str) -> None:
        for entry in self.entries:
            if entry.root == root:
                self._submit(entry, [])

    def _has(self, root: str, path: str) -> bool:
        try:
            self.cache.dataset(root, path)
        except NotFound:
            return False
        return True

    # On the ``relay`` worker

    def _announce(self, entry: Republish, paths: list[str] | None) -> None:
        """Announce the root of `entry`, after its datasets `paths` (None: all of them,
        as after subscribing to the root, which is done first if need be)."""
        try:
            root = self.follower.catalogue.root(entry.root)
        except NotFound:
            if entry.root not in self._waiting:
                self._waiting.add(entry.root)
                log.info("root %r is not announced yet: it is republished once it is", entry.root)
            return
        if self._stopped_for(entry):
            return
        info = root["info"]
        if info["url"].startswith(f"{self.url}{PATH}/"):
            self._give_up(entry, "this subscriber is its publisher (a loop of relays)")
            return
        if self._targets[entry] == self.own_broker:
            try:
                theirs = self.follower.catalogue.root(entry.alias)["info"]["url"]
            except NotFound:
                theirs = None
            if theirs is not None and not theirs.startswith(f"{self.url}{PATH}/"):
                self._give_up(entry, f"root {entry.alias!r} is another on this broker (served from {theirs})")
                return
        if not root["subscribed"]:
            self.follower.subscribe(entry.root)
            paths = None
        announcer = self._announcers[entry]
        with announcer.lock:
            for path in self.cache.datasets(entry.root) if paths is None else paths:
                try:
                    meta = self.cache.dataset(entry.root, path)
                except NotFound:
                    announcer.withdraw(announcer.dataset_topic(path), {"path": path})
                    continue
                upstream = dataset_topic(self.prefix, entry.root, path)
                relayed = {k: v for k, v in meta.items() if k not in RELAY_FIELDS}
                announcer.announce(
                    announcer.dataset_topic(path), {**relayed, "origin": _origin_of(upstream, meta)}
                )
            relayed = {k: v for k, v in info.items() if k not in RELAY_ROOT_FIELDS}
            announcer.announce(
                announcer.root_topic,
                {
                    **relayed,
                    "name": entry.alias,
                    "url": f"{self.url}{PATH}/{entry.root}",
                    "publisher": self.node_id,
                    "time": time.time(),
                    "origin": _origin_of(root_topic(self.prefix, entry.root), info),
                },
            )
            if paths is None:
                # Now that all is announced, the broker's replay of our topics tells
                # what we announced before and no longer serve: it is withdrawn.
                announcer.subscribe()


def _same_broker(broker: BrokerAddress | None, own: BrokerAddress) -> bool:
    """Tell whether `broker` (None: the subscriber's own) is its `own` broker, by the
    addresses their names resolve to."""
    if broker is None or broker == own:
        return True
    if broker.port != own.port or broker.tls != own.tls:
        return False
    try:
        found = [
            {info[4][:2] for info in socket.getaddrinfo(b.host, b.port, type=socket.SOCK_STREAM)}
            for b in (broker, own)
        ]
    except OSError:
        return False
    return bool(found[0] & found[1])


def _origin_of(topic: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Return the origin of an announcement `obj` received on `topic`: its own, if it was relayed."""
    return obj.get("origin", {"topic": topic, "payload": obj})


# The publisher's endpoints, for the roots republished

bp = Blueprint("relay", __name__, url_prefix=f"{PATH}/<name>")


def _reader(name: str) -> Reader:
    relays: Relays | None = current_app.config["CATMQTT_RELAYS"]
    if relays is None or name not in relays.roots:
        raise NotFound(f"root {name[:100]!r} is not republished by this subscriber")
    return current_app.config["CATMQTT_READER"]


@bp.get("/api/list")
def list_datasets(name: str):
    return jsonify(_reader(name).list(name, None))


@bp.get("/api/info/<path:path>")
def info(name: str, path: str):
    meta = _reader(name).lookup(f"{name}/{path}").meta
    response = jsonify({k: v for k, v in meta.items() if k not in RELAY_FIELDS})
    response.set_etag(meta["etag"])
    return response.make_conditional(request)


@bp.get("/api/chunk/<path:path>")
def chunk(name: str, path: str):
    # The whole chunk, whatever blocks are asked for: a subscriber takes that too.
    data, etag = _reader(name).chunk(f"{name}/{path}", arg_int("nchunk"))
    return chunk_response(data, {ETAG: etag, DIGEST: storage.chunk_digest(data)})


@bp.get("/api/manifest/<path:path>")
def manifest(name: str, path: str):
    return jsonify(_reader(name).manifest(f"{name}/{path}"))


@bp.get("/api/download/<path:path>")
def download(name: str, path: str):
    reader = _reader(name)
    answers: Answers = current_app.config["CATMQTT_ANSWERS"]
    etag = reader.lookup(f"{name}/{path}").meta["etag"]
    file, filename = answers.download(f"{name}/{path}")
    return send_file(file, as_attachment=True, download_name=filename, mimetype=OCTETS, etag=etag)
