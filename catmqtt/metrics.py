"""This module holds what the publisher's and the subscriber's ``/metrics`` share:
a Prometheus registry per app, the bytes each sends to its clients, its requests
by endpoint and status, and the answer in Prometheus's text format (made by
prometheus_client, never by hand).

Each app has a registry of its own: several nodes run in one process
(``catmqtt up``, the tests), and prometheus_client's global registry would
mix their counts.

What counts as served: the bytes of answer bodies handed to the HTTP server
to send, streamed answers piece by piece as they go (a client that goes away
mid-answer is counted for what it was sent), files as waitress's I/O loop
sends them. Headers are not counted, nor the answers of ``/metrics`` itself
(a scrape would count itself).

Threads: HTTP threads count requests (prometheus_client's counters take their
own lock) and bytes of bodies, waitress's I/O thread the bytes of files it
sends; `Metrics._lock` guards the count of bytes served. Scrapes run on HTTP
threads and call the registry's collectors, which read what other modules
count under those modules' own locks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from waitress.buffers import ReadOnlyFileBasedBuffer

# The path whose answers are not counted as served.
PATH = "/metrics"


class Metrics(Collector):
    """The registry of one app, with what every node counts: bytes served and
    requests by endpoint (the name of its view) and status."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._served = 0
        self.requests = Counter(
            "catmqtt_requests",
            "HTTP requests answered, by endpoint (the view's name; none: no such route) and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.registry.register(self)

    def install(self, app: Flask) -> None:
        """Count what `app` serves; the app's ``/metrics`` view answers `answer()`."""
        app.config["CATMQTT_METRICS"] = self
        app.after_request(self._answered)
        app.wsgi_app = _Counting(app.wsgi_app, self.count_served)

    def count_served(self, size: int) -> None:
        with self._lock:
            self._served += size

    def served(self) -> int:
        """Return the bytes of answer bodies sent since the app was made."""
        with self._lock:
            return self._served

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "catmqtt_served_bytes",
            "Bytes of HTTP answer bodies sent to clients (not those of /metrics)",
            value=self.served(),
        )

    def answer(self) -> Response:
        """Return the registry's metrics in Prometheus's text format."""
        return Response(generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _answered(self, response: Response) -> Response:
        # Flask names a blueprint's views "blueprint.view": the view's name is enough.
        endpoint = (request.endpoint or "none").rpartition(".")[2]
        self.requests.labels(endpoint, str(response.status_code)).inc()
        return response


class _Counting:
    """WSGI middleware that counts the bytes of answer bodies as the server sends them."""

    def __init__(self, app: Callable[..., Iterable[bytes]], count: Callable[[int], None]) -> None:
        self.app = app
        self.count = count

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == PATH:
            return self.app(environ, start_response)
        if environ.get("wsgi.file_wrapper") is ReadOnlyFileBasedBuffer:
            # waitress sends a file wrapper from its I/O thread, unwrapped: counted there.
            environ["wsgi.file_wrapper"] = lambda file, block_size=32768: _CountedFile(
                file, block_size, self.count
            )
        body = self.app(environ, start_response)
        if isinstance(body, _CountedFile):
            return body
        return _CountedBody(body, self.count)


class _CountedBody:
    """An answer's body, each piece counted once the server took it and asked for the next."""

    def __init__(self, body: Iterable[bytes], count: Callable[[int], None]) -> None:
        self._body = body
        self._count = count

    def __iter__(self) -> Iterator[bytes]:
        for piece in self._body:
            yield piece
            self._count(memoryview(piece).nbytes)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()


class _CountedFile(ReadOnlyFileBasedBuffer):
    """waitress's file wrapper, counting the bytes its I/O loop sends (`skip`), or
    those its worker reads when the file cannot seek (iteration)."""

    def __init__(self, file: Any, block_size: int, count: Callable[[int], None]) -> None:
        super().__init__(file, block_size)
        self._count = count

    def skip(self, numbytes: int, allow_prune: int = 0) -> None:
        super().skip(numbytes, allow_prune)
        self._count(numbytes)

    def get(self, numbytes: int = -1, skip: bool = False) -> bytes:
        data = super().get(numbytes, skip)
        if skip:
            self._count(len(data))
        return data

    def __next__(self) -> bytes:
        data = super().__next__()
        self._count(len(data))
        return data

    next = __next__
