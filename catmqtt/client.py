"""This module is catmqtt's Python client: it talks to a subscriber over HTTP.

It needs only requests and numpy (and Blosc2 to decode chunks); numpy and
Blosc2 are imported when data is first read, so that commands that read none
start quickly. The module-level helpers mirror Caterva2's
client API; :class:`Client` keeps one HTTP session and a cache of
compressed chunks for many calls, and :class:`Root`, :class:`Dataset` and
:class:`File` give an object view.

A client may be called from several threads. It starts a pool of decoder
threads (``catmqtt-decode``), which only decode, and at most one thread at
a time (``catmqtt-fill``) that fetches chunks whole into its cache; both
share the session and the cache (which has a lock of its own).
``Client._fill_lock`` guards the chunks read in part and the fill thread.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import quote

import requests
import urllib3

from .blocks import chunk_problem
from .chunkcache import ChunkCache, Key
from .errors import BadRequest, CatmqttError, Changed, Unavailable, from_status
from .schema import parse_dataset, parse_root
from .sessions import environment
from .slices import (
    as_key,
    chunks_touched,
    format_key,
    parse_slice,
    result_shape,
    select,
)
from .topics import parse_path, parse_root_name
from .wire import ETAG, FRAME, NPY, TRAILER_MAX, error_from_json, format_chunk_list, read_error_trailer

if TYPE_CHECKING:
    import numpy as np

TIMEOUT = (10, 600)
DECODERS = min(8, os.cpu_count() or 2)
CACHE_BYTES = 128 << 20
MAX_AGE = 1.0
# Chunks read in part (sliced by the subscriber) remembered, so that those read
# again are fetched whole.
IN_PART_MAX = 4096
# A read that the dataset's change cuts short is made again, at most this many
# times in all, after a pause that doubles from CHANGED_PAUSE seconds.
CHANGED_TRIES = 3
CHANGED_PAUSE = 0.2

T = TypeVar("T")


class Known(NamedTuple):
    """A dataset's metadata, and when (``time.monotonic()``) it was last known current."""

    meta: dict[str, Any]
    checked: float


class Client:
    """A connection to one subscriber, reused for many calls.

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
    """

    def __init__(
        self,
        urlbase: str | None = None,
        *,
        timeout: Any = TIMEOUT,
        cache_bytes: int = CACHE_BYTES,
        max_age: float = MAX_AGE,
    ) -> None:
        self.urlbase = (urlbase or default_urlbase()).rstrip("/")
        self.timeout = timeout
        self.max_age = max_age
        self.chunk_cache = ChunkCache(cache_bytes)
        self.session = requests.Session()
        self.session.trust_env = False
        self._environment = environment(self.urlbase)
        self._decoders: ThreadPoolExecutor | None = None
        # Metadata as last read. The cache holds chunks by etag, so that they are
        # read only as long as their etag is known current (see _current); a
        # chunk request names its etag, so a stale entry costs a 412 and one
        # more request, never wrong data.
        self._metas: dict[str, Known] = {}
        self._fill_lock = threading.Lock()
        self._in_part: OrderedDict[Key, None] = OrderedDict()
        self._filler: threading.Thread | None = None

    def close(self) -> None:
        self.session.close()
        if self._decoders is not None:
            self._decoders.shutdown()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, endpoint: str, **kwargs: Any) -> requests.Response:
        """Send a request; turn every failure into a catmqtt.errors exception."""
        url = f"{self.urlbase}/api/{endpoint}"
        try:
            response = self.session.request(method, url, timeout=self.timeout, **self._environment, **kwargs)
        except requests.Timeout:
            raise Unavailable(
                f"the subscriber at {self.urlbase} did not answer in time", status=504
            ) from None
        except requests.RequestException:
            raise Unavailable(
                f"cannot reach the subscriber at {self.urlbase}: is 'catmqtt sub' (or 'catmqtt up') running?"
            ) from None
        if response.status_code >= 400:
            try:
                error = error_from_json(response.json(), response.status_code)
            except ValueError:
                error = None
            raise error or from_status(
                response.status_code, f"{response.status_code} {response.reason} from {url}"
            )
        return response

    def get_roots(self) -> dict[str, dict[str, Any]]:
        """Return the known roots: ``{name: {"name", "url", "online", "subscribed"}}``."""
        return self._request("GET", "roots").json()

    def subscribe(self, root: str) -> str:
        """Ask the subscriber to follow `root`; returns ``"Ok"``."""
        return self._request("POST", f"subscribe/{quote(root, safe='')}").json()

    def unsubscribe(self, root: str) -> str:
        """Ask the subscriber to stop following `root`; returns ``"Ok"``."""
        return self._request("POST", f"unsubscribe/{quote(root, safe='')}").json()

    def get_list(self, path: str) -> list[str]:
        """Return the dataset paths of a root (``"foo"``) or one of its directories (``"foo/dir1"``)."""
        return self._request("GET", f"list/{_quote(path.strip('/'), directory=True)}").json()

    def get_info(self, dataset: str) -> dict[str, Any]:
        """Return the metadata of `dataset` (``"foo/dir2/ds-4d.b2nd"``), or what
        the publisher of a root (``"foo"``) announced of it: its URL, what it
        skipped and why, its directories' attributes (HDF5 groups')."""
        root = "/" not in dataset
        sent = time.monotonic()
        response = self._request("GET", f"info/{_quote(dataset, directory=root)}")
        return self._parse_info(dataset, response.json(), sent)

    def _parse_info(self, dataset: str, meta: Any, sent: float) -> dict[str, Any]:
        """Check metadata of `dataset` read at `sent`, remember it and return it."""
        root = "/" not in dataset
        # Checked as a subscriber checks an announcement: chunks are decoded by it.
        try:
            if not isinstance(meta, dict):
                raise BadRequest("not a JSON object")
            if root:
                return parse_root(meta, dataset)
            parse_dataset(meta, dataset.partition("/")[2])
            if meta["kind"] == "ndarray":
                from .dtypes import array_dtype

                array_dtype(meta)
        except BadRequest as exc:
            raise Unavailable(
                f"the subscriber at {self.urlbase} sent metadata of {dataset} that cannot be right: {exc}",
                status=502,
            ) from None
        known = self._metas.get(dataset)
        if known is not None and known.meta["etag"] != meta["etag"]:
            self.chunk_cache.forget(dataset, meta["etag"])
        self._metas[dataset] = Known(meta, sent)
        return meta

    def _current(self, dataset: str, given: dict[str, Any] | None) -> dict[str, Any]:
        """Return the metadata to read `dataset` with: the client's own if checked in
        the last `max_age` seconds, else (or `given`, if the client has none) the
        metadata after asking the subscriber whether it is still current."""
        known = self._metas.get(dataset)
        if known is None and given is None:
            return self.get_info(dataset)
        meta, checked = known or (given, -math.inf)
        if time.monotonic() - checked < self.max_age:
            return meta
        sent = time.monotonic()
        response = self._request(
            "GET", f"info/{_quote(dataset)}", headers={"If-None-Match": f'"{meta["etag"]}"'}
        )
        if response.status_code != 304:
            return self._parse_info(dataset, response.json(), sent)
        self._metas[dataset] = Known(meta, sent)
        return meta

    def fetch(
        self, dataset: str, slice_: Any = None, *, meta: dict[str, Any] | None = None
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
        """
        key = () if slice_ is None else parse_slice(slice_) if isinstance(slice_, str) else as_key(slice_)
        first = self._current(dataset, meta)

        def read(again: bool) -> np.ndarray:
            # After a change, with the new version's metadata.
            return self._fetch_chunks(dataset, self.get_info(dataset) if again else first, key)

        result = self._again(read)
        return result if first["kind"] == "ndarray" else result.tobytes()

    def _again(self, read: Callable[[bool], T]) -> T:
        """Return ``read(again)``, called again (with `again` true) while the dataset
        changes under it, at most `CHANGED_TRIES` times in all."""
        for attempt in range(CHANGED_TRIES - 1):
            try:
                return read(attempt > 0)
            except Changed:
                time.sleep(CHANGED_PAUSE * 2**attempt)
        return read(True)

    def _fetch_chunks(self, dataset: str, meta: dict[str, Any], key: tuple) -> np.ndarray:
        sel = select(key, meta["shape"])
        numbers = chunks_touched(sel, meta["shape"], meta["chunks"])
        found = {n: self.chunk_cache.get((dataset, meta["etag"], n)) for n in numbers}
        cached = {n: data for n, data in found.items() if data is not None}
        missing = [n for n in numbers if n not in cached]
        # A small part of big chunks: let the subscriber slice, and send only that.
        chunk_bytes = meta.get("cbytes", meta["nbytes"]) / max(meta["nchunks"], 1)
        if 4 * math.prod(result_shape(sel)) * meta["typesize"] < len(missing) * chunk_bytes:
            result = self._fetch_sliced(dataset, meta, key)
            self._read_in_part(dataset, meta, missing, chunk_bytes)
            return result
        # Imported only here: a first read sliced by the subscriber is quicker without.
        from .assemble import Assembler, release_gil

        release_gil()
        # Up to two chunks are decoded here, each with Blosc2's threads; more, by a
        # pool of threads as they arrive, each chunk with one.
        threaded = len(numbers) > 2
        assembler = Assembler(
            meta, sel, nthreads=1 if threaded else None, sender=f"the subscriber at {self.urlbase}"
        )
        pending: list[Future] = []

        def add(n: int, data: bytes) -> None:
            if not threaded:
                assembler.add(n, data)
                return
            pending.append(self._decoder().submit(assembler.add, n, data))
            # Bound the compressed bytes waiting to be decoded.
            while len(pending) > 4 * DECODERS:
                pending.pop(0).result()

        for n, data in cached.items():
            add(n, data)
        for batch in _batches(missing):
            params = {"nchunks": format_chunk_list(batch), "etag": meta["etag"]}
            with self._request("GET", f"chunks/{_quote(dataset)}", params=params, stream=True) as response:
                for n, data in _frames(response, self.urlbase):
                    self._keep(dataset, meta, n, data)
                    add(n, data)
        for future in pending:
            future.result()
        return assembler.result()

    def _keep(self, dataset: str, meta: dict[str, Any], nchunk: int, data: bytes) -> None:
        """Cache a chunk, if it passes the checks any chunk passes before it is decoded."""
        if self.chunk_cache.budget and chunk_problem(data, meta, nchunk) is None:
            self.chunk_cache.put((dataset, meta["etag"], nchunk), data)

    def _read_in_part(
        self, dataset: str, meta: dict[str, Any], numbers: list[int], chunk_bytes: float
    ) -> None:
        """Note that chunks `numbers` were read in part; fetch those read so before
        whole into the cache, in the background, unless a fetch of that kind runs.

        Reading a chunk in part again hints that it will be read once more. A
        chunk read once is not fetched whole: a scan in small slices would
        fetch every chunk twice, and slow down its own next reads.
        """
        budget = self.chunk_cache.budget
        if not budget:
            return
        with self._fill_lock:
            again = []
            for n in numbers:
                key = (dataset, meta["etag"], n)
                if key in self._in_part:
                    del self._in_part[key]
                    again.append(n)
                    continue
                self._in_part[key] = None
                if len(self._in_part) > IN_PART_MAX:
                    self._in_part.popitem(last=False)
            # Whole chunks of at most half the budget, one fetch at a time.
            again = again[: int(budget // (2 * max(chunk_bytes, 1)))]
            if not again or (self._filler is not None and self._filler.is_alive()):
                return
            self._filler = threading.Thread(
                target=self._fill, args=(dataset, meta, again), name="catmqtt-fill", daemon=True
            )
            self._filler.start()

    def _fill(self, dataset: str, meta: dict[str, Any], numbers: list[int]) -> None:
        """Fetch chunks `numbers` of `dataset` whole into the cache."""
        params = {"nchunks": format_chunk_list(numbers), "etag": meta["etag"]}
        try:
            with self._request("GET", f"chunks/{_quote(dataset)}", params=params, stream=True) as response:
                for n, data in _frames(response, self.urlbase):
                    self._keep(dataset, meta, n, data)
        except CatmqttError:
            # Changed, or cut off (the client closed): the chunks are read in part again.
            pass

    def _fetch_sliced(self, dataset: str, meta: dict[str, Any], key: tuple) -> np.ndarray:
        import numpy as np

        params = {"slice": format_key(key)}
        cut = f"the transfer of {dataset} from {self.urlbase} was cut off"
        endpoint = f"fetch/{_quote(dataset)}"
        with self._request("GET", endpoint, params=params, headers={"Accept": NPY}, stream=True) as response:
            content = _content(response, cut)
        try:
            if meta["kind"] != "ndarray":
                return np.frombuffer(content, dtype=f"V{meta['typesize']}")
            return np.load(io.BytesIO(content), allow_pickle=False)
        except ValueError:
            raise Unavailable(cut) from None

    def _decoder(self) -> ThreadPoolExecutor:
        if self._decoders is None:
            self._decoders = ThreadPoolExecutor(DECODERS, thread_name_prefix="catmqtt-decode")
        return self._decoders

    def get_chunk(self, dataset: str, nchunk: int) -> bytes:
        """Return the compressed bytes of chunk `nchunk` of `dataset`, checked against its metadata."""
        return self._again(lambda again: self._get_chunk(dataset, nchunk))

    def _get_chunk(self, dataset: str, nchunk: int) -> bytes:
        response = self._request("GET", f"chunk/{_quote(dataset)}", params={"nchunk": nchunk})
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

    def download(self, dataset: str, localpath: str | os.PathLike = ".") -> Path:
        """Save the whole `dataset` as ``<localpath>/<dataset>`` and return that path.

        The file is streamed to disk, and appears only once complete.
        """
        return self._again(lambda again: self._download(dataset, localpath))

    def _download(self, dataset: str, localpath: str | os.PathLike) -> Path:
        dest = Path(localpath) / dataset
        with self._request("GET", f"download/{_quote(dataset)}", stream=True) as response:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.part")
            try:
                with open(tmp, "wb") as f:
                    for block in response.iter_content(1 << 20):
                        f.write(block)
            except requests.RequestException:
                tmp.unlink(missing_ok=True)
                raise Unavailable(f"the download of {dataset} from {self.urlbase} was cut off") from None
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, dest)
        return dest


def _batches(numbers: list[int]) -> Iterator[list[int]]:
    """Split chunk numbers into requests whose query stays short."""
    batch: list[int] = []
    for n in numbers:
        batch.append(n)
        if len(batch) >= 512 and len(format_chunk_list(batch)) > 2000:
            yield batch
            batch = []
    if batch:
        yield batch


def _frames(response: requests.Response, urlbase: str) -> Iterator[tuple[int, bytes]]:
    """Yield (chunk number, bytes) from a chunks response; raise what an error frame says."""
    raw = response.raw
    while True:
        header = _read_exact(raw, FRAME.size, urlbase, at_frame=True)
        if header is None:
            return
        nchunk, size = FRAME.unpack(header)
        data = _read_exact(raw, size, urlbase)
        if nchunk == -1:
            try:
                error = error_from_json(json.loads(data))
            except ValueError:
                error = None
            raise error or Unavailable(f"the subscriber at {urlbase} sent a malformed error frame")
        yield nchunk, data


def _content(response: requests.Response, cut: str) -> bytes:
    """Return the whole body of a streamed response.

    A body cut short raises the error the server ended it with (see
    `wire.error_trailer`), else Unavailable(`cut`).
    """
    parts: list[bytes] = []
    try:
        # read1, not read: read loses what it holds when the body proves short.
        while part := response.raw.read1(1 << 20):
            parts.append(part)
    except (requests.RequestException, OSError, urllib3.exceptions.HTTPError):
        raise read_error_trailer(_tail(parts, TRAILER_MAX + FRAME.size)) or Unavailable(cut) from None
    return b"".join(parts)


def _tail(parts: list[bytes], size: int) -> bytes:
    """Return the last `size` bytes of the concatenation of `parts`."""
    last: list[bytes] = []
    total = 0
    for part in reversed(parts):
        last.append(part)
        total += len(part)
        if total >= size:
            break
    return b"".join(reversed(last))[-size:]


def _read_exact(raw: Any, size: int, urlbase: str, *, at_frame: bool = False) -> bytes | None:
    parts, left = [], size
    try:
        while left:
            part = raw.read(left)
            if not part:
                if at_frame and left == size:
                    return None
                raise Unavailable(f"the transfer from the subscriber at {urlbase} was cut off")
            parts.append(part)
            left -= len(part)
    except (requests.RequestException, OSError, urllib3.exceptions.HTTPError):
        raise Unavailable(f"the transfer from the subscriber at {urlbase} was cut off") from None
    return b"".join(parts)


def _quote(dataset: str, *, directory: bool = False) -> str:
    """Check ``root/path`` (just ``root`` too if `directory`) and quote it for a URL."""
    root, sep, path = dataset.partition("/")
    parse_root_name(root)
    if sep or not directory:
        if not path:
            raise BadRequest(f"invalid dataset path {dataset!r}: expected ROOT/PATH, like foo/ds-1d.b2nd")
        parse_path(path)
    return quote(dataset)


def default_urlbase() -> str:
    """Return the subscriber a client talks to when given none, found as the
    command line finds it: ``$CATMQTT_SUB``, else ``client.sub`` (or
    ``subscriber.urlbase``) of ``./catmqtt.yaml``, else http://127.0.0.1:8002."""
    # Imported here: the configuration file needs yaml, which `import catmqtt` does not load.
    from . import config

    return config.client_sub(config.load(None), None)


def _client(urlbase: str | None) -> Client:
    """A client for one call: a cache would only hold memory until it is closed."""
    return Client(urlbase, cache_bytes=0)


def get_roots(urlbase: str | None = None) -> dict[str, dict[str, Any]]:
    """Return the roots known to the subscriber at `urlbase`."""
    with _client(urlbase) as c:
        return c.get_roots()


def subscribe(root: str, urlbase: str | None = None) -> str:
    """Ask the subscriber at `urlbase` to follow `root`."""
    with _client(urlbase) as c:
        return c.subscribe(root)


def get_list(root: str, urlbase: str | None = None) -> list[str]:
    """Return the dataset paths of `root` (or of ``root/dir``)."""
    with _client(urlbase) as c:
        return c.get_list(root)


def get_info(dataset: str, urlbase: str | None = None) -> dict[str, Any]:
    """Return the metadata of `dataset`."""
    with _client(urlbase) as c:
        return c.get_info(dataset)


def fetch(dataset: str, urlbase: str | None = None, slice_: Any = None) -> np.ndarray | bytes:
    """Return a selection of `dataset` (see :meth:`Client.fetch`)."""
    with _client(urlbase) as c:
        return c.fetch(dataset, slice_)


def download(dataset: str, urlbase: str | None = None, localpath: str | os.PathLike = ".") -> Path:
    """Save `dataset` under `localpath` and return the path written."""
    with _client(urlbase) as c:
        return c.download(dataset, localpath)


class Root:
    """A root on a subscriber; creating one subscribes to it.

    Parameters
    ----------
    name : str
        The root's name.
    urlbase : str, optional
        The subscriber's base URL.
    client : Client, optional
        A client to share; one is made from `urlbase` otherwise.
    """

    def __init__(self, name: str, urlbase: str | None = None, *, client: Client | None = None) -> None:
        self.name = name
        self.client = client or Client(urlbase)
        self.client.subscribe(name)

    @property
    def node_list(self) -> list[str]:
        """The paths of the root's datasets, relative to the root, sorted."""
        return self.client.get_list(self.name)

    @property
    def info(self) -> dict[str, Any]:
        """What the root's publisher announced of it (see :meth:`Client.get_info`)."""
        return self.client.get_info(self.name)

    def __repr__(self) -> str:
        return f"<Root {self.name!r} at {self.client.urlbase}>"

    def __getitem__(self, path: str) -> File:
        meta = self.client.get_info(f"{self.name}/{path}")
        cls = Dataset if meta["kind"] == "ndarray" else File
        return cls(self, path, meta)


class File:
    """A byte stream of a root: a ``.b2frame`` SChunk or a plain file."""

    def __init__(self, root: Root, path: str, meta: dict[str, Any]) -> None:
        self.root = root
        self.name = path
        self.path = f"{root.name}/{path}"
        self.meta = meta

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r}>"

    @property
    def vlmeta(self) -> dict[str, Any]:
        return self.meta["vlmeta"]

    def __len__(self) -> int:
        return self.meta["shape"][0] if self.meta["shape"] else 1

    def __getitem__(self, key: Any) -> Any:
        return self.fetch(key)

    def fetch(self, key: Any = None) -> Any:
        """Return the selection `key` (an index, slice or slice string)."""
        return self.root.client.fetch(self.path, key, meta=self.meta)

    def download(self, localpath: str | os.PathLike = ".") -> Path:
        """Save the whole dataset under `localpath`; return the path written."""
        return self.root.client.download(self.path, localpath)


class Dataset(File):
    """An n-dimensional array of a root; indexing fetches data on demand.

    It behaves as a read-only numpy array would: ``np.asarray(ds)`` fetches
    it whole, ``len(ds)`` is the length of its first axis, iterating yields
    its rows (fetched a chunk's worth at a time), ``ds["field"]`` is a field
    of a record array, and an index out of range raises IndexError.
    """

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        import numpy as np

        return np.asarray(self.fetch(), dtype=dtype)

    def __len__(self) -> int:
        if not self.meta["shape"]:
            raise TypeError("len() of unsized object (a 0-d dataset)")
        return self.meta["shape"][0]

    def __iter__(self) -> Iterator[Any]:
        rows = len(self)
        step = max(self.meta["chunks"][0], 1)
        for start in range(0, rows, step):
            yield from self.fetch(slice(start, min(start + step, rows)))

    def __getitem__(self, key: Any) -> Any:
        names = self.dtype.names or ()
        if isinstance(key, str) and names:
            if key in names:
                return self.fetch()[key]
            try:
                parse_slice(key)
            except BadRequest:
                raise BadRequest(
                    f"{key[:60]!r} is neither a field of {self.path} ({', '.join(names)}) nor a slice"
                ) from None
        return self.fetch(key)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.meta["shape"])

    @property
    def ndim(self) -> int:
        return len(self.meta["shape"])

    @property
    def dtype(self) -> np.dtype:
        from .dtypes import dtype_from_json

        return dtype_from_json(self.meta["dtype"])

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.meta["chunks"])

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(self.meta["blocks"])

    def fetch(self, key: Any = None) -> Any:
        import numpy as np

        result = super().fetch(key)
        # numpy gives a scalar, not a 0-d array, when no axis is left (and no '...').
        if isinstance(result, np.ndarray) and result.ndim == 0:
            items = () if key is None else parse_slice(key) if isinstance(key, str) else as_key(key)
            if Ellipsis not in items:
                return result[()]
        return result
