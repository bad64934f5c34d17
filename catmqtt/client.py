"""This module is catmqtt's Python client: it talks to a subscriber over HTTP.

It needs requests (or only the standard library: see `Client`'s
``plain_http``) and numpy (and Blosc2 to decode chunks); numpy and Blosc2
are imported when data is first read, so that commands that read none start
quickly. The module-level helpers mirror Caterva2's
client API; :class:`Client` keeps one HTTP session and a cache of
compressed chunks for many calls, and :class:`Root`, :class:`Dataset` and
:class:`File` give an object view.

This module holds `Client`'s reads (listings, metadata, selections, chunks,
downloads) and the helpers. Its base, `client_base.Connection`, holds the
session, logging in, and the calls that read no dataset (roots,
subscriptions, nodes, stats, pins); `client_view` holds the object view.
Both are importable from here, as are `default_urlbase` and `credentials`.

A client may be called from several threads. Its session and the metadata
it last read (``Client._metas``, whose entries are replaced whole) are
shared by them. Reading chunks is its `client_reader.Reader`'s: that module says
which threads it starts (``catmqtt-decode``, ``catmqtt-fill``) and which lock
guards what.
"""

from __future__ import annotations

import errno
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from .blocks import chunk_problem
from .chunkcache import ChunkCache
from .client_base import PIN_POLL as PIN_POLL
from .client_base import Connection
from .client_base import credentials as credentials
from .client_base import default_urlbase as default_urlbase
from .client_reader import Reader
from .client_view import Dataset as Dataset
from .client_view import File as File
from .client_view import Root as Root
from .errors import BadRequest, CatmqttError, Changed, InsufficientStorage, NotFound, TooLarge, Unavailable
from .errors import DownloadFailed as DownloadFailed
from .progress import bar
from .slices import as_key, items_at_most, parse_slice
from .wire import ETAG, FRAME, TRAILER_MAX, quote_dataset, read_error_trailer

if TYPE_CHECKING:
    import numpy as np

    from .progress import Progress
    from .schema import DatasetMeta

TIMEOUT = (10, 600)
CACHE_BYTES = 128 << 20
MAX_AGE = 1.0
# A first read of a dataset that selects at most this many items along the axes
# it names is one request, which the subscriber slices (see Client.fetch).
FIRST_READ_ITEMS = 1 << 16
# Datasets remembered as read so (a set, emptied when this large).
FIRST_READS_MAX = 4096
# A read that the dataset's change cuts short is made again, at most this many
# times in all, after a pause that doubles from CHANGED_PAUSE seconds.
CHANGED_TRIES = 3
CHANGED_PAUSE = 0.2

T = TypeVar("T")


class Known(NamedTuple):
    """A dataset's metadata, and when (``time.monotonic()``) it was last known current."""

    meta: DatasetMeta
    checked: float


class Client(Connection):
    """A connection to one subscriber, reused for many calls: its session, logging in and
    the calls that read no dataset are its base's, `client_base.Connection`.

    Parameters
    ----------
    urlbase : str, optional
        The subscriber's base URL, like ``http://127.0.0.1:8002``; by default
        the one `default_urlbase` finds.
    timeout : float or (float, float)
        Connect and read timeouts in seconds, as requests takes them.
    cache_bytes : int
        The budget of the in-process cache of compressed chunks that the
        client's datasets share, least recently used out first: 128 MiB by
        default; 0 turns it off.
    max_age : float
        For how many seconds (one by default) the client reads a dataset
        with the metadata it last checked, from its cache, without asking
        the subscriber; past that, a read first asks whether the dataset
        changed (a conditional GET of its metadata).
    user, password : str, optional
        An account on a subscriber with accounts on: the client logs in
        when the subscriber first asks for credentials, and again when its
        session expires.
    token : str, optional
        A token instead (an agent token from ``catmqtt token create``, or a
        session token from ``POST /auth/login``), sent with every request.
    plain_http : bool
        Send requests through the standard library's http.client instead of
        requests when requests would add nothing to them: the subscriber is
        at an ``http://`` address, and the environment names no proxy and no
        netrc file. A new process starts about 50 ms sooner without
        importing requests (the command line does this); ``session`` is
        then a ``catmqtt.plainhttp.Session``, and a redirect is an error.
    """

    def __init__(
        self,
        urlbase: str | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: Any = TIMEOUT,
        cache_bytes: int = CACHE_BYTES,
        max_age: float = MAX_AGE,
        plain_http: bool = False,
    ) -> None:
        super().__init__(
            urlbase, user=user, password=password, token=token, timeout=timeout, plain_http=plain_http
        )
        self.max_age = max_age
        self.chunk_cache = ChunkCache(cache_bytes)
        self._reader = Reader(self._request, self.urlbase, self.chunk_cache, self.network_errors)
        # Metadata as last read. The cache holds chunks by etag, so that they are
        # read only as long as their etag is known current (see _current); a
        # chunk request names its etag, so a stale entry costs a 412 and one
        # more request, never wrong data.
        self._metas: dict[str, Known] = {}
        # Datasets read once without their metadata, with what was read, so that their
        # next read reads it (and knows which chunks were read in part).
        self._read_once: dict[str, tuple] = {}

    def close(self) -> None:
        super().close()
        self._reader.close()

    def get_list(self, path: str) -> list[str]:
        """Return the dataset paths of a root (``"foo"``) or one of its directories (``"foo/dir1"``)."""
        return self._request("GET", f"list/{quote_dataset(path.strip('/'), directory=True)}").json()

    def get_info(self, dataset: str) -> dict[str, Any]:
        """Return the metadata of `dataset` (``"foo/dir2/ds-4d.b2nd"``), or what
        the publisher of a root (``"foo"``) announced of it: its URL, what it
        skipped and why, its directories' attributes (HDF5 groups')."""
        root = "/" not in dataset
        sent = time.monotonic()
        response = self._request("GET", f"info/{quote_dataset(dataset, directory=root)}")
        return self._parse_info(dataset, response.json(), sent)

    def _parse_info(self, dataset: str, meta: Any, sent: float) -> dict[str, Any]:
        """Check metadata of `dataset` read at `sent`, remember it and return it."""
        # Imported here: `catmqtt roots` and `list` start without it.
        from .schema import parse_dataset, parse_root

        root = "/" not in dataset
        # Checked as a subscriber checks an announcement (its dtype when data is
        # read: numpy is imported then).
        try:
            if not isinstance(meta, dict):
                raise BadRequest("not a JSON object")
            if root:
                return parse_root(meta, dataset)
            parse_dataset(meta, dataset.partition("/")[2])
        except BadRequest as exc:
            raise self._wrong_meta(dataset, exc) from None
        known = self._metas.get(dataset)
        if known is not None and known.meta["etag"] != meta["etag"]:
            self.chunk_cache.forget(dataset, meta["etag"])
        self._metas[dataset] = Known(meta, sent)
        return meta

    def _wrong_meta(self, dataset: str, problem: BadRequest) -> Unavailable:
        return Unavailable(
            f"the subscriber at {self.urlbase} sent metadata of {dataset} that cannot be right: {problem}",
            status=502,
        )

    def _current(self, dataset: str, given: dict[str, Any] | None) -> dict[str, Any]:
        """Return the metadata to read `dataset` with: the client's own if checked in
        the last `max_age` seconds, else (or `given`, if the client has none) the
        metadata after asking the subscriber whether it is still current."""
        known = self._metas.get(dataset)
        if known is None and given is None:
            return self._readable(dataset, self.get_info(dataset))
        meta, checked = known or (given, -math.inf)
        if time.monotonic() - checked < self.max_age:
            return self._readable(dataset, meta)
        sent = time.monotonic()
        response = self._request(
            "GET", f"info/{quote_dataset(dataset)}", headers={"If-None-Match": f'"{meta["etag"]}"'}
        )
        if response.status_code != 304:
            return self._readable(dataset, self._parse_info(dataset, response.json(), sent))
        self._metas[dataset] = Known(meta, sent)
        return self._readable(dataset, meta)

    def _readable(self, dataset: str, meta: dict[str, Any]) -> dict[str, Any]:
        """Return `meta`, after checking that an array's dtype is one its items are read as
        (`get_info` leaves that to reads, which import numpy)."""
        if meta["kind"] == "ndarray":
            from .dtypes import array_dtype

            try:
                array_dtype(meta)
            except BadRequest as exc:
                self._metas.pop(dataset, None)
                raise self._wrong_meta(dataset, exc) from None
        return meta

    def fetch(
        self, dataset: str, slice_: Any = None, *, meta: DatasetMeta | None = None
    ) -> np.ndarray | bytes:
        """Return a selection of `dataset`.

        `slice_` is a numpy basic-indexing expression, as a string
        (``"1, ::-2"``) or as what ``__getitem__`` receives (``(1, slice(None, None, -2))``).
        Arrays come back as numpy arrays; byte streams (``.b2frame`` and plain
        files) as bytes. The compressed chunks the selection touches cross the
        network as they are stored, and are decoded here: by Blosc2's threads
        for one or two chunks, by a pool of threads (one Blosc2 thread each) for more.

        The chunks are kept in the client's cache (see `cache_bytes`), and read
        from there while the dataset's metadata is known current (see
        `max_age`). `meta`, the dataset's metadata if the caller has it and the
        client has none of its own, saves reading it whole.

        A first read of a dataset that selects a few items (at most
        `FIRST_READ_ITEMS` along the axes it names, bounded whatever the
        dataset's shape: ``"1000:2000"``, not ``":10"``) is one request: the
        subscriber slices and sends the selection alone. Its next read reads
        the metadata, and the cache serves from then on.
        """
        key = () if slice_ is None else parse_slice(slice_) if isinstance(slice_, str) else as_key(slice_)
        if meta is None and self._first_read(dataset, key):
            try:
                return self._again(lambda again: self._reader.read_sliced(dataset, key, None))
            except (BadRequest, TooLarge):
                # Said again by a read that knows the shape (an index out of range as an
                # IndexError), or read by its chunks (more than the subscriber slices).
                pass
        first = self._current(dataset, meta)
        before = self._read_once.pop(dataset, None)
        if before is not None:
            self._reader.read_before(dataset, first, before)

        def read(again: bool) -> np.ndarray | bytes:
            # After a change, with the new version's metadata.
            return self._reader.read(
                dataset, self._readable(dataset, self.get_info(dataset)) if again else first, key
            )

        result = self._again(read)
        return result if isinstance(result, bytes) or first["kind"] == "ndarray" else result.tobytes()

    def _first_read(self, dataset: str, key: tuple) -> bool:
        """Tell whether reading `key` of `dataset` is a first read of a few items (see
        `fetch`), and remember that it was."""
        if dataset in self._metas or dataset in self._read_once:
            return False
        bound = items_at_most(key)
        if bound is None or bound > FIRST_READ_ITEMS:
            return False
        if len(self._read_once) >= FIRST_READS_MAX:
            self._read_once.clear()
        self._read_once[dataset] = key
        return True

    def _again(self, read: Callable[[bool], T]) -> T:
        """Return ``read(again)``, called again (with `again` true) while the dataset
        changes under it, at most `CHANGED_TRIES` times in all."""
        for attempt in range(CHANGED_TRIES - 1):
            try:
                return read(attempt > 0)
            except Changed:
                time.sleep(CHANGED_PAUSE * 2**attempt)
        return read(True)

    def get_chunk(self, dataset: str, nchunk: int) -> bytes:
        """Return the compressed bytes of chunk `nchunk` of `dataset`, checked against its metadata."""
        return self._again(lambda again: self._get_chunk(dataset, nchunk))

    def _get_chunk(self, dataset: str, nchunk: int) -> bytes:
        response = self._request("GET", f"chunk/{quote_dataset(dataset)}", params={"nchunk": nchunk})
        known = self._metas.get(dataset)
        meta = None if known is None else known.meta
        if meta is None or meta["etag"] != response.headers.get(ETAG):
            meta = self.get_info(dataset)
        if meta["etag"] != response.headers.get(ETAG):
            raise Changed(dataset, f"{dataset} changed while its chunk {nchunk} was read; read it again")
        problem = chunk_problem(response.content, meta, nchunk)
        if problem is not None:
            raise Unavailable(
                f"the subscriber at {self.urlbase} sent chunk {nchunk} of {dataset}, which is not what its"
                f" metadata says: {problem}",
                status=502,
            )
        return response.content

    def download(
        self, dataset: str, localpath: str | os.PathLike = ".", progress: bool = False
    ) -> Path | list[Path]:
        """Save a dataset, or every dataset of a root or directory, under `localpath`.

        `dataset` is ``ROOT/PATH`` (a dataset: returns the path written,
        ``<localpath>/ROOT/PATH``), ``ROOT`` or ``ROOT/DIR`` (returns the list
        of paths written, in the order of ``get_list``). Each file is
        streamed to a temporary name beside it and renamed once whole, over
        any file of that name. With `progress`, one progress bar on standard
        error follows the bytes of the datasets' chunks as they come (the
        subscriber fetching them from its publisher, where it lacks them),
        and each file is put together here from them.

        Nothing is written outside ``<localpath>/ROOT``: a name that would
        lead out of it (``..``, a symbolic link there) is refused. A
        dataset that cannot be saved does not stop the others: once all
        were tried, `DownloadFailed` names each failure (and the paths
        written, which are kept).
        """
        path = dataset.strip("/")
        root, sep, rest = path.partition("/")
        if sep:
            try:
                listed = self.get_list(path)
            except NotFound:
                # No such directory: a dataset's own error says more (an HDF5 object skipped).
                listed = [rest]
            if listed == [rest]:
                return self._download_one(path, localpath, progress)
        else:
            listed = self.get_list(root)
        return self._download_all(path, listed, localpath, progress)

    def _download_one(self, dataset: str, localpath: str | os.PathLike, progress: bool) -> Path:
        """Save `dataset` as ``<localpath>/<dataset>`` (see `download`); return that path."""
        # Checked before anything is asked.
        local_path(localpath, dataset, make=False)

        def save(again: bool) -> Path:
            if not progress:
                return self._save(dataset, localpath, None, None)
            meta = self._latest(dataset, again)
            with bar(dataset, meta["nbytes"], show=True) as drawn:
                return self._save(dataset, localpath, meta, drawn)

        return self._again(save)

    def _download_all(
        self, path: str, listed: Any, localpath: str | os.PathLike, progress: bool
    ) -> list[Path]:
        """Save each of `listed` (paths relative to the root, as the subscriber listed those
        under `path`) under `localpath`, with one bar for all if `progress`."""
        root = path.partition("/")[0]
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            raise Unavailable(
                f"the subscriber at {self.urlbase} sent a list of {path} that is not one of paths", status=502
            )
        failures: dict[str, CatmqttError] = {}
        metas: dict[str, DatasetMeta | None] = {}
        for name in dict.fromkeys(listed):
            dataset = f"{root}/{name}"
            try:
                # Checked before anything is asked.
                local_path(localpath, dataset, make=False)
                if dataset != path and not dataset.startswith(f"{path}/"):
                    raise BadRequest(f"the subscriber listed it under {path}, where it is not")
                # With a bar, every size first, for its total.
                metas[dataset] = self._latest(dataset, False) if progress else None
            except (CatmqttError, OSError) as exc:
                failures[dataset] = _as_error(exc)
        saved: list[Path] = []
        total = sum(meta["nbytes"] for meta in metas.values() if meta is not None)
        with bar(path, total, show=progress) as drawn:
            for dataset in metas:

                def save(again: bool, dataset: str = dataset) -> Path:
                    meta = self._latest(dataset, again) if progress else None
                    return self._save(dataset, localpath, meta, drawn if progress else None)

                try:
                    saved.append(self._again(save))
                except (CatmqttError, OSError, RuntimeError) as exc:
                    # RuntimeError: Blosc2's, when a write fails (a full disk).
                    failures[dataset] = _as_error(exc)
        if failures:
            ordered = (f"{root}/{name}" for name in dict.fromkeys(listed))
            raise DownloadFailed(path, saved, {d: failures[d] for d in ordered if d in failures})
        return saved

    def _latest(self, dataset: str, again: bool) -> DatasetMeta:
        """Return the metadata to save `dataset` with: read anew `again` (after a change)."""
        return self._readable(dataset, self.get_info(dataset)) if again else self._current(dataset, None)

    def _save(
        self, dataset: str, localpath: str | os.PathLike, meta: DatasetMeta | None, drawn: Progress | None
    ) -> Path:
        """Write `dataset` at ``<localpath>/<dataset>`` through a temporary file beside it: put
        together from its chunks (`meta` its metadata) onto bar `drawn`, or without a bar,
        as the subscriber sends the whole file. Return the path written."""
        if drawn is not None:
            return self._write(localpath, dataset, lambda tmp: self._from_chunks(dataset, meta, tmp, drawn))
        # Checked, asked, then made: nothing is made here for a dataset that is not there.
        local_path(localpath, dataset, make=False)
        with self._request("GET", f"download/{quote_dataset(dataset)}", stream=True) as response:

            def write(tmp: Path) -> None:
                try:
                    with open(tmp, "wb") as f:
                        for block in _body(response, self.network_errors):
                            f.write(block)
                except _CutOff:
                    raise Unavailable(f"the download of {dataset} from {self.urlbase} was cut off") from None

            return self._write(localpath, dataset, write)

    @staticmethod
    def _write(localpath: str | os.PathLike, dataset: str, write: Callable[[Path], None]) -> Path:
        """Return ``<localpath>/<dataset>``, written whole by ``write(tmp)`` at a temporary
        path `tmp` beside it, then renamed; `tmp` is removed if `write` fails."""
        dest = local_path(localpath, dataset)
        tmp = _temporary(dest)
        try:
            write(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, dest)
        return dest

    def _from_chunks(self, dataset: str, meta: DatasetMeta, tmp: Path, drawn: Progress) -> None:
        """Write `dataset` at `tmp` from its chunks, adding the bytes they hold to bar `drawn`
        (and taking them back if it fails)."""
        import blosc2

        from .storage import WholeFile

        done = 0
        try:
            with WholeFile(meta, tmp) as out:
                for n, data in self._reader.chunks(dataset, meta, list(range(meta["nchunks"]))):
                    problem = chunk_problem(data, meta, n)
                    if problem is not None:
                        raise Unavailable(
                            f"the subscriber at {self.urlbase} sent chunk {n} of {dataset}, which is not"
                            f" what its metadata says: {problem}",
                            status=502,
                        )
                    out.put(n, data)
                    size = blosc2.get_cbuffer_sizes(data)[0]
                    drawn.update(size)
                    done += size
        except BaseException:
            drawn.update(-done)
            raise

    def bundle(
        self,
        path: str,
        dest: str | os.PathLike | None = None,
        *,
        cached: bool = False,
        progress: bool = False,
    ) -> Path:
        """Save an offline bundle of ``ROOT[/DIR]`` (see `catmqtt.bundle`) at `dest` (a
        file, or a directory to put ``ROOT[-DIR].zip`` in; the current directory by
        default) and return its path. The subscriber fetches what it lacks; with
        `cached`, it takes only datasets whole in its cache. Datasets left out are in
        the bundle's catalog (``Bundle(path).missing()``). The file appears only once
        complete; with `progress`, a bar on standard error follows its bytes."""
        from .bundle import Bundle

        path = path.strip("/")
        name = path.replace("/", "-") + ".zip"
        target = Path(dest) if dest is not None else Path(name)
        if target.is_dir():
            target = target / name
        tmp = target.with_name(f".{target.name}.part")
        endpoint = f"bundle/{quote_dataset(path, directory=True)}"
        params = {"cached": "true" if cached else "false"}
        try:
            with (
                self._request("GET", endpoint, params=params, stream=True) as response,
                open(tmp, "wb") as f,
                bar(f"bundle {path}", None, show=progress) as drawn,
            ):
                try:
                    for piece in _body(response, self.network_errors):
                        f.write(piece)
                        drawn.update(len(piece))
                except _CutOff:
                    f.flush()
                    raise _cut(tmp, f"the bundle of {path} from {self.urlbase} was cut off") from None
            try:
                Bundle(tmp).close()
            except BadRequest as exc:
                raise Unavailable(
                    f"the subscriber at {self.urlbase} sent a bundle of {path} that cannot be read: {exc}",
                    status=502,
                ) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)
        return target


def local_path(localpath: str | os.PathLike, dataset: str, *, make: bool = True) -> Path:
    """Return where `dataset` (``ROOT/PATH``, as a subscriber names it) is saved,
    ``<localpath>/ROOT/PATH``, after making its directories (unless not `make`).

    Raises BadRequest if that is not a safe path (see `topics.parse_path`), or
    would lead out of ``<localpath>/ROOT`` by a symbolic link already there;
    no directory is made outside it.
    """
    root, _, path = dataset.partition("/")
    quote_dataset(dataset)
    base = Path(localpath) / root
    if make:
        base.mkdir(parents=True, exist_ok=True)
    inside, dest, here = base.resolve(), base / path, base
    for part in path.split("/"):
        here = here / part
        # Checked before anything is made in it, as mkdir follows a link; the file itself
        # would be replaced, not followed, but a link there is a surprise too.
        if here.is_symlink() and not _resolved(here).is_relative_to(inside):
            raise BadRequest(f"cannot save {dataset}: {here} leads out of {base}")
        if make and here != dest:
            here.mkdir(exist_ok=True)
    return dest


def _resolved(link: Path) -> Path:
    """Return where `link` leads; raise BadRequest for a loop of links."""
    try:
        return link.resolve()
    except RuntimeError:
        # Python before 3.13; OSError (ELOOP) from 3.13, with strict=False too.
        raise BadRequest(f"{link} is a loop of symbolic links") from None


def _temporary(dest: Path) -> Path:
    """Return a new empty file beside `dest` to write it in, in place of one a failed
    run left (never following a link of that name)."""
    tmp = dest.with_name(f".{dest.name}.part")
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp


def _as_error(exc: Exception) -> CatmqttError:
    """Return `exc`, why a dataset could not be saved, as one of catmqtt's errors."""
    if isinstance(exc, CatmqttError):
        return exc
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror + (f": {exc.filename}" if exc.filename else "")
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        return InsufficientStorage(reason) if full else CatmqttError(reason)
    return CatmqttError(str(exc) or type(exc).__name__)


class _CutOff(Exception):
    """The body of a response was cut short."""


def _body(response: Any, errors: tuple[type[BaseException], ...]) -> Iterator[bytes]:
    """Yield the body of streamed `response` in pieces; a read of it that raises one of
    `errors` raises _CutOff, told apart from an OSError a write of the pieces may raise
    (a plain session's network errors are OSErrors too)."""
    pieces = response.iter_content(1 << 20)
    while True:
        try:
            piece = next(pieces, None)
        except errors:
            raise _CutOff from None
        if piece is None:
            return
        yield piece


def _cut(part: Path, message: str) -> CatmqttError:
    """Return the error a stream cut short at `part` ended with, else Unavailable(`message`)."""
    with open(part, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - TRAILER_MAX - FRAME.size))
        return read_error_trailer(f.read()) or Unavailable(message)


def _client(urlbase: str | None, user_auth: dict[str, str] | None) -> Client:
    """A client for one call: a cache would only hold memory until it is closed."""
    return Client(urlbase, cache_bytes=0, **credentials(user_auth))


def get_roots(
    urlbase: str | None = None, user_auth: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Return the roots known to the subscriber at `urlbase` (`user_auth`: see `credentials`)."""
    with _client(urlbase, user_auth) as c:
        return c.get_roots()


def subscribe(root: str, urlbase: str | None = None, user_auth: dict[str, str] | None = None) -> str:
    """Ask the subscriber at `urlbase` to follow `root`."""
    with _client(urlbase, user_auth) as c:
        return c.subscribe(root)


def get_list(root: str, urlbase: str | None = None, user_auth: dict[str, str] | None = None) -> list[str]:
    """Return the dataset paths of `root` (or of ``root/dir``)."""
    with _client(urlbase, user_auth) as c:
        return c.get_list(root)


def get_info(
    dataset: str, urlbase: str | None = None, user_auth: dict[str, str] | None = None
) -> dict[str, Any]:
    """Return the metadata of `dataset`."""
    with _client(urlbase, user_auth) as c:
        return c.get_info(dataset)


def fetch(
    dataset: str, urlbase: str | None = None, slice_: Any = None, user_auth: dict[str, str] | None = None
) -> np.ndarray | bytes:
    """Return a selection of `dataset` (see :meth:`Client.fetch`)."""
    with _client(urlbase, user_auth) as c:
        return c.fetch(dataset, slice_)


def download(
    dataset: str,
    urlbase: str | None = None,
    localpath: str | os.PathLike = ".",
    user_auth: dict[str, str] | None = None,
    progress: bool = False,
) -> Path | list[Path]:
    """Save `dataset` under `localpath` and return the path written (with a
    progress bar on standard error if `progress`); a root or directory saves
    every dataset under it and returns the list of paths written (see
    :meth:`Client.download`)."""
    with _client(urlbase, user_auth) as c:
        return c.download(dataset, localpath, progress)
