"""This module holds the subscriber: it follows roots announced on MQTT,
fetches their chunks on demand into its cache and serves them over HTTP."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc2
import numpy as np
from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_file

from .. import storage
from ..assemble import Assembler
from ..dtypes import array_dtype, dtype_from_json
from ..errors import BadRequest, CatmqttError, Changed, NotFound, NotSubscribed, TooLarge
from ..mqtt import LogThrottle, Node
from ..schema import loads, parse_dataset, parse_node, parse_root
from ..signing import verify
from ..slices import chunks_touched, forward, parse_chunk_list, parse_slice, result_shape, select
from ..topics import parse_path, parse_root_name, parse_topic, root_topic
from ..web import BY_REFERENCE, OCTETS, Server, StreamCut, arg_int, chunk_response, configure_app, error_of
from ..wire import CFRAME, DIGEST, ETAG, FRAME, FRAMES, NPY, error_json, error_trailer
from . import caterva2
from .cache import Cache
from .flights import Fetcher, FetchSettings, Source
from .large import BUILD_MEMORY, PIECE, STREAM_MEMORY, STREAM_PIECE, Budget, Builders, Grant, Stream, TempFile
from .trust import Trust

log = logging.getLogger(__name__)

MAX_CHUNKS_PER_REQUEST = 4096
# What /api/info/ROOT tells of a root's announcement, besides what it skipped and its groups.
ROOT_FIELDS = ("name", "url", "publisher", "datasets", "etag", "time", "key")
# How long a subscription waits for the broker to replay a root's datasets.
SNAPSHOT_WAIT = 10.0


class Subscriber:
    """A running subscriber: MQTT follower, chunk cache and HTTP server."""

    def __init__(self, settings: dict[str, Any], node_id: str) -> None:
        self.settings = settings
        self.prefix = settings["prefix"]
        self.max_fetch = settings["max_fetch_bytes"]
        self.cache = Cache(settings["statedir"])
        self.tmpdir = settings["statedir"] / "tmp"
        self.tmpdir.mkdir(exist_ok=True)
        # What a killed subscriber left: nothing else writes here.
        for stale in self.tmpdir.iterdir():
            stale.unlink()
        # At most half the HTTP threads answer large requests, the rest stay for small ones.
        large_threads = max(1, settings["http_threads"] // 2)
        self.budget = Budget(large_threads, settings["max_stream_bytes"], settings["max_temp_bytes"])
        self.builders = Builders(large_threads)
        self.fetcher = Fetcher(
            self.cache, FetchSettings(settings["fetch_workers"], settings["fetch_timeout"])
        )
        self.trust = Trust(settings["trust"], self.cache)
        # Node statuses by (role, id, the key that signed them or None).
        self.nodes: dict[tuple[str, str, str | None], dict[str, Any]] = {}
        # Of each node's current session, the highest sequence number of a signed
        # "online" or "offline" status, and that of the last will its last
        # "online" names (see _check_fresh).
        self._freshness: dict[tuple[str, str, str], tuple[int, int | None]] = {}
        self._subscribed = set(self.cache.subscribed())
        # Datasets announced in the current connection's snapshot, per root.
        self._seen: dict[str, set[str]] = {}
        # Roots whose index awaits a check against the snapshot after (re)connecting.
        self._unreconciled: set[str] = set()
        # Dataset updates, applied in order on one worker; the latest per dataset.
        # Written by the MQTT thread only (one done future a dataset stays),
        # read by HTTP threads: a reader that removed a done entry with a
        # get-then-pop could remove a newer update recorded between the two.
        self._updates = ThreadPoolExecutor(1, thread_name_prefix="updates")
        self._pending: dict[tuple[str, str], Future] = {}
        self._changed = threading.Condition()
        self._ignored = LogThrottle(log)
        self.app = create_app(self)
        self.server = Server.for_node(self.app, settings)
        self.url = settings["urlbase"] or self.server.url
        self.node = Node.for_node(
            "subscriber",
            node_id,
            settings,
            self.url,
            on_connect=self._on_connect,
            on_message=self._on_message,
        )

    def start(self) -> Subscriber:
        self.server.start()
        self.node.start()
        log.info("subscriber serving at %s (state in %s)", self.url, self.settings["statedir"])
        return self

    def stop(self) -> None:
        self.node.stop()
        self.server.stop()
        self.builders.close()
        self._updates.shutdown(wait=True, cancel_futures=True)
        self.fetcher.close()
        self.cache.close()

    # MQTT

    def _on_connect(self) -> None:
        with self._changed:
            self._seen = {name: set() for name in self._subscribed}
            self._unreconciled = set(self._subscribed)
        self.node.subscribe(f"{self.prefix}/roots/+")
        self.node.subscribe(f"{self.prefix}/nodes/#")
        for name in sorted(self._subscribed):
            self.node.subscribe(f"{root_topic(self.prefix, name)}/ds/#")

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            what = parse_topic(self.prefix, topic)
            obj = loads(payload)
            if what.kind == "root":
                self._on_root(topic, what.name, obj)
            elif what.kind == "dataset" and what.name in self._subscribed:
                self._on_dataset(topic, what.name, what.path, obj)
            elif what.kind == "node":
                self._on_node(topic, what.name, what.path, obj)
        except BadRequest as exc:
            self._ignored.warning("ignoring the message on %r: %s", topic, exc)

    def _on_root(self, topic: str, name: str, obj: dict[str, Any] | None) -> None:
        try:
            last = self.cache.root(name)["info"]
        except NotFound:
            last = None
        # Checked before its key may be pinned: junk pins nothing.
        info = None if obj is None or obj.get("deleted") is True else parse_root(obj, name)
        self.trust.check(topic, name, obj, last, pin=info is not None)
        moved = self.cache.set_root(name, info)
        if moved:
            log.warning(
                "root %r is now served from %s: cached chunks of %d datasets without a manifest dropped",
                name,
                info["url"],
                len(moved),
            )
        self._updates.submit(self._guarded, self._reconcile_index, name)

    def _on_dataset(self, topic: str, root: str, path: str, obj: dict[str, Any] | None) -> None:
        try:
            last = self.cache.dataset(root, path)
        except NotFound:
            last = None
        self.trust.check(topic, root, obj, last, pin=False)
        if obj is not None and obj.get("deleted") is True:
            obj = None
        if obj is not None:
            parse_dataset(obj, path)
            if obj["kind"] == "ndarray":
                array_dtype(obj)
            storage.cparams_from_json(obj["cparams"])
        # Applied on a worker of its own: the MQTT thread never waits
        # on a dataset's lock (a long download holds it).
        key = (root, path)
        self._pending[key] = self._updates.submit(self._guarded, self._apply_dataset, *key, obj)

    def _on_node(self, topic: str, role: str, node_id: str, obj: dict[str, Any] | None) -> None:
        """Record a node's status, apart for each key it is signed by (see `_online`)."""
        signer = None if obj is None else verify(topic, obj)
        key = (role, node_id, signer)
        if obj is None:
            # Only an unsigned status can be cleared by anyone.
            self.nodes.pop(key, None)
            return
        status = parse_node(obj, role, node_id)
        if signer is not None:
            self._check_fresh(key, status)
        self.nodes[key] = status

    def _check_fresh(self, key: tuple[str, str, str], status: dict[str, Any]) -> None:
        """Raise BadRequest if a signed status is older than the last one of its node.

        A node's session grows with every run. Within one, its statuses come in
        the order of their sequence numbers ("online" after each connection,
        "offline" at a clean stop, which ends it) but for the last will of each
        connection, "lost", signed before it connects: "lost" is believed until
        the session ends if it is the will that the last "online" names, and
        "online" or "offline" must be newer than every other before, or the
        same message again.
        """
        old = self.nodes.get(key)
        what = f"{key[0]} {key[1]!r}"
        session, seq, state = status.get("session", 0), status["seq"], status["status"]
        high, will = self._freshness.get(key, (-1, None))
        if old is not None and session == old.get("session", 0):
            if state == "lost":
                if old["status"] == "offline":
                    raise BadRequest(f"a status of {what} after it stopped: a replay")
                if will is not None and seq != will:
                    raise BadRequest(f"the last will of an earlier connection of {what}: a replay")
            elif seq < high or (seq == high and state != old["status"]):
                raise BadRequest(f"a status of {what} older than its last: a replay")
        elif old is not None and session < old.get("session", 0):
            raise BadRequest(f"a status of an earlier session of {what}: a replay")
        else:
            high, will = -1, None
        if state != "lost":
            high = max(high, seq)
        if state == "online":
            will = status.get("will")
        self._freshness[key] = (high, will)

    @staticmethod
    def _guarded(func, *args) -> None:
        try:
            func(*args)
        except Exception:
            log.exception("error applying an update of %s", "/".join(map(str, args[:2])))

    def _apply_dataset(self, root: str, path: str, obj: dict[str, Any] | None) -> None:
        """Record a dataset's new metadata, and sort out its cached chunks."""
        old = self.cache.set_dataset(root, path, obj)
        if old is not None:
            if "manifest" in old and "manifest" in obj:
                self._keep_unchanged(root, path, old, obj)
            else:
                log.info("%s/%s changed: its cached chunks are dropped", root, path)
                self.cache.drop_chunks(root, path)
        with self._changed:
            seen = self._seen.setdefault(root, set())
            if obj is None:
                seen.discard(path)
            else:
                seen.add(path)
            self._changed.notify_all()
        self._reconcile_index(root)

    def _keep_unchanged(self, root: str, path: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Keep the cached chunks of a changed dataset that its new manifest confirms."""
        try:
            url = self.cache.root(root)["info"]["url"]
            digests = self.fetcher.manifest(root, path, new, url)
        except CatmqttError as exc:
            log.warning("%s/%s changed and its manifest is unavailable (%s): chunks dropped", root, path, exc)
            self.cache.drop_chunks(root, path)
            return
        kept = self.cache.remap(root, path, old, new, digests)
        self.fetcher.count(f"{root}/{path}", kept_on_change=kept)
        log.info("%s/%s changed: %d cached chunks still valid, kept", root, path, kept)

    def _settled(self, root: str, path: str) -> None:
        """Wait until the latest update of a dataset is applied, its cached chunks sorted out."""
        pending = self._pending.get((root, path))
        if pending is None:
            return
        try:
            pending.result(timeout=self.fetcher.timeout[1])
        except FutureTimeout:
            raise Changed(f"{root}/{path}", f"{root}/{path} is being updated; try again") from None

    def _reconcile_index(self, name: str) -> None:
        """Forget the datasets deleted while we were away, once the snapshot of a root is in.

        The snapshot is complete when as many datasets were announced as the
        root's own announcement counts.
        """
        if name not in self._unreconciled:
            return
        try:
            expected = self.cache.root(name)["info"]["datasets"]
        except NotFound:
            return
        with self._changed:
            seen = set(self._seen.get(name, ()))
            if len(seen) < expected:
                return
            self._unreconciled.discard(name)
        for path in set(self.cache.datasets(name)) - seen:
            log.info("%s/%s was deleted while we were away", name, path)
            self.cache.set_dataset(name, path, None)

    # Operations behind the endpoints

    def roots(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "name": name,
                "url": root["info"]["url"],
                "online": self._online(root["info"]),
                "subscribed": root["subscribed"],
                "key": root["info"].get("key"),
            }
            for name, root in self.cache.roots().items()
        }

    def _online(self, info: dict[str, Any]) -> bool:
        # A signed root's publisher is online only by a status signed with the root's key.
        status = self.nodes.get(("publisher", info["publisher"], info.get("key")))
        return status is not None and status["status"] == "online"

    def subscribe(self, name: str) -> None:
        """Follow root `name`; returns once the broker replayed its datasets."""
        root = self.cache.root(parse_root_name(name))
        if name in self._subscribed and root["subscribed"]:
            return
        with self._changed:
            self._seen[name] = set()
            self._unreconciled.add(name)
        self.cache.set_subscribed(name, True)
        self._subscribed.add(name)
        self.node.subscribe(f"{root_topic(self.prefix, name)}/ds/#")
        if self.node.connected.is_set():
            expected = root["info"]["datasets"]
            with self._changed:
                if not self._changed.wait_for(lambda: len(self._seen[name]) >= expected, SNAPSHOT_WAIT):
                    log.warning(
                        "root %r: %d of %d datasets announced so far", name, len(self._seen[name]), expected
                    )

    def unsubscribe(self, name: str) -> None:
        self.cache.root(parse_root_name(name))
        self.cache.set_subscribed(name, False)
        self._subscribed.discard(name)
        self.node.unsubscribe(f"{root_topic(self.prefix, name)}/ds/#")

    def root_of(self, name: str) -> dict[str, Any]:
        """Return the announcement of a subscribed root, or raise."""
        root = self.cache.root(parse_root_name(name))
        if not root["subscribed"]:
            raise NotSubscribed(f"root {name!r} is not subscribed (run 'catmqtt subscribe {name}')")
        return root["info"]

    def list(self, name: str, directory: str | None) -> list[str]:
        self.root_of(name)
        paths = self.cache.datasets(name)
        if directory is None:
            return paths
        prefix = parse_path(directory.rstrip("/")) + "/"
        inside = [p for p in paths if p.startswith(prefix)]
        if not inside and directory.rstrip("/") not in paths:
            raise NotFound(f"no directory {directory!r} in root {name!r}")
        return inside or [directory.rstrip("/")]

    def lookup(self, fullpath: str) -> Source:
        """Return (root, path, metadata, publisher URL) of ``root/path``."""
        name, sep, path = fullpath.partition("/")
        if not sep or not path:
            raise BadRequest(f"invalid dataset path {fullpath!r}: expected ROOT/PATH, like foo/ds-1d.b2nd")
        info = self.root_of(name)
        try:
            meta = self.cache.dataset(name, parse_path(path))
        except NotFound as exc:
            # An HDF5 object the publisher could not serve (a dataset NAME is served as NAME.b2nd): say why.
            names = {f"/{path}", f"/{path.removesuffix('.b2nd')}"}
            reason = next((s["reason"] for s in info.get("skipped", ()) if s["path"] in names), None)
            if reason is None:
                raise
            raise NotFound(f"{exc}: its publisher skipped it ({reason})") from None
        return Source(name, path, meta, info["url"])

    def root_info(self, name: str) -> dict[str, Any]:
        """Return what root `name`'s publisher announced of it, and how we see it."""
        root = self.cache.root(parse_root_name(name))
        info = root["info"]
        return {
            **{key: info[key] for key in ROOT_FIELDS if key in info},
            "skipped": info.get("skipped", []),
            "groups": info.get("groups", {}),
            "online": self._online(info),
            "subscribed": root["subscribed"],
        }

    def selection(self, fullpath: str, slice_text: str) -> Target:
        """Check the selection `slice_text` of a dataset; raise before anything is read."""
        source = self.lookup(fullpath)
        meta = source.meta
        sel = select(parse_slice(slice_text), meta["shape"])
        itemsize = dtype_from_json(meta["dtype"]).itemsize if meta["kind"] == "ndarray" else meta["typesize"]
        shape = result_shape(sel)
        nbytes = math.prod(shape) * itemsize
        if nbytes > self.max_fetch:
            raise TooLarge(
                f"the selection is {nbytes} bytes, over this subscriber's limit of {self.max_fetch}"
                " (max_fetch_bytes): select less, or use download"
            )
        return Target(fullpath, source, sel, shape, itemsize, nbytes)

    def read(self, target: Target, sel: tuple | None = None) -> np.ndarray | bytes:
        """Return `sel` (by default the whole of `target`), fetching the chunks that are missing."""
        sel = target.sel if sel is None else sel
        source = target.source
        root, path, meta, _ = source
        numbers = chunks_touched(sel, meta["shape"], meta["chunks"])
        self._settled(root, path)
        missing = self.fetcher.missing(source, numbers)
        if missing and meta["kind"] == "ndarray":
            # Decoded from the chunks as they arrive, not after their write to the cache.
            assembler = Assembler(meta, sel)
            # Of a chunk the selection needs only some blocks of, those come first.
            parts = {n: blocks for n in missing if (blocks := assembler.partial_blocks(n)) is not None}
            try:
                for n, data in self.fetcher.stream(source, numbers, missing, parts):
                    assembler.add(n, data)
            except Changed:
                raise Changed(target.fullpath) from None
            self.cache.touch(root, path, numbers)
            return assembler.result()
        self.fetcher.ensure(source, numbers, missing)
        key, flip = forward(sel)
        with self.cache.reading(root, path, meta) as handle:
            if handle is None:
                raise Changed(target.fullpath)
            if meta["kind"] == "ndarray":
                result = storage.read_array(handle, key, flip)
            else:
                result = _read_items(handle, key[0], bool(flip), meta["typesize"])
        self.cache.touch(root, path, numbers)
        return result

    def fetch(self, fullpath: str, slice_text: str) -> np.ndarray | bytes:
        """Return the selection `slice_text` of a dataset, fetching what is missing."""
        return self.read(self.selection(fullpath, slice_text))

    def slabs(self, target: Target, size: int = PIECE) -> Iterator[np.ndarray | bytes]:
        """Yield the selection in pieces of about `size` bytes along its first axis, in order."""
        axis = next(i for i, s in enumerate(target.sel) if isinstance(s, range))
        rows = len(target.sel[axis])
        step = max(1, size * rows // max(target.nbytes, 1))
        for start in range(0, rows, step):
            piece = target.sel[axis][start : start + step]
            yield self.read(target, (*target.sel[:axis], piece, *target.sel[axis + 1 :]))

    def stream(self, target: Target, npy: bool) -> tuple[Body, int]:
        """Return the body of a large selection and its length: ``.npy`` if `npy` and
        an array, else its bytes; built on a builder thread, piece by piece.

        Every chunk it needs is cached before this returns, so that a failure
        to fetch one gets an error status; a failure after that ends the body
        short, with the error (see `Body`).
        """
        grant = self.budget.enter(STREAM_MEMORY)
        try:
            self.builders.run(self._cache_all, target)
        except BaseException:
            grant.release()
            raise
        header = b""
        if npy and target.source.meta["kind"] == "ndarray":
            dtype = dtype_from_json(target.source.meta["dtype"])
            buffer = io.BytesIO()
            descr = np.lib.format.dtype_to_descr(dtype)
            np.lib.format.write_array_header_1_0(
                buffer, {"descr": descr, "fortran_order": False, "shape": target.shape}
            )
            header = buffer.getvalue()
        pieces = self.builders.stream(_as_piece(slab) for slab in self.slabs(target, STREAM_PIECE))
        return Body(header, pieces, grant, target.fullpath, self.cache.dir), len(header) + target.nbytes

    def cframe(self, target: Target) -> TempFile:
        """Return a large selection of an array as a Blosc2 file, whole before anything is sent.

        The whole array is its cached chunks as they are; a part is compressed anew.
        """
        meta = target.source.meta
        if all(s == range(n) for s, n in zip(target.sel, meta["shape"], strict=True)):
            return self._whole_file(target.source)
        dtype = dtype_from_json(meta["dtype"])

        def write(tmp: Path) -> None:
            self._cache_all(target)
            out = blosc2.empty(target.shape, dtype=dtype, urlpath=str(tmp), contiguous=True, mode="w")
            row = 0
            for slab in self.slabs(target):
                out[row : row + len(slab)] = np.ascontiguousarray(slab)
                row += len(slab)

        # Blosc2 stores what does not compress as it is, plus a little.
        grant = self.budget.enter(BUILD_MEMORY, target.nbytes + target.nbytes // 256 + (1 << 20))
        return self._temp_file(grant, ".b2nd", write)

    def _cache_all(self, target: Target) -> None:
        root, path, meta, _ = target.source
        self._settled(root, path)
        self.fetcher.ensure(target.source, chunks_touched(target.sel, meta["shape"], meta["chunks"]))

    def _whole_file(self, source: Source) -> TempFile:
        """Return a dataset as one file (the plain file's bytes, or contiguous Blosc2), whole."""
        root, path, meta, _ = source
        numbers = list(range(meta["nchunks"]))

        def write(tmp: Path) -> None:
            self._settled(root, path)
            self.fetcher.ensure(source, numbers)
            with self.cache.reading(root, path, meta) as handle:
                if handle is None:
                    raise Changed(f"{root}/{path}")
                if meta["kind"] == "file":
                    with open(tmp, "wb") as f:
                        for data in storage.iter_bytes(handle):
                            f.write(data)
                else:
                    storage.write_contiguous(handle, meta, tmp)
            self.cache.touch(root, path, numbers)

        size = meta["nbytes"] if meta["kind"] == "file" else meta["cbytes"]
        grant = self.budget.enter(BUILD_MEMORY, size + (1 << 20))
        return self._temp_file(grant, os.path.splitext(path)[1], write)

    def _temp_file(self, grant: Grant, suffix: str, write: Callable[[Path], None]) -> TempFile:
        """Have `write` make a file in the tmp directory on a builder thread; return it
        open and already unlinked, `grant` holding its size of disk until it is closed."""
        fd, name = tempfile.mkstemp(dir=self.tmpdir, suffix=suffix)
        os.close(fd)
        tmp = Path(name)
        try:
            self.builders.build(write, tmp)
            file = TempFile(tmp, grant, self.builders.closer)
        except BaseException:
            grant.release()
            raise
        finally:
            tmp.unlink()
        grant.keep_only_disk(os.fstat(file.fileno()).st_size)
        return file

    def chunk(self, fullpath: str, nchunk: int) -> tuple[bytes, str]:
        source = self.lookup(fullpath)
        root, path, meta, _ = source
        if not 0 <= nchunk < meta["nchunks"]:
            raise BadRequest(f"chunk {nchunk} is out of range: {fullpath!r} has {meta['nchunks']} chunks")
        self._settled(root, path)
        self.fetcher.ensure(source, [nchunk])
        with self.cache.reading(root, path, meta) as handle:
            if handle is None:
                raise Changed(fullpath)
            data = storage.schunk_of(handle).get_chunk(nchunk)
        self.cache.touch(root, path, [nchunk])
        return data, meta["etag"]

    def chunks(self, fullpath: str, numbers_text: str, etag: str | None) -> Iterator[bytes]:
        """Return the frames of the compressed chunks `numbers_text` (``0-15,20``) of a dataset.

        Each frame is a header of two little-endian int64, the chunk number and
        the length of its bytes, then the bytes; chunks come as they are
        available, in no particular order. A failure once streaming has begun
        is sent as a frame numbered -1 holding ``{"error", "status"}``.
        """
        source = self.lookup(fullpath)
        root, path, meta, _ = source
        if etag is not None and etag != meta["etag"]:
            raise Changed(
                fullpath,
                f"{fullpath} changed (etag {meta['etag']}, not {etag}); read its metadata again",
                412,
            )
        numbers = parse_chunk_list(numbers_text, meta["nchunks"])
        if len(numbers) > MAX_CHUNKS_PER_REQUEST or len(numbers) * meta["chunksize"] > self.max_fetch:
            raise TooLarge(
                f"{len(numbers)} chunks of {meta['chunksize']} bytes is more than one request may ask for (at"
                f" most {MAX_CHUNKS_PER_REQUEST} chunks and max_fetch_bytes {self.max_fetch}): ask in parts"
            )
        self._settled(root, path)
        stream = self.fetcher.stream(source, numbers)

        def frames() -> Iterator[bytes]:
            try:
                for n, data in stream:
                    yield FRAME.pack(n, len(data))
                    yield data
            except CatmqttError as exc:
                error = json.dumps(error_json(exc)).encode()
                yield FRAME.pack(-1, len(error))
                yield error
                return
            self.cache.touch(root, path, numbers)

        return frames()

    def download(self, fullpath: str) -> tuple[TempFile, str]:
        """Return an open, already unlinked file with the whole dataset, and its name."""
        source = self.lookup(fullpath)
        return self._whole_file(source), source.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Target:
    """A checked selection of a dataset: where it is and what it will be."""

    fullpath: str
    source: Source
    sel: tuple
    shape: tuple[int, ...]
    itemsize: int
    nbytes: int


def _as_piece(slab: np.ndarray | bytes) -> bytes | memoryview:
    """Return a slab's bytes: a large one as a view (it is sent from where it is), not a copy."""
    if isinstance(slab, bytes):
        return slab
    view = memoryview(np.ascontiguousarray(slab)).cast("B")
    return view if len(view) >= BY_REFERENCE else view.tobytes()


class Body:
    """The body of a large answer: a header, then pieces made on a builder thread.

    A failure once it is under way cannot change the status sent: the body
    then ends with the error (`wire.error_trailer`), short of its
    Content-Length, and its connection is closed, so that any HTTP client
    sees it cut and catmqtt's client reports the error. Closing it (waitress
    does, sent or not) stops the builder and gives back the grant.
    """

    def __init__(self, header: bytes, pieces: Stream, grant: Grant, fullpath: str, statedir: Path) -> None:
        self._header = header
        self._pieces = pieces
        self._grant = grant
        self._fullpath = fullpath
        self._statedir = statedir

    def __iter__(self) -> Iterator[bytes | memoryview]:
        if self._header:
            yield self._header
        try:
            yield from self._pieces
        except Exception as exc:
            error = error_of(exc, self._statedir, f"the body of {self._fullpath}")
            log.warning("the answer for %s failed midway, and ends with its error: %s", self._fullpath, error)
            yield error_trailer(error)
            raise StreamCut(error.message) from exc

    def close(self) -> None:
        try:
            self._pieces.close()
        finally:
            self._grant.release()


def _read_items(schunk: blosc2.SChunk, key: int | slice, flip: bool, typesize: int) -> bytes:
    """Return the items of a byte stream that a 1-D selection names."""
    if isinstance(key, int):
        return storage.read_items(schunk, key, key + 1)
    count = len(range(key.start, key.stop, key.step))
    stop = key.start + (count - 1) * key.step + 1 if count else key.start
    per_chunk = schunk.chunksize // typesize
    if key.step <= per_chunk:
        data = storage.read_items(schunk, key.start, stop)
        items = np.frombuffer(data, dtype=f"V{typesize}")[:: key.step]
    else:
        # A step past the chunk length: one item per chunk, never the span between.
        items = np.frombuffer(
            b"".join(storage.read_items(schunk, i, i + 1) for i in range(key.start, stop, key.step)),
            dtype=f"V{typesize}",
        )
    if key.step == 1 and not flip:
        return items.tobytes()
    return (items[::-1] if flip else items).tobytes()


bp = Blueprint("subscriber", __name__)


def _sub() -> Subscriber:
    return current_app.config["CATMQTT_SUBSCRIBER"]


@bp.get("/api/roots")
def roots():
    return jsonify(_sub().roots())


@bp.post("/api/subscribe/<name>")
def subscribe(name: str):
    _sub().subscribe(name)
    return jsonify("Ok")


@bp.post("/api/unsubscribe/<name>")
def unsubscribe(name: str):
    _sub().unsubscribe(name)
    return jsonify("Ok")


@bp.get("/api/list/<name>")
@bp.get("/api/list/<name>/<path:directory>")
def list_datasets(name: str, directory: str | None = None):
    return jsonify(_sub().list(name, directory))


@bp.get("/api/info/<path:fullpath>")
def info(fullpath: str):
    if "/" not in fullpath:
        return jsonify(_sub().root_info(fullpath))
    meta = _sub().lookup(fullpath)[2]
    response = jsonify(caterva2.describe(meta))
    response.set_etag(meta["etag"])
    return response.make_conditional(request)


@bp.get("/api/fetch/<path:fullpath>")
@bp.post("/api/fetch/<path:fullpath>")
def fetch(fullpath: str):
    sub = _sub()
    wanted = caterva2.fetch_args()
    # Blosc2 unless .npy is asked for: "*/*" picks the first offer.
    npy = request.accept_mimetypes.best_match([CFRAME, NPY]) == NPY
    if wanted.indices is not None:
        with caterva2.gathering(sub, fullpath, wanted.indices) as result:
            return _array_response(result, npy)
    target = sub.selection(fullpath, wanted.slice)
    if target.nbytes <= PIECE or not target.shape:
        result = sub.read(target)
        if isinstance(result, bytes):
            return Response(result, mimetype=OCTETS)
        return _array_response(result, npy)
    # A large selection: .npy (or bytes) streamed piece by piece, Blosc2 built
    # whole in a temporary file, within the budget large answers share.
    array = target.source.meta["kind"] == "ndarray"
    if npy or not array:
        body, length = sub.stream(target, npy)
        mimetype = NPY if npy and array else OCTETS
        return Response(body, mimetype=mimetype, headers={"Content-Length": str(length)})
    return send_file(sub.cframe(target), mimetype=CFRAME)


def _array_response(result: np.ndarray, npy: bool) -> Response:
    """Return an array (0-d for a scalar, as numpy gives it) as .npy or as a Blosc2 frame."""
    if npy:
        buffer = io.BytesIO()
        np.save(buffer, result, allow_pickle=False)
        return Response(buffer.getvalue(), mimetype=NPY)
    # np.ascontiguousarray would make a scalar an array of shape (1,).
    return Response(blosc2.asarray(np.asarray(result, order="C")).to_cframe(), mimetype=CFRAME)


@bp.get("/api/chunk/<path:fullpath>")
def chunk(fullpath: str):
    data, etag = _sub().chunk(fullpath, arg_int("nchunk"))
    return chunk_response(data, {ETAG: etag, DIGEST: storage.chunk_digest(data)})


@bp.get("/api/chunks/<path:fullpath>")
def chunks(fullpath: str):
    frames = _sub().chunks(fullpath, request.args.get("nchunks", ""), request.args.get("etag"))
    return Response(frames, mimetype=FRAMES)


@bp.get("/api/stats")
def stats():
    sub = _sub()
    return jsonify({**sub.fetcher.stats(), "large": sub.budget.stats()})


@bp.get("/api/download/<path:fullpath>")
def download(fullpath: str):
    f, name = _sub().download(fullpath)
    return send_file(f, as_attachment=True, download_name=name, mimetype=OCTETS)


@bp.get("/")
def index():
    sub = _sub()
    rows = "".join(
        f"<li><b>{r['name']}</b> ({'online' if r['online'] else 'offline'},"
        f" {'subscribed' if r['subscribed'] else 'not subscribed'})</li>"
        for r in sub.roots().values()
    )
    page = (
        "<!doctype html><title>catmqtt subscriber</title><h1>catmqtt subscriber</h1>"
        f"<p>Roots known to this subscriber:</p><ul>{rows or '<li>none yet</li>'}</ul>"
        "<p>API: <code>/api/roots</code>, <code>/api/list/ROOT</code>, <code>/api/info/PATH</code>,"
        " <code>/api/fetch/PATH?slice=...</code>, <code>/api/download/PATH</code>.</p>"
    )
    return Response(page, mimetype="text/html")


def create_app(subscriber: Subscriber) -> Flask:
    """Return the subscriber's Flask app."""
    app = Flask(__name__)
    app.config["CATMQTT_SUBSCRIBER"] = subscriber
    app.register_blueprint(bp)
    configure_app(app, subscriber.cache.dir)
    return app
