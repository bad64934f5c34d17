"""This module holds the publisher: it scans one root, announces it on MQTT
and serves the compressed bytes of its chunks over HTTP."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blosc2
from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_file

from . import storage
from .errors import BadRequest, CatmqttError, NotFound
from .mqtt import Node
from .schema import dumps, loads
from .topics import dataset_topic, parse_path, parse_topic, root_topic
from .web import Server, arg_int, configure_app

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One dataset of a root: its file, metadata and, once opened, its data."""

    file: Path
    meta: dict[str, Any]
    handle: blosc2.NDArray | blosc2.SChunk | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def kind(self) -> str:
        return self.meta["kind"]


class Root:
    """The datasets of one root directory, as last scanned."""

    def __init__(self, name: str, path: str | os.PathLike, statedir: str | os.PathLike) -> None:
        self.name = name
        self.path = Path(path).resolve()
        if not self.path.exists():
            raise CatmqttError(f"root {os.fspath(path)!r} does not exist")
        if not self.path.is_dir():
            raise CatmqttError(
                f"root {os.fspath(path)!r} is not a directory (publishing an HDF5 file is not supported yet)"
            )
        self.statedir = Path(statedir).resolve()
        self.entries: dict[str, Entry] = {}
        self.etag = ""
        self._lock = threading.Lock()

    def scan(self) -> dict[str, Entry]:
        """Look at the root again; reuse what did not change. Returns the entries."""
        found: dict[str, Entry] = {}
        for file, path in self._walk():
            try:
                etag = storage.file_etag(file)
            except OSError as exc:
                log.warning("skipping %s: %s", path, exc.strerror)
                continue
            old = self.entries.get(path)
            if old is not None and old.meta["etag"] == etag:
                found[path] = old
            else:
                found[path] = self._describe(file, path, etag)
        with self._lock:
            self.entries = found
            digest = hashlib.blake2b(digest_size=8)
            for path in sorted(found):
                digest.update(f"{path}\0{found[path].meta['etag']}\0".encode())
            self.etag = digest.hexdigest()
        return found

    def _walk(self):
        """Yield (file, dataset path) for every servable file under the root."""
        for dirpath, dirnames, filenames in os.walk(self.path):
            top = Path(dirpath)
            kept = []
            for d in sorted(dirnames):
                full = top / d
                if d.startswith(".") or full == self.statedir or full.is_symlink():
                    continue
                if d.endswith(storage.BLOSC2_SUFFIXES):
                    log.warning("skipping %s: sparse Blosc2 containers are not served", full)
                    continue
                kept.append(d)
            dirnames[:] = kept
            for name in filenames:
                if name.startswith("."):
                    continue
                file = top / name
                rel = file.relative_to(self.path).as_posix()
                try:
                    path = parse_path(rel)
                except BadRequest as exc:
                    log.warning("skipping %s: %s", file, exc)
                    continue
                if file.is_symlink():
                    target = file.resolve()
                    if not target.is_relative_to(self.path) or not target.is_file():
                        log.warning("skipping %s: a link to something outside the root", file)
                        continue
                elif not file.is_file():
                    continue
                yield file, path

    def _describe(self, file: Path, path: str, etag: str) -> Entry:
        if file.suffix in storage.BLOSC2_SUFFIXES:
            handle = storage.open_blosc2(file)
            if handle is not None:
                return Entry(file, storage.describe(handle, path, etag), handle)
            log.warning("%s is not a readable Blosc2 file; serving it as a plain file", path)
        return Entry(file, storage.describe_file(path, file.stat().st_size, etag))

    def get(self, path: str) -> Entry:
        """Return the entry of dataset `path`, or raise NotFound."""
        entry = self.entries.get(parse_path(path))
        if entry is None:
            raise NotFound(f"no dataset {path!r} in root {self.name!r}")
        return entry

    def chunk(self, path: str, nchunk: int) -> tuple[bytes, str]:
        """Return the compressed bytes of chunk `nchunk` of `path`, and its etag."""
        entry = self.get(path)
        nchunks = entry.meta["nchunks"]
        if not 0 <= nchunk < nchunks:
            raise BadRequest(f"chunk {nchunk} is out of range: {path!r} has {nchunks} chunks")
        with entry.lock:
            if entry.handle is None:
                entry.handle = self._compressed(entry)
            return storage.schunk_of(entry.handle).get_chunk(nchunk), entry.meta["etag"]

    def _compressed(self, entry: Entry) -> blosc2.SChunk:
        """Return the SChunk of a plain file, compressing it once per etag."""
        frame = self.statedir / "files" / f"{entry.meta['path']}.b2frame"
        if frame.exists():
            schunk = storage.open_blosc2(frame)
            if isinstance(schunk, blosc2.SChunk) and schunk.vlmeta.get("etag") == entry.meta["etag"]:
                return schunk
        log.info("compressing %s", entry.meta["path"])
        return storage.compress_file(entry.file, frame, entry.meta["etag"])


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
    data, etag = _root().chunk(path, arg_int("nchunk"))
    return Response(data, mimetype="application/octet-stream", headers={"X-Catmqtt-Etag": etag})


@bp.get("/api/download/<path:path>")
def download(path: str):
    entry = _root().get(path)
    return send_file(entry.file, as_attachment=True, download_name=entry.file.name, etag=entry.meta["etag"])


def create_app(root: Root) -> Flask:
    """Return the publisher's Flask app serving `root`."""
    app = Flask(__name__)
    app.config["CATMQTT_ROOT"] = root
    app.register_blueprint(bp)
    configure_app(app)
    return app


class Publisher:
    """A running publisher: HTTP server plus MQTT announcements of one root."""

    def __init__(
        self, name: str, root_path: str | os.PathLike, settings: dict[str, Any], node_id: str | None = None
    ) -> None:
        self.settings = settings
        settings["statedir"].mkdir(parents=True, exist_ok=True)
        self.root = Root(name, root_path, settings["statedir"])
        self.root.scan()
        self.prefix = settings["prefix"]
        host, port = settings["http"]
        self.app = create_app(self.root)
        self.server = Server(self.app, host, port)
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
        self._announced: set[str] = set()

    def start(self) -> Publisher:
        self.server.start()
        self.node.start()
        log.info(
            "publishing root %r (%d datasets) from %s at %s",
            self.root.name,
            len(self.root.entries),
            self.root.path,
            self.url,
        )
        return self

    def stop(self) -> None:
        self.node.stop()
        self.server.stop()

    def _announce_all(self) -> None:
        """Announce the root and every dataset; runs on every (re)connect."""
        entries = self.root.scan()
        # Retained topics of our root that we no longer serve are cleared in
        # _message as the broker replays them.
        self.node.subscribe(f"{root_topic(self.prefix, self.root.name)}/ds/#")
        for path, entry in entries.items():
            self.node.publish(dataset_topic(self.prefix, self.root.name, path), dumps(entry.meta))
        self.node.publish(root_topic(self.prefix, self.root.name), dumps(self._root_payload()))
        self._announced = set(entries)

    def _root_payload(self) -> dict[str, Any]:
        return {
            "name": self.root.name,
            "url": self.url,
            "publisher": self.node_id,
            "datasets": len(self.root.entries),
            "etag": self.root.etag,
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
