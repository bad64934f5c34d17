"""This module talks to publishers over HTTP for the subscriber's fetcher.

Every request goes over one pooled keep-alive session, with bounded retries and
timeouts; what a publisher answers is checked before anyone reads it (its
``Content-Range``, its parts header, its size, a chunk against its dataset's
metadata, a manifest against its announcement), and an answer that comes
slower than a minimum rate is given up on. How fast each publisher's bytes come
is measured from its answers, and the pieces of the rests of chunks fetched in
parts go to a publisher only while nothing else is asked of it.

Threads and locks: the methods of `Transport` and `Manifests` are called from
the fetcher's ``fetch`` and ``rest`` threads and from the subscriber's HTTP and
``updates`` threads at once. `Transport._links_lock` guards `_speeds`,
`_gathered` and `_environments`; `Transport._quiet` (a condition) guards the
counts of requests under way per publisher, `_foreground` and `_resting`;
`Manifests._lock` guards its table of manifests. No lock of this module is
held while another lock is taken or while a request is under way. The threads
share one session, each GET on a connection of its own from urllib3's pool
(which has its own lock).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from .. import storage
from ..blocks import chunk_problem
from ..errors import Changed, Unavailable
from ..schema import has_manifest
from ..sessions import environment
from ..wire import ETAG, PARTS, format_block_range, format_range, parse_content_range, parse_parts

if TYPE_CHECKING:
    from ..schema import DatasetMeta

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
# Where only small responses measured a link, its speed includes its latency:
# over a distant but fast link, small chunks then come in parts too.
# How fast a publisher's bytes come is measured by responses of this many
# bytes or more; until one came, by smaller ones adding up to as many (their
# latency weighs more: a publisher of small chunks only is measured too).
SAMPLE = 1 << 20
# Digests of chunk manifests kept in memory (about 100 bytes each), in all.
MANIFEST_DIGESTS = 1 << 18
# The most bytes of an answer read at a time: each read returns what the
# socket holds, up to this, so that how fast it comes is checked as it comes.
READ = 1 << 20


class Upstream(NamedTuple):
    """A version of a dataset (its metadata) and the publisher to fetch its chunks from."""

    root: str
    path: str
    meta: DatasetMeta
    url: str


class Transport:
    """Asks publishers for chunks and manifests, checks what they answer, and
    measures how fast their answers come."""

    def __init__(self, workers: int, timeout: float, min_rate: int) -> None:
        self.timeout = (CONNECT_TIMEOUT, timeout)
        # Bytes a second an answer must come at once `timeout` has passed (see fast_enough).
        self.min_rate = min_rate
        self.session = requests.Session()
        self.session.trust_env = False
        # Bounded retries with backoff: a connection refused or reset, and a
        # publisher saying it is busy or changing (503), are tried again. A
        # read timeout is not (read=False raises it as it is: a 504), nor an
        # answer too slow (its body is read here, after urllib3's retries).
        # A publisher's Retry-After is not waited for: urllib3 would sleep as
        # long as it says, up to 6 hours, holding a fetch worker.
        retry = Retry(
            total=3,
            connect=2,
            read=False,
            status=2,
            status_forcelist=(502, 503, 504),
            backoff_factor=0.2,
            allowed_methods=["GET"],
            raise_on_status=False,
            respect_retry_after_header=False,
        )
        # One connection per worker, one for a piece of a rest, one for manifests.
        adapter = HTTPAdapter(pool_connections=16, pool_maxsize=workers + 2, max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._links_lock = threading.Lock()
        # What the environment says for each publisher's URL.
        self._environments: dict[str, dict[str, Any]] = {}
        # Bytes per second of each publisher's responses, lately (see _measure).
        self._speeds: dict[str, float] = {}
        # Bytes and seconds of each publisher's small responses since the last
        # sample they made; None once a large response came.
        self._gathered: dict[str, tuple[int, float] | None] = {}
        # Requests for chunks, and for pieces of their rests, under way per publisher.
        self._quiet = threading.Condition()
        self._foreground: Counter[str] = Counter()
        self._resting: Counter[str] = Counter()

    def close(self) -> None:
        self.session.close()

    def speed(self, url: str) -> float | None:
        """Return how many bytes a second publisher `url` sends lately; None until measured."""
        with self._links_lock:
            return self._speeds.get(url)

    def chunk(self, source: Upstream, nchunk: int, limit: int) -> tuple[Any, bytes]:
        """Fetch chunk `nchunk` whole: (headers, body of at most `limit` bytes)."""
        with self._under_way(source.url, self._foreground):
            headers, body, _ = self.get(source, f"chunk/{quote(source.path)}", limit, nchunk=nchunk)
        return headers, body

    def blocks(
        self, source: Upstream, nchunk: int, limit: int, blocks: range
    ) -> tuple[Any, bytes | bytearray, list[tuple[int, int]] | None]:
        """Fetch what decoding `blocks` of chunk `nchunk` needs: (headers, chunk, spans),
        the chunk with the bytes of `spans` in and its other bytes zeros; spans None
        if the publisher sent the whole chunk."""
        root, path, meta, _ = source
        text = format_block_range(blocks)
        with self._under_way(source.url, self._foreground):
            headers, body, _ = self.get(source, f"chunk/{quote(path)}", limit, nchunk=nchunk, blocks=text)
        if PARTS not in headers:
            return headers, body, None
        if headers.get(ETAG) != meta["etag"]:
            raise changing(root, path)
        parts = parse_parts(headers[PARTS])
        if parts is None or parts[1] > limit or sum(b - a for a, b in parts[0]) != len(body):
            raise damaged(source, nchunk)
        spans, size = parts
        data = bytearray(size)
        view = memoryview(body)
        for start, stop in spans:
            data[start:stop], view = view[: stop - start], view[stop - start :]
        return headers, data, spans

    def piece(
        self, source: Upstream, nchunk: int, limit: int, span: tuple[int, int], closing: threading.Event
    ) -> tuple[Any, bytes, int | None]:
        """Fetch bytes `span` of chunk `nchunk` once nothing else is fetched from its
        publisher, unless `closing` is set by then; as `get` with a span."""
        with self._under_way(source.url, self._resting, quiet=True):
            if closing.is_set():
                raise stopping()
            return self.get(source, f"chunk/{quote(source.path)}", limit, span, nchunk=nchunk)

    def manifest(self, source: Upstream) -> list[str]:
        """Return the chunk digests of version ``meta["etag"]`` of a dataset, from its publisher."""
        root, path, meta, url = source
        try:
            limit = 64 * meta["nchunks"] + 4096
            manifest = json.loads(self.get(source, f"manifest/{quote(path)}", limit)[1])
        except ValueError:
            manifest = None
        digests = manifest.get("digests") if isinstance(manifest, dict) else None
        if not isinstance(digests, list):
            raise Unavailable(
                f"publisher of root {root!r} at {url} sent no manifest of {path!r}: not a JSON object with"
                " a list of digests",
                status=502,
            )
        if manifest.get("etag") != meta["etag"]:
            raise changing(root, path)
        digests = [str(d) for d in digests]
        # The announcement names the manifest's digest: the publisher's word
        # (its signature, where it signs) for every chunk.
        if has_manifest(meta) and (
            len(digests) != meta["nchunks"] or storage.manifest_digest(digests) != meta["manifest"]
        ):
            raise Unavailable(
                f"publisher of root {root!r} at {url} sent a manifest of {path!r} that its announcement"
                " does not vouch for",
                status=502,
            )
        return digests

    def get(
        self, source: Upstream, endpoint: str, limit: int, span: tuple[int, int] | None = None, **params: Any
    ) -> tuple[Any, bytes, int | None]:
        """GET from a publisher: (headers, body of at most `limit` bytes, None). With
        `span` (start, stop), only those bytes are asked for; if they alone came, the
        third item is the size of the whole. Failures become Unavailable (502, 503 or
        504) naming the publisher; an answer slower than `min_rate` is a 504."""
        url = source.url
        where = f"publisher of root {source.root!r} at {url}"
        started = time.monotonic()
        try:
            response = self.session.get(
                f"{url}/api/{endpoint}",
                params=params,
                headers=None if span is None else {"Range": format_range(span)},
                timeout=self.timeout,
                stream=True,
                **self._environment(url),
            )
            # A body left unread (too large, too slow) closes its connection,
            # which urllib3 then opens anew rather than reuse.
            with response:
                body = self._body(response, limit, started, where)
        except (requests.Timeout, urllib3.exceptions.ReadTimeoutError):
            raise Unavailable(f"{where} did not answer within {self.timeout[1]:g} s", status=504) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError):
            raise Unavailable(f"{where} is unreachable", status=503) from None
        if len(body) > limit:
            raise Unavailable(f"{where} sent more than the {limit} bytes expected", status=502)
        if response.status_code in (200, 206):
            self._measure(url, len(body), time.monotonic() - started)
        if response.status_code == 206 and span is not None:
            # Those bytes, or fewer if the whole ends before `stop`.
            found = parse_content_range(response.headers.get("Content-Range", ""))
            first, last, size = found or (-1, -1, 0)
            if (first, last + 1) != (span[0], min(span[1], size)) or len(body) != last + 1 - first:
                raise Unavailable(f"{where} sent other bytes than the range asked for", status=502)
            return response.headers, body, size
        if response.status_code != 200:
            status = 503 if response.status_code == 503 else 502
            raise Unavailable(f"{where} answered {response.status_code}: {_message(body)}", status=status)
        return response.headers, body, None

    def _body(self, response: requests.Response, limit: int, started: float, where: str) -> bytes:
        """Read the body of `response` (of a request started at `started`, by
        ``time.monotonic()``): at most `limit` bytes and one more, as long as it
        comes fast enough (`fast_enough`), else Unavailable (504)."""
        pieces: list[bytes] = []
        received = 0
        while received <= limit:
            # What one recv brings (requests' own .content reads 10 KiB at a
            # time, which halved the speed of a 4 MiB chunk); each recv still
            # waits for the read timeout at most.
            piece = response.raw.read1(min(READ, limit + 1 - received))
            if not piece:
                break
            pieces.append(piece)
            received += len(piece)
            elapsed = time.monotonic() - started
            if not fast_enough(received, elapsed, self.timeout[1], self.min_rate):
                raise Unavailable(
                    f"{where} sent {received} bytes in {elapsed:.1f} s, slower than fetch_min_rate"
                    f" ({self.min_rate} bytes a second after the first {self.timeout[1]:g} s)",
                    status=504,
                )
        return b"".join(pieces)

    def _environment(self, url: str) -> dict[str, Any]:
        """Return what the environment says for publisher `url` (read once)."""
        with self._links_lock:
            known = self._environments.get(url)
        if known is None:
            known = environment(url)
            with self._links_lock:
                known = self._environments.setdefault(url, known)
        return known

    def _measure(self, url: str, size: int, seconds: float) -> None:
        """Count a response of `size` bytes that took `seconds` towards the speed of `url`."""
        with self._links_lock:
            gathered = self._gathered.get(url, (0, 0.0))
            if size >= SAMPLE:
                self._gathered[url] = None
            elif gathered is None:
                return
            else:
                size, seconds = gathered[0] + size, gathered[1] + seconds
                self._gathered[url] = (0, 0.0) if size >= SAMPLE else (size, seconds)
                if size < SAMPLE:
                    return
            speed = size / max(seconds, 1e-6)
            self._speeds[url] = (self._speeds.get(url, speed) + speed) / 2

    @contextlib.contextmanager
    def _under_way(self, url: str, requests: Counter[str], quiet: bool = False) -> Iterator[None]:
        """Count a request to publisher `url` in `requests` while it is under way,
        once nothing else is if `quiet`."""
        with self._quiet:
            if quiet:
                self._quiet.wait_for(lambda: not self._foreground[url] and not self._resting[url])
            requests[url] += 1
        try:
            yield
        finally:
            with self._quiet:
                requests[url] -= 1
                self._quiet.notify_all()


class Manifests:
    """The digest of every chunk of the dataset versions that name their manifest:
    each fetched once, however many fetches want it at the same time, and kept a
    while (the least recently used go first, past MANIFEST_DIGESTS digests in all)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._lock = threading.Lock()
        self._manifests: OrderedDict[tuple, Future] = OrderedDict()

    def digests(self, source: Upstream) -> list[str] | None:
        """Return the digest of every chunk of a dataset version that names its
        manifest (fetched once, and kept a while); None for one that does not."""
        root, path, meta, _ = source
        if "manifest" not in meta:
            return None
        key = (root, path, meta["etag"], meta["manifest"])
        with self._lock:
            known = self._manifests.get(key)
            mine = known is None
            if mine:
                known = self._manifests[key] = Future()
            self._manifests.move_to_end(key)
        if mine:
            try:
                known.set_result(self.transport.manifest(source))
            except BaseException as exc:
                known.set_exception(exc)
            with self._lock:
                if known.exception() is not None:
                    self._manifests.pop(key, None)
                while sum(len(f.result()) for f in self._done()) > MANIFEST_DIGESTS:
                    del self._manifests[next(k for k, f in self._manifests.items() if f.done())]
        return known.result()

    def _done(self) -> list[Future]:
        return [f for f in self._manifests.values() if f.done() and f.exception() is None]


def fast_enough(received: int, elapsed: float, grace: float, min_rate: int) -> bool:
    """Tell whether an answer that brought `received` bytes in its first `elapsed`
    seconds comes fast enough: `min_rate` bytes for each second past `grace`
    (Apache's mod_reqtimeout MinRate). A link faster than `min_rate` passes
    however late in the grace the answer starts; one dripping bytes fails once the
    grace is over. A `min_rate` of 0 passes everything."""
    return received >= (elapsed - grace) * min_rate


def check_chunk(source: Upstream, nchunk: int, data: bytes | bytearray) -> None:
    """Refuse a chunk that is not what its dataset's metadata says, before
    anything decodes or caches it."""
    root, path, meta, url = source
    problem = chunk_problem(data, meta, nchunk)
    if problem is not None:
        log.warning("refusing chunk %d of %s/%s from %s: %s", nchunk, root, path, url, problem)
        raise Unavailable(
            f"publisher of root {root!r} at {url} sent a chunk {nchunk} of {path!r} that its"
            f" metadata rules out: {problem}",
            status=502,
        )


def damaged(source: Upstream, nchunk: int) -> Unavailable:
    root, path, _, url = source
    return Unavailable(
        f"publisher of root {root!r} at {url} sent a damaged chunk {nchunk} of {path!r}", status=502
    )


def changing(root: str, path: str) -> Changed:
    return Changed(f"{root}/{path}", f"{root}/{path} is changing at its publisher; try again")


def stopping() -> Unavailable:
    return Unavailable("the subscriber is stopping", status=503)


def _message(body: bytes) -> str:
    """Return what a publisher's error answer says, with control characters escaped:
    the message ends on a client's terminal (escape sequences, lines of its own)."""
    try:
        text = str(json.loads(body)["error"])[:500]
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode(errors="replace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
