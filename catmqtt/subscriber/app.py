"""This module holds the subscriber's Flask views: each reads its request,
calls the reader, the follower, the large answers or the pins, and shapes
the answer.

`create_app` needs only those three (and the pins, which it can make), so
that the views can be tried with Flask's test client, without a broker or a
port.

Threads: the views run on the HTTP threads and keep no state of their own
(what ``/metrics`` counts is `catmqtt.metrics`' and `metrics`').
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_file

from .. import openapi, storage
from ..arrays import encode_array
from ..errors import BadRequest, CatmqttError
from ..metrics import Metrics
from ..web import OCTETS, arg_int, chunk_response, configure_app
from ..wire import CFRAME, DIGEST, ETAG, FRAMES, NPY, ZIP
from . import bundles, caterva2, page, relay
from .answers import Answers
from .follower import Follower
from .guard import readable
from .large import PIECE
from .metrics import Figures
from .pins import Pins
from .reader import Reader

bp = Blueprint("subscriber", __name__)


def _reader() -> Reader:
    return current_app.config["CATMQTT_READER"]


def _answers() -> Answers:
    return current_app.config["CATMQTT_ANSWERS"]


@bp.get("/api/roots")
def roots():
    return jsonify(readable(_reader().roots()))


@bp.post("/api/subscribe/<name>")
def subscribe(name: str):
    current_app.config["CATMQTT_FOLLOWER"].subscribe(name)
    return jsonify("Ok")


@bp.post("/api/unsubscribe/<name>")
def unsubscribe(name: str):
    _not_republished(name, "unsubscribing from")
    current_app.config["CATMQTT_FOLLOWER"].unsubscribe(name)
    return jsonify("Ok")


def _not_republished(name: str, what: str) -> None:
    """Refuse (409) `what` root `name` if this subscriber republishes it."""
    relays = current_app.config["CATMQTT_RELAYS"]
    if relays is not None and name in relays.roots:
        raise CatmqttError(
            f"root {name!r} is republished by this subscriber (subscriber.republish): stop"
            f" republishing it before {what} it",
            409,
        )


@bp.get("/api/list/<name>")
@bp.get("/api/list/<name>/<path:directory>")
def list_datasets(name: str, directory: str | None = None):
    return jsonify(_reader().list(name, directory))


@bp.get("/api/info/<path:fullpath>")
def info(fullpath: str):
    if "/" not in fullpath:
        return jsonify(_reader().root_info(fullpath))
    meta = _reader().lookup(fullpath).meta
    response = jsonify(caterva2.describe(meta))
    response.set_etag(meta["etag"])
    return response.make_conditional(request)


@bp.get("/api/fetch/<path:fullpath>")
@bp.post("/api/fetch/<path:fullpath>")
def fetch(fullpath: str):
    reader, answers = _reader(), _answers()
    wanted = caterva2.fetch_args()
    # Blosc2 unless .npy is asked for: "*/*" picks the first offer.
    npy = request.accept_mimetypes.best_match([CFRAME, NPY]) == NPY
    if wanted.indices is not None:
        with caterva2.gathering(answers, fullpath, wanted.indices) as result:
            return _array_response(result, npy)
    target = reader.selection(fullpath, wanted.slice)
    if target.nbytes <= PIECE or not target.shape:
        result = reader.read(target)
        if isinstance(result, bytes):
            return Response(result, mimetype=OCTETS)
        return _array_response(result, npy)
    # A large selection: .npy (or bytes) streamed piece by piece, Blosc2 built
    # whole in a temporary file, within the budget large answers share.
    array = target.source.meta["kind"] == "ndarray"
    if npy or not array:
        body, length = answers.stream(target, npy)
        mimetype = NPY if npy and array else OCTETS
        return Response(body, mimetype=mimetype, headers={"Content-Length": str(length)})
    return send_file(answers.cframe(target), mimetype=CFRAME)


def _array_response(result: np.ndarray, npy: bool) -> Response:
    data, mimetype = encode_array(result, npy)
    return Response(data, mimetype=mimetype)


@bp.get("/api/cached/<path:fullpath>")
def cached(fullpath: str):
    return jsonify(_reader().cached(fullpath))


@bp.get("/api/manifest/<path:fullpath>")
def manifest(fullpath: str):
    return jsonify(_reader().manifest(fullpath))


@bp.get("/api/chunk/<path:fullpath>")
def chunk(fullpath: str):
    data, etag = _reader().chunk(fullpath, arg_int("nchunk"))
    return chunk_response(data, {ETAG: etag, DIGEST: storage.chunk_digest(data)})


@bp.get("/api/chunks/<path:fullpath>")
def chunks(fullpath: str):
    frames = _reader().chunks(fullpath, request.args.get("nchunks", ""), request.args.get("etag"))
    return Response(frames, mimetype=FRAMES)


@bp.get("/api/stats")
def stats():
    """The counters; with accounts, those of datasets of roots the user may not read are
    left out. The totals, the cache's figures and the bytes served stay the node's as a
    whole, as ``/metrics`` tells them: they name no root, and summed over the datasets
    shown they would disagree with the cache they describe."""
    figures = current_app.config["CATMQTT_FIGURES"]
    counters = _reader().fetcher.stats()
    datasets = counters["datasets"]
    shown = readable(dict.fromkeys(name.split("/", 1)[0] for name in datasets))
    counters["datasets"] = {name: c for name, c in datasets.items() if name.split("/", 1)[0] in shown}
    return jsonify({**counters, "large": _answers().stats(), **figures.stats()})


@bp.get("/api/download/<path:fullpath>")
def download(fullpath: str):
    f, name = _answers().download(fullpath)
    return send_file(f, as_attachment=True, download_name=name, mimetype=OCTETS)


@bp.get("/api/bundle/<name>")
@bp.get("/api/bundle/<name>/<path:directory>")
def bundle(name: str, directory: str | None = None):
    cached = request.args.get("cached", "false").lower()
    if cached not in ("true", "false", "1", "0"):
        raise BadRequest(f"cached must be true or false, not {cached[:40]!r}")
    plan = bundles.plan(_answers(), name, directory, cached in ("true", "1"))
    disposition = f'attachment; filename="{plan.filename}"'
    body = bundles.Body(_answers(), plan)
    return Response(body, mimetype=ZIP, headers={"Content-Disposition": disposition})


@bp.post("/api/pin/<path:fullpath>")
def pin(fullpath: str):
    _pins().pin(fullpath)
    return jsonify("Ok")


@bp.post("/api/unpin/<path:fullpath>")
def unpin(fullpath: str):
    _pins().unpin(fullpath)
    return jsonify("Ok")


@bp.get("/api/pins")
def pins():
    listing = _pins().list()
    shown = readable({entry["root"]: entry for entry in listing})
    return jsonify([entry for entry in listing if entry["root"] in shown])


@bp.post("/api/forget/<name>")
def forget(name: str):
    _not_republished(name, "forgetting")
    _pins().forget(name)
    return jsonify("Ok")


def _pins() -> Pins:
    return current_app.config["CATMQTT_PINS"]


@bp.get("/metrics")
def prometheus_metrics():
    return current_app.config["CATMQTT_METRICS"].answer()


@bp.get("/api/nodes")
def nodes():
    """The nodes' statuses; with accounts, publishers only of roots the user may not read are left out."""
    follower: Follower = current_app.config["CATMQTT_FOLLOWER"]
    roots = {name: root["info"] for name, root in follower.catalogue.roots().items()}
    shown = readable(roots)
    return jsonify(
        [
            n
            for n in follower.statuses.nodes(roots)
            if not n.get("roots") or any(r in shown for r in n["roots"])
        ]
    )


@bp.get("/api/openapi.json")
def openapi_document():
    return jsonify(openapi.subscriber())


@bp.get("/")
def index():
    """The web page: a client of this API, in the browser."""
    return page.page_response("index.html")


@bp.get("/static/<path:filename>")
def static_file(filename: str):
    return page.static_response(filename)


def create_app(
    reader: Reader, follower: Follower, answers: Answers, statedir: Path, pins: Pins | None = None
) -> Flask:
    """Return the subscriber's Flask app, its errors told as JSON (507 when `statedir`'s disk is full).

    `pins` are the subscriber's; by default pins whose prefetcher is not
    started (for Flask's test client).
    """
    app = Flask(__name__, static_folder=None)
    app.config["CATMQTT_READER"] = reader
    app.config["CATMQTT_FOLLOWER"] = follower
    app.config["CATMQTT_ANSWERS"] = answers
    app.config["CATMQTT_PINS"] = pins or Pins(reader)
    # The subscriber's relays, if it republishes roots (see `relay`).
    app.config["CATMQTT_RELAYS"] = None
    app.register_blueprint(bp)
    app.register_blueprint(relay.bp)
    configure_app(app, statedir)
    page.install(app)
    metrics = Metrics()
    metrics.install(app)
    figures = Figures(reader.cache, reader.fetcher, metrics)
    metrics.registry.register(figures)
    app.config["CATMQTT_FIGURES"] = figures
    return app
