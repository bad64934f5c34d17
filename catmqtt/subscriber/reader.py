"""This module reads what clients ask a subscriber for: roots, datasets,
selections and chunks, fetching the chunks the cache lacks.

The path of a read: `Reader.lookup` finds the dataset's metadata in the
cache, `Reader.selection` checks the selection against it, and
`Reader.read` waits for the dataset's latest update (`Follower.settled`),
has the fetcher bring the missing chunks and decodes the selection from
them (as they arrive, for an array) or from the cache.

Threads: HTTP threads and builder threads (see `large`) call the reader; it
keeps no state of its own, and the cache and fetcher it calls have their own
locks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import storage
from ..assemble import Assembler
from ..dtypes import dtype_from_json
from ..errors import BadRequest, Changed, NotFound, NotSubscribed, TooLarge
from ..schema import RootInfo, has_manifest
from ..slices import chunks_touched, forward, parse_slice, result_shape, select
from ..topics import parse_path, parse_root_name
from ..wire import frames, parse_chunk_list
from .cache import Cache
from .catalogue import Catalogue
from .flights import Fetcher, Upstream
from .follower import Follower
from .large import PIECE

MAX_CHUNKS_PER_REQUEST = 4096
# What /api/info/ROOT tells of a root's announcement, besides what it skipped and its groups.
ROOT_FIELDS = ("name", "url", "publisher", "datasets", "etag", "time", "key")


@dataclass(frozen=True)
class Target:
    """A checked selection of a dataset: where it is and what it will be."""

    fullpath: str
    source: Upstream
    sel: tuple
    shape: tuple[int, ...]
    itemsize: int
    nbytes: int


@dataclass(frozen=True)
class Reader:
    """The operations behind the subscriber's read endpoints; selections are
    refused over `max_fetch` bytes."""

    cache: Cache
    fetcher: Fetcher
    follower: Follower
    max_fetch: int

    @property
    def catalogue(self) -> Catalogue:
        return self.cache.catalogue

    # Roots and datasets

    def roots(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "name": name,
                "url": root["info"]["url"],
                "online": self.follower.statuses.online(root["info"]),
                "subscribed": root["subscribed"],
                "key": root["info"].get("key"),
            }
            for name, root in self.catalogue.roots().items()
        }

    def root_of(self, name: str) -> RootInfo:
        """Return the announcement of a subscribed root, or raise."""
        root = self.catalogue.root(parse_root_name(name))
        if not root["subscribed"]:
            raise NotSubscribed(f"root {name!r} is not subscribed (run 'catmqtt subscribe {name}')")
        return root["info"]

    def root_info(self, name: str) -> dict[str, Any]:
        """Return what root `name`'s publisher announced of it, and how we see it."""
        root = self.catalogue.root(parse_root_name(name))
        info = root["info"]
        answer = {
            **{key: info[key] for key in ROOT_FIELDS if key in info},
            "skipped": info.get("skipped", []),
            "groups": info.get("groups", {}),
            "online": self.follower.statuses.online(info),
            "subscribed": root["subscribed"],
        }
        if "origin" in info:
            # Republished by a relay: where its first publisher announced it, and under which key.
            origin = info["origin"]["payload"]
            answer["origin"] = {"topic": info["origin"]["topic"]}
            answer["origin"].update(
                (key, origin[key]) for key in ("url", "publisher", "key") if key in origin
            )
        return answer

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

    def lookup(self, fullpath: str) -> Upstream:
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
        return Upstream(name, path, meta, info["url"])

    def manifest(self, fullpath: str) -> dict[str, Any]:
        """Return the chunk manifest of a dataset as its publisher serves it (its path,
        etag and the digest of every chunk), which its announcement vouches for: from
        the cache when it holds every chunk, else from the publisher."""
        source = self.lookup(fullpath)
        digests = self.digests(source)
        if digests is None:
            raise NotFound(f"root {source.root!r} keeps no chunk manifest for {source.path!r}")
        return {"path": source.path, "etag": source.meta["etag"], "digests": digests}

    def cached(self, fullpath: str) -> dict[str, Any]:
        """Return how much of the current version of a dataset is cached: chunks and
        their compressed bytes, of the chunks and bytes (as announced) in all."""
        root, path, meta, _ = self.lookup(fullpath)
        ((count, nbytes),) = self.cache.index.query(
            "SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM chunks WHERE root=? AND path=? AND etag=?",
            (root, path, meta["etag"]),
        )
        return {
            "path": path,
            "etag": meta["etag"],
            "nchunks": meta["nchunks"],
            "cached_chunks": count,
            "cached_bytes": nbytes,
            "cbytes": meta.get("cbytes", meta["nbytes"]),
        }

    def digests(self, source: Upstream) -> list[str] | None:
        """Return the chunk digests of the dataset version `source` names, as its manifest
        lists them (None if it has none): the cache's when it holds every chunk, else
        the publisher's."""
        root, path, meta, _ = source
        if not has_manifest(meta):
            return None
        digests = self.cache.chunks.digests(root, path, meta)
        if digests is None or storage.manifest_digest(digests) != meta["manifest"]:
            digests = self.fetcher.digests(source)
        return digests

    # Selections

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
        self.follower.settled(root, path)
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
                result = storage.read_stream_items(handle, key[0], bool(flip), meta["typesize"])
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

    def cache_all(self, target: Target) -> None:
        """Have every chunk of `target` in the cache."""
        root, path, meta, _ = target.source
        self.follower.settled(root, path)
        numbers = chunks_touched(target.sel, meta["shape"], meta["chunks"])
        self.fetcher.ensure(target.source, numbers)
        # Gives back the claims on them (see `Chunks.evict`): each piece read claims its own.
        self.cache.touch(root, path, numbers)

    # Chunks

    def chunk(self, fullpath: str, nchunk: int) -> tuple[bytes, str]:
        source = self.lookup(fullpath)
        root, path, meta, _ = source
        if not 0 <= nchunk < meta["nchunks"]:
            raise BadRequest(f"chunk {nchunk} is out of range: {fullpath!r} has {meta['nchunks']} chunks")
        self.follower.settled(root, path)
        self.fetcher.ensure(source, [nchunk])
        with self.cache.reading(root, path, meta) as handle:
            if handle is None:
                raise Changed(fullpath)
            data = storage.schunk_of(handle).get_chunk(nchunk)
        self.cache.touch(root, path, [nchunk])
        return data, meta["etag"]

    def chunks(self, fullpath: str, numbers_text: str, etag: str | None) -> Iterator[bytes]:
        """Return the frames of the compressed chunks `numbers_text` (``0-15,20``) of a dataset.

        Chunks come as they are available, in no particular order; a failure
        once streaming has begun ends the frames with an error frame (see `wire.frames`).
        """
        source = self.lookup(fullpath)
        root, path, meta, _ = source
        if etag is not None and etag != meta["etag"]:
            message = f"{fullpath} changed (etag {meta['etag']}, not {etag}); read its metadata again"
            raise Changed(fullpath, message, 412)
        numbers = parse_chunk_list(numbers_text, meta["nchunks"])
        if len(numbers) > MAX_CHUNKS_PER_REQUEST or len(numbers) * meta["chunksize"] > self.max_fetch:
            raise TooLarge(
                f"{len(numbers)} chunks of {meta['chunksize']} bytes is more than one request may ask for (at"
                f" most {MAX_CHUNKS_PER_REQUEST} chunks and max_fetch_bytes {self.max_fetch}): ask in parts"
            )
        self.follower.settled(root, path)
        stream = self.fetcher.stream(source, numbers)

        def touched() -> Iterator[tuple[int, bytes]]:
            yield from stream
            # Only once all are sent.
            self.cache.touch(root, path, numbers)

        return frames(touched())
