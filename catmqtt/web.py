"""This module holds what the publisher's and subscriber's HTTP servers share:
JSON errors, path checks and a threaded server that can be stopped."""

from __future__ import annotations

import ctypes
import errno
import io
import json
import logging
import platform
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from waitress import wasyncore
from waitress.buffers import ReadOnlyFileBasedBuffer
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.server import create_server
from waitress.task import ErrorTask, WSGITask
from werkzeug.exceptions import HTTPException

from . import fsutil
from .errors import BadRequest, Busy, CatmqttError, NotFound, TooManyRequests
from .wire import (
    OCTETS,
    asks_no_bytes,
    error_json,
    error_trailer,
    format_content_range,
    parse_int,
    pick_range,
)

log = logging.getLogger(__name__)

# Pieces of a response body at least this big are sent from where they are, not copied.
BY_REFERENCE = 64 << 10
# glibc's mallopt options.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
# The unsent bytes a connection may hold before its worker waits.
HIGH_WATERMARK = 4 << 20
# Seconds a thread holds the GIL while another waits for it.
SWITCH_INTERVAL = 0.001


def tune_switching() -> None:
    """Have a server process's threads take turns at the GIL every millisecond.

    Python hands the GIL to a thread that waits for it after 5 ms by
    default: a small request waits about that long at each of its many turns
    while large answers are built.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)


def tune_allocator() -> None:
    """Have glibc's malloc reuse freed chunk-sized buffers, in a server process.

    By default glibc maps each buffer over a moving threshold afresh and
    unmaps it when freed, and a server's threads each get an arena of their
    own: every 3.5 MB chunk a publisher read then cost about 1,000 page
    faults, and a request for some of its blocks 7.5 ms instead of 4. Here
    buffers of up to 32 MiB come from two arenas that each keep up to 64 MiB
    of freed memory. Nothing changes where malloc is not glibc's.
    """
    if platform.libc_ver()[0] != "glibc":
        return
    mallopt = ctypes.CDLL(None).mallopt
    for option, value in ((M_ARENA_MAX, 2), (M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 64 << 20)):
        mallopt(ctypes.c_int(option), ctypes.c_int(value))


def error_response(exc: CatmqttError) -> Response:
    response = jsonify(error_json(exc))
    response.status_code = exc.status
    return response


def _unsatisfiable(message: str, size: int) -> Response:
    """Return the 416 of a range that asks for no byte of a chunk of `size` bytes."""
    response = error_response(CatmqttError(message, 416))
    response.headers["Content-Range"] = format_content_range(None, size)
    return response


def chunk_response(data: bytes, headers: dict[str, str]) -> Response:
    """Return a chunk's bytes, or only the byte range a ``Range`` header asks for.

    One range gets a 206 (a subscriber completes a chunk it got some blocks
    of first); a range past the end, a 416. Several ranges, or an
    ``If-Range``, get the whole chunk, as HTTP allows.
    """
    headers = {**headers, "Accept-Ranges": "bytes"}
    ranged = "If-Range" not in request.headers
    if ranged and asks_no_bytes(request.headers.get("Range")):
        # werkzeug reads it as no range, which would get the whole chunk.
        return _unsatisfiable(f"{request.headers['Range']} asks for none of the chunk's bytes", len(data))
    wanted = request.range if ranged else None
    span = None if wanted is None or wanted.units != "bytes" else pick_range(wanted.ranges, len(data))
    if span is None:
        return Response(data, mimetype=OCTETS, headers=headers)
    start, stop = span
    if start >= stop:
        return _unsatisfiable(
            f"the range {request.headers['Range']} is outside the chunk's {len(data)} bytes", len(data)
        )
    headers["Content-Range"] = format_content_range(span, len(data))
    headers["Content-Length"] = str(stop - start)
    # A large part is sent from where it is (see _Task), a small one copied.
    part = memoryview(data)[start:stop]
    body = [part] if len(part) >= BY_REFERENCE else bytes(part)
    return Response(body, status=206, mimetype=OCTETS, headers=headers)


def configure_app(app: Flask, statedir: Path) -> None:
    """Set what both apps share; map every error to ``{"error": ..., "status": ...}``.

    A failure to write into `statedir` because its disk is full is a 507.
    """
    # A path like foo//x is refused rather than redirected to foo/x.
    app.url_map.merge_slashes = False
    # Metadata reads best in the order it was built (path, kind, shape...).
    app.json.sort_keys = False

    @app.errorhandler(CatmqttError)
    def catmqtt_error(exc: CatmqttError):
        response = error_response(exc)
        if isinstance(exc, Busy | TooManyRequests) and exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 404:
            return error_response(NotFound(f"no such endpoint: {request.method} {request.path}"))
        response = error_response(CatmqttError(f"{exc.name}: {exc.description}", exc.code or 500))
        # What werkzeug's own answer says in headers: a 405's Allow, which HTTP requires.
        for name, value in exc.get_headers():
            if name != "Content-Type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):
        return error_response(error_of(exc, statedir, f"{request.method} {request.full_path.rstrip('?')}"))


def error_of(exc: Exception, statedir: Path, serving: str) -> CatmqttError:
    """Return the error that tells a client of `exc`, raised serving `serving`.

    A failure to write into `statedir` because its disk is full is a 507.
    """
    if isinstance(exc, CatmqttError):
        return exc
    if fsutil.out_of_space(exc, statedir):
        log.warning("%s: %s", serving, exc)
        return fsutil.no_space(statedir)
    # The details (paths, internals) go to the log, not to the client.
    log.error("internal error serving %s", serving, exc_info=exc)
    return CatmqttError(f"internal error ({type(exc).__name__}); the server's log has the details", 500)


class StreamCut(Exception):
    """Raised by a response body to end it short of its Content-Length: its connection is closed."""


def cut_on_failure(pieces: Iterable[Any], statedir: Path, what: str) -> Iterator[Any]:
    """Yield the `pieces` of `what`, an answer whose status is sent.

    A failure midway cannot change that status: the body then ends with the
    error (`wire.error_trailer`), short of its Content-Length, and its
    connection is closed (`StreamCut`), so that any HTTP client sees it cut
    and catmqtt's client reports the error.
    """
    try:
        yield from pieces
    except Exception as exc:
        error = error_of(exc, statedir, what)
        log.warning("%s failed midway, and ends with its error: %s", what, error)
        yield error_trailer(error)
        raise StreamCut(error.message) from exc


class _BytesFile(io.RawIOBase):
    """A read-only file over bytes whose reads are views of them, not copies."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = min(max(base + offset, 0), len(self._view))
        return self._pos

    def read(self, size: int | None = -1) -> memoryview:
        end = len(self._view) if size is None or size < 0 else min(self._pos + size, len(self._view))
        piece = self._view[self._pos : end]
        self._pos = end
        return piece


class _Task(WSGITask):
    """waitress's WSGI task, except that a large piece of a body is queued by
    reference, as waitress queues a wsgi.file_wrapper, and sent from where it
    is. waitress itself copies every piece into its buffer and out again, and
    twice more to frame it in a chunked response. A body that raises
    StreamCut has its connection closed once what it sent is flushed."""

    def execute(self) -> None:
        try:
            super().execute()
        except StreamCut:
            self.close_on_finish = True
            # Nor may finish() end a chunked body as if it were whole.
            self.chunked_response = False

    def write(self, data: bytes) -> None:
        if len(data) < BY_REFERENCE or not self.complete:
            return super().write(data)
        if not self.wrote_header:
            super().write(b"")
        left = None if self.content_length is None else self.content_length - self.content_bytes_written
        if not self.has_body or (left is not None and left < len(data)):
            # waitress warns and drops what does not belong.
            return super().write(data)
        body = ReadOnlyFileBasedBuffer(_BytesFile(data))
        body.prepare()
        if self.chunked_response:
            self.channel.write_soon(b"%X\r\n" % len(data))
            self.channel.write_soon(body)
            self.channel.write_soon(b"\r\n")
            return None
        if left is not None:
            self.content_bytes_written += len(data)
        self.channel.write_soon(body)
        return None


class _Parser(HTTPRequestParser):
    """waitress's request parser, except that a Content-Length too long for int()
    (over 4300 digits) is invalid, as malformed ones are: waitress let the
    ValueError close the connection without an answer."""

    def parse_header(self, header_plus: bytes) -> None:
        try:
            super().parse_header(header_plus)
        except ValueError:
            raise ParsingError("Content-Length is invalid") from None


class _ErrorTask(ErrorTask):
    """waitress's answer to a request it cannot take (malformed, too large), in JSON as every error."""

    def execute(self) -> None:
        error = self.request.error
        body = json.dumps(error_json(CatmqttError(f"{error.reason}: {error.body}", error.code))).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    task_class = _Task
    error_task_class = _ErrorTask
    parser_class = _Parser

    def send_continue(self) -> None:
        """Send ``100 Continue`` to a request that has a body to send.

        waitress sends it to any request with ``Expect: 100-continue`` and
        then marks the request incomplete: one without a body (a GET) then
        waited for a body that never came, until the connection timed out.
        HTTP lets a server answer such a request at once.
        """
        if self.request.body_rcv is None:
            self.request.expect_continue = False
            return
        super().send_continue()


def arg_int(name: str) -> int:
    """Return the integer query argument `name`, or raise BadRequest."""
    value = request.args.get(name)
    if value is None:
        raise BadRequest(f"missing query argument {name!r}")
    return parse_int(value, f"query argument {name}")


class Server:
    """A waitress server for `app` with `threads` worker threads, run on a daemon thread.

    Waitress is tuned for chunk traffic: large pieces of response bodies are
    sent without a copy (see `_Task`); what waitress buffers stays in memory
    (its default is a temporary file above 1 MB, which made 4 MiB chunks 1.3x
    to 1.5x slower on loopback); a connection's worker waits while more than
    HIGH_WATERMARK bytes are unsent (at 1 MiB, the worker and the I/O thread
    took turns so often that warm streaming was 1.6x slower). Connections are
    kept alive.

    Up to `connections` connections are taken at once (waitress's default
    of 100 let 100 clients that never finish sending a request lock everyone
    else out), and one that sends or takes nothing for `timeout` seconds
    between requests (a request half sent included) is closed. A
    connection's bytes are read without a worker thread: only a whole
    request takes one.
    """

    def __init__(
        self, app: Flask, host: str, port: int, threads: int, connections: int = 1000, timeout: int = 30
    ) -> None:
        # We bind the socket ourselves, for a one-line error.
        try:
            sock = socket.create_server(
                (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
            )
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise CatmqttError(f"cannot listen on {host}:{port}: {reason}") from None
        self._map: dict = {}
        self._server = create_server(
            app,
            map=self._map,
            sockets=[sock],
            threads=threads,
            outbuf_overflow=2 * HIGH_WATERMARK,
            outbuf_high_watermark=HIGH_WATERMARK,
            connection_limit=connections,
            channel_timeout=timeout,
            # How often connections are checked for that timeout.
            cleanup_interval=max(1, min(timeout // 3, 10)),
            ident="catmqtt",
        )
        self._server.channel_class = _Channel
        self.host = host
        self.port = sock.getsockname()[1]
        self._stopping = threading.Event()
        # Held while the trigger is pulled, so that the loop cannot close it meanwhile.
        self._trigger_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"http-{self.port}", daemon=True)

    @classmethod
    def for_node(cls, app: Flask, settings: dict[str, Any]) -> Server:
        """Return the server of a node's settings (``http``, ``http_threads``...)."""
        host, port = settings["http"]
        return cls(
            app, host, port, settings["http_threads"], settings["http_connections"], settings["http_timeout"]
        )

    @property
    def url(self) -> str:
        """The URL to advertise: a wildcard address becomes this host's name."""
        host = socket.getfqdn() if self.host in ("", "0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def start(self) -> Server:
        self._thread.start()
        return self

    def _run(self) -> None:
        # The I/O loop, one turn at a time, so that its own thread closes the sockets it polls.
        while not self._stopping.is_set():
            # poll(), not select(): select() refuses descriptors past 1023.
            wasyncore.loop(timeout=0.2, use_poll=True, map=self._map, count=1)
        with self._trigger_lock:
            wasyncore.close_all(self._map)

    def stop(self) -> None:
        """Stop serving and close every socket; calling it again does nothing."""
        with self._trigger_lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            if self._thread.is_alive():
                self._server.pull_trigger()
        if self._thread.ident is None:
            wasyncore.close_all(self._map)
        else:
            self._thread.join(timeout=5)
        self._server.task_dispatcher.shutdown(timeout=5)
