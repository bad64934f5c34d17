"""This module holds the publisher: it scans one root, announces it on MQTT
and serves the compressed bytes of its chunks over HTTP."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_file

from .. import fsutil, signing, storage
from ..blocks import block_parts, chunk_nbytes, format_parts
from ..errors import BadRequest
from ..mqtt import LogThrottle, Node
from ..signing import verify
from ..slices import parse_block_range
from ..topics import dataset_topic, parse_topic, root_topic
from ..watch import Watcher
from ..web import OCTETS, Server, arg_int, chunk_response, configure_app
from ..wire import DIGEST, ETAG, PARTS
from .roots import Root, open_root

log = logging.getLogger(__name__)


bp = Blueprint("publisher", __name__)


def _root() -> Root:
    return current_app.config["CATMQTT_ROOT"]


@bp.get("/api/list")
def list_datasets():
    return jsonify(sorted(_root().entries))


@bp.get("/api/info/<path:path>")
def info(path: str):
    entry = _root().get(path)
    response = jsonify(entry.meta)
    response.set_etag(entry.meta["etag"])
    return response.make_conditional(request)


@bp.get("/api/chunk/<path:path>")
def chunk(path: str):
    nchunk = arg_int("nchunk")
    blocks = request.args.get("blocks")
    wanted = None if blocks is None else parse_block_range(blocks)
    entry = _root().get(path)
    data, etag = _root().chunk(path, nchunk, part=wanted is not None or "Range" in request.headers)
    # The manifest has the digest already, unless the dataset changed meanwhile.
    known = entry.digests is not None and entry.meta["etag"] == etag
    digest = entry.digests[nchunk] if known else storage.chunk_digest(data)
    headers = {ETAG: etag, DIGEST: digest}
    # Some blocks first: the chunk's header, block offsets and those blocks.
    # (The whole chunk if its blocks cannot be sent apart.)
    spans = None if wanted is None else block_parts(data, wanted, chunk_nbytes(entry.meta, nchunk))
    if spans is not None:
        view = memoryview(data)
        body = b"".join(view[start:stop] for start, stop in spans)
        return Response(body, mimetype=OCTETS, headers={**headers, PARTS: format_parts(spans, len(data))})
    return chunk_response(data, headers)


@bp.get("/api/manifest/<path:path>")
def manifest(path: str):
    return jsonify(_root().manifest(path))


@bp.get("/api/download/<path:path>")
def download(path: str):
    root = _root()
    file, name = root.download(path)
    return send_file(file, as_attachment=True, download_name=name, etag=root.get(path).meta["etag"])


def create_app(root: Root) -> Flask:
    """Return the publisher's Flask app serving `root`."""
    app = Flask(__name__)
    app.config["CATMQTT_ROOT"] = root
    app.register_blueprint(bp)
    configure_app(app, root.statedir)
    return app


class Publisher:
    """A running publisher: HTTP server plus MQTT announcements of one root."""

    def __init__(
        self, name: str, root_path: str | os.PathLike, settings: dict[str, Any], node_id: str | None = None
    ) -> None:
        self.settings = settings
        fsutil.make_statedir(settings["statedir"])
        self.root = open_root(name, root_path, settings["statedir"], settings["settle"])
        self.prefix = settings["prefix"]
        self.app = create_app(self.root)
        # Bind before scanning, which may take a while: a busy port fails at once.
        self.server = Server.for_node(self.app, settings)
        self.root.scan()
        if self.root.unsettled:
            # Files written just before we started (`catmqtt up`'s sample) are
            # listed from the first announcement; later ones when they settle.
            time.sleep(settings["settle"])
            self.root.scan()
        self.url = settings["urlbase"] or self.server.url
        self.node_id = node_id or name
        self.signer = None if settings["sign_key"] is None else signing.load(settings["sign_key"])
        self.node = Node.for_node(
            "publisher",
            self.node_id,
            settings,
            self.url,
            on_connect=self._announce_all,
            on_message=self._message,
            sign=None if self.signer is None else self.signer.sign,
        )
        # What we last announced on each topic of our root (b"" once cleared),
        # and the tombstones we sent, so that our own messages coming back are
        # told from someone else's; written under _publish_lock.
        self._announced: dict[str, bytes] = {}
        self._tombstones: dict[str, bytes] = {}
        self._publish_lock = threading.Lock()
        self._withdrawals = LogThrottle(log)
        # Scans run one at a time: the watcher's, and a later one while files are being written.
        self._scan_lock = threading.Lock()
        self._rescan: threading.Timer | None = None
        self._stopping = threading.Event()
        self.watcher = None
        if settings["watch"] != "off":
            self.watcher = Watcher(
                self.root.path, self.refresh, mode=settings["watch"], ignore=[self.root.statedir]
            )

    def start(self) -> Publisher:
        self.server.start()
        self.node.start()
        if self.watcher is not None:
            self.watcher.start()
        self._rescan_if_unsettled()
        log.info(
            "publishing root %r (%d datasets) from %s at %s",
            self.root.name,
            len(self.root.entries),
            self.root.path,
            self.url,
        )
        return self

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self._stopping.set()
        with self._scan_lock:
            rescan = self._rescan
        if rescan is not None:
            rescan.cancel()
            rescan.join()
        self.node.stop()
        self.server.stop()

    def _announce_all(self) -> None:
        """Announce the root and every dataset; runs on every (re)connect."""
        with self._publish_lock:
            # Retained topics of our root that we no longer serve are withdrawn,
            # and ours that someone else changed are restored, in _message as the
            # broker replays them.
            root_topic_ = root_topic(self.prefix, self.root.name)
            self.node.subscribe(root_topic_)
            self.node.subscribe(f"{root_topic_}/ds/#")
            for path, entry in self.root.entries.items():
                self._announce(dataset_topic(self.prefix, self.root.name, path), entry.meta)
            self._announce(root_topic_, self._root_payload())

    def refresh(self) -> None:
        """Scan the root again and announce what changed (the watcher calls this)."""
        self._refresh()
        self._rescan_if_unsettled()

    def _refresh(self) -> None:
        if self._stopping.is_set():
            return
        with self._scan_lock:
            old = self.root.entries
            new = self.root.scan()
        changed = [p for p in new if p not in old or old[p].meta != new[p].meta]
        gone = [p for p in old if p not in new]
        if not changed and not gone:
            return
        log.info("root %r: %d datasets new or changed, %d gone", self.root.name, len(changed), len(gone))
        with self._publish_lock:
            # Removals first: a renamed file is never listed under both names.
            for path in gone:
                self._withdraw(dataset_topic(self.prefix, self.root.name, path), {"path": path})
            for path in changed:
                self._announce(dataset_topic(self.prefix, self.root.name, path), new[path].meta)
            self._announce(root_topic(self.prefix, self.root.name), self._root_payload())

    def _rescan_if_unsettled(self) -> None:
        """Scan again once files being written may have settled (nothing else
        would tell us: the watcher has seen their last change already)."""
        with self._scan_lock:
            if self.root.unsettled and self._rescan is None and not self._stopping.is_set():
                self._rescan = threading.Timer(self.settings["settle"], self._rescan_now)
                self._rescan.daemon = True
                self._rescan.start()

    def _rescan_now(self) -> None:
        self._refresh()
        with self._scan_lock:
            self._rescan = None
        self._rescan_if_unsettled()

    def _announce(self, topic: str, obj: dict[str, Any]) -> None:
        """Publish `obj` on `topic`, signed if we sign (_publish_lock held)."""
        payload = self.node.payload(topic, obj)
        self._announced[topic] = payload
        # Our tombstone of an earlier withdrawal is no longer ours: replayed, it is restored over.
        self._tombstones.pop(topic, None)
        self.node.publish(topic, payload)

    def _withdraw(self, topic: str, ident: dict[str, Any]) -> None:
        """Clear `topic`, after a signed tombstone if we sign (_publish_lock held):
        subscribers that trust our key ignore a bare clear, which anyone can send."""
        if self.signer is not None:
            tombstone = self.node.payload(topic, {**ident, "deleted": True})
            self._tombstones[topic] = tombstone
            self.node.publish(topic, tombstone)
        self._announced[topic] = b""
        self.node.publish(topic, b"")

    def _root_payload(self) -> dict[str, Any]:
        return {
            "name": self.root.name,
            "url": self.url,
            "publisher": self.node_id,
            "datasets": len(self.root.entries),
            "etag": self.root.etag,
            "skipped": self.root.skipped,
            "groups": self.root.groups,
            "time": time.time(),
        }

    def _message(self, topic: str, payload: bytes) -> None:
        """Withdraw what we no longer serve; restore what someone else changed."""
        try:
            what = parse_topic(self.prefix, topic)
        except BadRequest:
            return
        # Check the topic: amqtt may replay retained messages beyond the filter.
        if what.kind not in ("root", "dataset") or what.name != self.root.name:
            return
        with self._publish_lock:
            if self._ours(topic, payload):
                if not payload:
                    # Our clear is back: nothing on the topic is left to tell ours
                    # (and a stranger's junk topics do not pile up here).
                    self._announced.pop(topic, None)
                    self._tombstones.pop(topic, None)
                return
            if what.kind == "dataset" and what.path not in self.root.entries:
                if payload:
                    self._withdrawals.info("withdrawing the announcement of %s, which is gone", what.path)
                    self._withdraw(topic, {"path": what.path})
                return
            if topic in self._announced:
                self.node.restore(topic, self._announced[topic])

    def _ours(self, topic: str, payload: bytes) -> bool:
        """Tell whether `payload` on `topic` says what we announced last there: that
        announcement, or an earlier one of the same content (a retained copy from
        our last run, which our new one follows), or our tombstone."""
        mine = self._announced.get(topic)
        if payload in (mine, self._tombstones.get(topic)):
            return True
        if not payload or not mine:
            return False
        try:
            theirs, ours = json.loads(payload), json.loads(mine)
            if self.signer is not None and verify(topic, theirs) != self.signer.public:
                return False
        except (ValueError, BadRequest):
            return False
        return isinstance(theirs, dict) and _lasting(theirs) == _lasting(ours)


def _lasting(obj: dict[str, Any]) -> dict[str, Any]:
    """Return an announcement without what changes each time it is made."""
    return {k: v for k, v in obj.items() if k not in ("time", "seq", "sig")}
