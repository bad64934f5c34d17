"""This module holds the bundle root: an offline bundle (see `catmqtt.bundle`)
published read-only, as ``catmqtt pub NAME FILE.zip``.

Its datasets keep the metadata and etags the bundle's catalog gives them;
their chunks are read where they lie in the ZIP file (Blosc2 files), or from
a copy compressed once into the state directory (plain files, as a directory
root does). Each chunk's digest is computed from the bytes served, not taken
from the catalog, so that the manifest always vouches for them. Datasets the
bundle left out are announced as skipped, with the reason.

Threads: as every root's (see the package's docstring); a scan opens the
bundle anew when its file changed, and swaps it in with the entries.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import blosc2

from ... import storage
from ...bundle import Bundle
from ...errors import BadRequest, CatmqttError
from ...signing import ANNOUNCER_FIELDS
from . import Entry, Root

log = logging.getLogger(__name__)


class BundleRoot(Root):
    """The datasets of a bundle file, as last scanned."""

    def __init__(self, name: str, path: Path, statedir: str | os.PathLike) -> None:
        super().__init__(name, path, statedir)
        self._bundle: Bundle | None = None
        self._version = ""

    def scan(self) -> dict[str, Entry]:
        try:
            version = storage.file_etag(self.path)
        except OSError as exc:
            raise CatmqttError(f"cannot read the bundle {self.path}: {exc.strerror}") from None
        if self._bundle is not None and version == self._version:
            return self.entries
        bundle = Bundle(self.path)
        found: dict[str, Entry] = {}
        damaged: list[dict[str, str]] = []
        for path, meta in sorted(bundle.metas.items()):
            try:
                # Signed by its publisher (or relay) for its topic: this publisher signs its
                # own, if it signs.
                found[path] = self._describe(
                    bundle, path, {k: v for k, v in meta.items() if k not in ANNOUNCER_FIELDS}
                )
            except CatmqttError as exc:
                log.warning("%s: %s", self.path.name, exc)
                damaged.append({"path": f"/{path}", "reason": str(exc)})
        self.skipped = damaged + [
            {"path": f"/{path}", "reason": f"left out of the bundle: {reason}"}
            for path, reason in sorted(bundle.missing().items())
        ]
        groups = bundle.info.get("groups")
        self.groups = groups if isinstance(groups, dict) else {}
        self._bundle, self._version = bundle, version
        self._set_entries(found)
        return found

    def _describe(self, bundle: Bundle, path: str, meta: dict[str, Any]) -> Entry:
        entry = Entry(bundle, meta)
        with entry.lock:
            schunk = storage.schunk_of(self._handle(entry))
            entry.digests = [storage.chunk_digest(schunk.get_chunk(n)) for n in range(schunk.nchunks)]
        if len(entry.digests) != meta["nchunks"]:
            raise BadRequest(
                f"{path} in the bundle {self.path.name} has {len(entry.digests)} chunks, where its catalog"
                f" says {meta['nchunks']}"
            )
        # A plain file is compressed anew, its CRC checked; a Blosc2 file's chunks are
        # served as they lie, and must be those its manifest lists.
        listed = bundle.manifest(path)
        if meta["kind"] != "file" and listed is not None and listed != entry.digests:
            raise BadRequest(
                f"{path} is damaged in the bundle {self.path.name}: its chunks are not its manifest's"
            )
        meta["manifest"] = storage.manifest_digest(entry.digests)
        return entry

    def _handle(self, entry: Entry) -> blosc2.NDArray | blosc2.SChunk:
        if entry.handle is None:
            bundle, path = entry.source, entry.meta["path"]
            entry.handle = (
                self._compressed(bundle, entry) if entry.meta["kind"] == "file" else bundle.container(path)
            )
        return entry.handle

    def _compressed(self, bundle: Bundle, entry: Entry) -> blosc2.SChunk:
        """Return the SChunk of a plain file of the bundle, compressing it once per etag."""
        frame = self.statedir / "files" / f"{entry.meta['path']}.b2frame"
        schunk = storage.file_frame(frame, entry.meta["etag"])
        if schunk is not None:
            return schunk
        log.info("compressing %s", entry.meta["path"])
        try:
            with bundle.open_member(entry.meta["path"]) as f:
                return storage.compress_stream(f, frame, entry.meta["etag"])
        except zipfile.BadZipFile as exc:
            path = entry.meta["path"]
            raise BadRequest(f"{path} is damaged in the bundle {self.path.name}: {exc}") from None

    def _read_chunk(self, entry: Entry, nchunk: int) -> bytes:
        return storage.schunk_of(self._handle(entry)).get_chunk(nchunk)

    def download(self, path: str) -> tuple[Any, str]:
        entry = self.get(path)
        return entry.source.open_member(path), path.rsplit("/", 1)[-1]
