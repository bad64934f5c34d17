"""This module holds what the publisher's and subscriber's HTTP servers share:
JSON errors, path checks and a threaded server that can be stopped."""

from __future__ import annotations

import errno
import logging
import socket
import threading

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

from .errors import BadRequest, CatmqttError

log = logging.getLogger(__name__)


def error_response(message: str, status: int):
    response = jsonify({"error": message, "status": status})
    response.status_code = status
    return response


def configure_app(app: Flask) -> None:
    """Set what both apps share; map every error to ``{"error": ..., "status": ...}``."""
    # A path like foo//x is refused rather than redirected to foo/x.
    app.url_map.merge_slashes = False
    # Metadata reads best in the order it was built (path, kind, shape...).
    app.json.sort_keys = False

    @app.errorhandler(CatmqttError)
    def catmqtt_error(exc: CatmqttError):
        return error_response(exc.message, exc.status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 404:
            return error_response(f"no such endpoint: {request.method} {request.path}", 404)
        return error_response(f"{exc.name}: {exc.description}", exc.code or 500)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):
        # The details (paths, internals) go to the log, not to the client.
        log.exception("internal error serving %s %s", request.method, request.full_path)
        return error_response(f"internal error ({type(exc).__name__}); the server's log has the details", 500)


def arg_int(name: str) -> int:
    """Return the integer query argument `name`, or raise BadRequest."""
    value = request.args.get(name)
    if value is None:
        raise BadRequest(f"missing query argument {name!r}")
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"query argument {name}={value!r} is not an integer") from None


class Server:
    """A threaded WSGI server for `app`, run on a daemon thread."""

    def __init__(self, app: Flask, host: str, port: int) -> None:
        # We bind the socket ourselves: werkzeug would print and exit on errors.
        try:
            sock = socket.create_server(
                (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
            )
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise CatmqttError(f"cannot listen on {host}:{port}: {reason}") from None
        with sock:
            self._server: BaseWSGIServer = make_server(host, port, app, threaded=True, fd=sock.fileno())
        self.host = host
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"http-{self.port}", daemon=True
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

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
