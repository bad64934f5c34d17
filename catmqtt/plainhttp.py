"""This module is a small HTTP session over the standard library's http.client,
for the command line.

Importing requests takes 50 to 90 ms, a third of a client command's run. A
command's few requests to a subscriber at an ``http://`` address, with no
proxy and no netrc file in the environment, need none of what requests adds
(proxies, TLS, netrc credentials, cookies, redirects), so the command line
sends them through a `Session` of this module (`sessions.transport` chooses).

A `Session` has the part of ``requests.Session`` that the client uses: its
``headers``, ``request`` giving a `Response` (``status_code``, ``reason``,
``headers``, ``content``, ``json()``, ``iter_content``, ``raw.read`` and
``raw.read1``, and a context manager that releases it), and ``close``. It
keeps connections alive, and threads may share it. A redirect is a response
like any other: the client tells it as an error. Failures are those of
http.client: `ERRORS`, of which timeouts are ``TimeoutError``.
"""

from __future__ import annotations

import http.client
import json as jsonlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, Self
from urllib.parse import urlencode, urlsplit

# What a request, or a read of its body, fails with when the network does.
ERRORS = (OSError, http.client.HTTPException)
# Idle connections kept alive, per host.
IDLE_MAX = 8


class Session:
    """Keep-alive HTTP connections to hosts at ``http://`` addresses, shared by threads."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {"User-Agent": "catmqtt", "Accept": "*/*"}
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        timeout: float | tuple[float, float],
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> Response:
        """Send a request and return its response, its body read unless `stream`.
        `timeout` is as requests takes it: seconds, or (connect, read) seconds."""
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http:// addresses are sent without requests, not {url}")
        target = parts.path or "/"
        query = "&".join(q for q in (parts.query, urlencode(params or {}, doseq=True)) if q)
        if query:
            target += f"?{query}"
        sent = {**self.headers, **(headers or {})}
        body = None
        if json is not None:
            body = jsonlib.dumps(json).encode()
            sent["Content-Type"] = "application/json"
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        conn = self._connection(parts.netloc, connect)
        try:
            conn.sock.settimeout(read)
            conn.request(method, target, body=body, headers=sent)
            response = Response(conn.getresponse(), lambda: self._release(parts.netloc, conn), conn.close)
            if not stream:
                response.read()
        except BaseException:
            conn.close()
            raise
        return response

    def _connection(self, netloc: str, timeout: float) -> http.client.HTTPConnection:
        """Return an idle connection to `netloc` still open, or a new one, connected."""
        while True:
            with self._lock:
                idle = self._idle.get(netloc)
                conn = idle.pop() if idle else None
            if conn is None:
                conn = http.client.HTTPConnection(netloc, timeout=timeout)
                conn.connect()
                return conn
            if _open(conn.sock):
                return conn
            conn.close()

    def _release(self, netloc: str, conn: http.client.HTTPConnection) -> None:
        """Keep `conn`, its last response read whole, for the next request to `netloc`."""
        with self._lock:
            idle = self._idle.setdefault(netloc, [])
            if len(idle) < IDLE_MAX:
                idle.append(conn)
                return
        conn.close()


class Body:
    """The body of a response, read from its connection: `read` and `read1` as
    http.client's, except that a body cut short raises ``http.client.IncompleteRead``.
    Once the body is read whole, the connection is released (`release`); if the
    body is left unread (`close`), it is closed (`drop`)."""

    def __init__(
        self, raw: http.client.HTTPResponse, release: Callable[[], None], drop: Callable[[], None]
    ) -> None:
        self._raw = raw
        self._release = release
        self._drop = drop
        self._done = False

    def read(self, size: int = -1) -> bytes:
        return self._checked(self._raw.read if size < 0 else lambda: self._raw.read(size), size)

    def read1(self, size: int = -1) -> bytes:
        return self._checked(lambda: self._raw.read1(size), size)

    def _checked(self, read: Callable[[], bytes], size: int) -> bytes:
        left = self._raw.length
        data = read()
        if not data and size and left:
            # http.client's read(n) and read1 end a short body as if it were whole.
            self.close()
            raise http.client.IncompleteRead(b"", left)
        if self._raw.isclosed() and not self._done:
            self._done = True
            if self._raw.will_close:
                self._drop()
            else:
                self._release()
        return data

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._raw.close()
            self._drop()


class Response:
    """A response to `Session.request`: status, reason, headers (case-insensitive
    ``get``), and its body (`raw`, a `Body`), read whole by `read` or in pieces;
    `release` and `drop` are the body's."""

    def __init__(
        self, raw: http.client.HTTPResponse, release: Callable[[], None], drop: Callable[[], None]
    ) -> None:
        self.raw = Body(raw, release, drop)
        self.status_code = raw.status
        self.reason = raw.reason
        self.headers = raw.headers
        self._content: bytes | None = None

    def read(self) -> bytes:
        """Return the body, read whole on the first call."""
        if self._content is None:
            self._content = self.raw.read()
        return self._content

    @property
    def content(self) -> bytes:
        return self.read()

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def iter_content(self, size: int) -> Iterator[bytes]:
        while data := self.raw.read(size):
            yield data

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open(sock: socket.socket) -> bool:
    """Tell whether a kept-alive connection's socket may take a request: the server
    has neither closed it nor sent anything unasked."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        # Anything read, an end of file included, unfits it.
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        pass
    finally:
        sock.settimeout(timeout)
    return False
