"""This module holds the publisher's Flask views and `create_app`, which serves one root.

Threads: the views run on the HTTP server's worker threads, several at once.
They only call the root's methods, which are safe from any thread: the root
swaps its entries in whole under ``Root._lock`` when it rescans, guards the
chunks it keeps under ``Root._recent_lock``, and reads a dataset's bytes
under the entry's lock or its own I/O lock (see :mod:`.roots`). The views
keep no state of their own (what ``/metrics`` counts is `catmqtt.metrics`').
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_file

from .. import openapi
from ..metrics import Metrics
from ..web import OCTETS, arg_int, chunk_response, configure_app
from ..wire import DIGEST, ETAG, PARTS, format_parts, parse_block_range
from .roots import Root

bp = Blueprint("publisher", __name__)


def _root() -> Root:
    return current_app.config["CATMQTT_ROOT"]


@bp.get("/api/list")
def list_datasets():
    return jsonify(sorted(_root().entries))


@bp.get("/api/info/<path:path>")
def info(path: str):
    entry = _root().get(path)
    response = jsonify(entry.meta)
    response.set_etag(entry.meta["etag"])
    return response.make_conditional(request)


@bp.get("/api/chunk/<path:path>")
def chunk(path: str):
    nchunk = arg_int("nchunk")
    blocks = request.args.get("blocks")
    wanted = None if blocks is None else parse_block_range(blocks)
    reply = _root().chunk_reply(path, nchunk, wanted, ranged="Range" in request.headers)
    headers = {ETAG: reply.etag, DIGEST: reply.digest}
    if reply.spans is not None:
        view = memoryview(reply.data)
        body = b"".join(view[start:stop] for start, stop in reply.spans)
        return Response(
            body, mimetype=OCTETS, headers={**headers, PARTS: format_parts(reply.spans, len(reply.data))}
        )
    return chunk_response(reply.data, headers)


@bp.get("/api/manifest/<path:path>")
def manifest(path: str):
    return jsonify(_root().manifest(path))


@bp.get("/api/download/<path:path>")
def download(path: str):
    root = _root()
    file, name = root.download(path)
    return send_file(
        file, as_attachment=True, download_name=name, mimetype=OCTETS, etag=root.get(path).meta["etag"]
    )


@bp.get("/api/openapi.json")
def openapi_document():
    return jsonify(openapi.publisher())


def create_app(root: Root) -> Flask:
    """Return the publisher's Flask app serving `root` (scanned or not: the app reads
    its entries at each request)."""
    # Named as the publisher module was, whose name its log lines carry.
    app = Flask(__package__, static_folder=None)
    app.config["CATMQTT_ROOT"] = root
    app.register_blueprint(bp)
    configure_app(app, root.statedir)
    Metrics().install(app)
    return app


@bp.get("/metrics")
def prometheus_metrics():
    return current_app.config["CATMQTT_METRICS"].answer()
