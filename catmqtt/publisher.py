"""This module holds the publisher: it scans one root, announces it on MQTT
and serves the compressed bytes of its chunks over HTTP."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_file

from . import storage
from .blocks import block_parts, format_parts
from .errors import BadRequest
from .mqtt import Node
from .roots import Root, open_root
from .schema import dumps, loads
from .slices import parse_block_range
from .topics import dataset_topic, parse_topic, root_topic
from .watch import Watcher
from .web import OCTETS, Server, arg_int, chunk_response, configure_app
from .wire import DIGEST, ETAG, PARTS

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
    spans = None if wanted is None else block_parts(data, wanted, storage.chunk_nbytes(entry.meta, nchunk))
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
        storage.make_statedir(settings["statedir"])
        self.root = open_root(name, root_path, settings["statedir"])
        self.prefix = settings["prefix"]
        host, port = settings["http"]
        self.app = create_app(self.root)
        # Bind before scanning, which may take a while: a busy port fails at once.
        self.server = Server(self.app, host, port, settings["http_threads"])
        self.root.scan()
        self.url = settings["urlbase"] or self.server.url
        self.node_id = node_id or name
        self.node = Node(
            "publisher",
            self.node_id,
            settings["broker"],
            self.prefix,
            self.url,
            user=settings["mqtt_user"],
            password=settings["mqtt_password"],
            cafile=settings["cafile"],
            on_connect=self._announce_all,
            on_message=self._message,
        )
        self._publish_lock = threading.Lock()
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
        self.node.stop()
        self.server.stop()

    def _announce_all(self) -> None:
        """Announce the root and every dataset; runs on every (re)connect."""
        with self._publish_lock:
            # Retained topics of our root that we no longer serve are cleared
            # in _message as the broker replays them.
            self.node.subscribe(f"{root_topic(self.prefix, self.root.name)}/ds/#")
            for path, entry in self.root.entries.items():
                self.node.publish(dataset_topic(self.prefix, self.root.name, path), dumps(entry.meta))
            self.node.publish(root_topic(self.prefix, self.root.name), dumps(self._root_payload()))

    def refresh(self) -> None:
        """Scan the root again and announce what changed (the watcher calls this)."""
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
                self.node.publish(dataset_topic(self.prefix, self.root.name, path), b"")
            for path in changed:
                self.node.publish(dataset_topic(self.prefix, self.root.name, path), dumps(new[path].meta))
            self.node.publish(root_topic(self.prefix, self.root.name), dumps(self._root_payload()))

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
        try:
            what = parse_topic(self.prefix, topic)
        except BadRequest:
            return
        # Check the topic: amqtt may replay retained messages beyond the filter.
        if what.kind != "dataset" or what.name != self.root.name:
            return
        if payload and what.path not in self.root.entries:
            log.info("clearing the announcement of %s, which is gone", what.path)
            self.node.publish(topic, b"")
        elif payload:
            try:
                loads(payload)
            except BadRequest:
                log.warning("replacing a malformed announcement on %s", topic)
                self.node.publish(topic, dumps(self.root.entries[what.path].meta))
