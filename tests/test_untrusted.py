"""A rogue MQTT client and a lying publisher against a real subscriber, and a lying
subscriber against the real client: a chunk that its dataset's metadata rules out is
refused (502, naming the lie), never cached and never decoded."""

from __future__ import annotations

import io
import json
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import blosc2
import numpy as np
import pytest
import requests

from catmqtt import signing, storage
from catmqtt.client import CHANGED_TRIES, Client
from catmqtt.errors import Changed, Unavailable
from catmqtt.subscriber.cache import Cache
from catmqtt.wire import DIGEST, ETAG, FRAME, NPY, PARTS

from conftest import Deployment, publish, rogue_client, run_cli, wait_for

# The announcement of issue 10's remote crash: int64, chunks of a million items in blocks of 10.
ITEMS, BLOCK = 1_000_000, 10
ETAG_LIE = "lie-1"


def one_chunk(array: blosc2.NDArray) -> bytes:
    return array.schunk.get_chunk(0)


def patched(chunk: bytes, fmt: str, offset: int, value: int) -> bytes:
    out = bytearray(chunk)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


GENUINE = one_chunk(blosc2.asarray(np.arange(ITEMS), chunks=(ITEMS,), blocks=(BLOCK,)))
# The chunk of the crash: its one block of a million items, where the metadata has blocks of 10.
ONE_BLOCK = one_chunk(blosc2.asarray(np.arange(ITEMS), chunks=(ITEMS,), blocks=(ITEMS,)))
# What each path of the lying publisher serves as its one chunk, and the lie the subscriber names.
LIES = {
    "crash.b2nd": (ONE_BLOCK, f"its blocks are of {8 * ITEMS} bytes, not 80 (blocks [10])"),
    "few-bytes.b2nd": (
        blosc2.compress2(np.arange(10).tobytes(), typesize=8),
        f"it holds 80 bytes, not {8 * ITEMS}",
    ),
    "huge.b2nd": (
        patched(blosc2.compress2(np.arange(10).tobytes(), typesize=8), "<i", 4, (1 << 31) - 33),
        f"it holds {(1 << 31) - 33} bytes, not {8 * ITEMS}",
    ),
    "cut-short.b2nd": (GENUINE[: len(GENUINE) // 2], f"its header says {len(GENUINE)} bytes, but"),
    "garbage.b2nd": (b"<html>Internal error</html>" * 100, "not a Blosc2 chunk (no extended header)"),
    "typesize.b2nd": (
        one_chunk(blosc2.asarray(np.arange(2 * ITEMS, dtype=np.int32), chunks=(2 * ITEMS,), blocks=(20,))),
        "its typesize is 4, not 8",
    ),
    "offsets.b2nd": (patched(GENUINE, "<i", 32, len(GENUINE) + 100), "its blocks start out of its"),
}
# Served in parts: its header and first block first, as a publisher does over a slow link.
IN_PARTS = {"crash-in-parts.b2nd": LIES["crash.b2nd"]}


def lying_meta(path: str, chunk: bytes) -> dict:
    """The metadata a rogue announces for `path`, with the manifest of its one lying chunk."""
    return {
        "schema": 1,
        "path": path,
        "kind": "ndarray",
        "shape": [ITEMS],
        "dtype": "int64",
        "chunks": [ITEMS],
        "blocks": [BLOCK],
        "nchunks": 1,
        "chunksize": 8 * ITEMS,
        "typesize": 8,
        "nbytes": 8 * ITEMS,
        "cbytes": len(chunk),
        "cparams": storage.cparams_to_json(blosc2.CParams(typesize=8)),
        "vlmeta": {},
        "etag": ETAG_LIE,
        "manifest": storage.manifest_digest([storage.chunk_digest(chunk)]),
    }


Route = Callable[[str, dict[str, str]], tuple[int, dict[str, str], bytes]]


@contextmanager
def serving(route: Route) -> Iterator[str]:
    """Serve GET requests by `route(path, query)` -> (status, headers, body) over HTTP; yield the URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            status, headers, body = route(unquote(url.path), dict(parse_qsl(url.query)))
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="liar", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def not_found(path: str) -> tuple[int, dict[str, str], bytes]:
    return (
        404,
        {"Content-Type": "application/json"},
        json.dumps({"error": f"no {path}", "status": 404}).encode(),
    )


# A dataset whose publisher answers a web page for its manifest.
JUNK_MANIFEST = "junk-manifest.b2nd"
# A dataset whose publisher answers an error meant for the terminal that prints it.
ESCAPES = "escapes.b2nd"
ESCAPING = "\x1b[2J\x1b[31mall is fine\nError: a line of its own\r"


@dataclass
class LyingPublisher:
    """A publisher's HTTP API serving `chunks` (path: its one chunk) as they are, with
    their digests; in parts (the whole chunk as its first part) when asked for blocks if `in_parts`."""

    chunks: dict[str, bytes]
    in_parts: bool = False
    asked: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def __call__(self, path: str, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        self.asked.append((path, query))
        endpoint, _, dataset = path.removeprefix("/api/").partition("/")
        chunk = self.chunks.get(dataset)
        if chunk is None:
            return not_found(path)
        if dataset == ESCAPES:
            return 500, {"Content-Type": "application/json"}, json.dumps({"error": ESCAPING}).encode()
        if endpoint == "manifest" and dataset == JUNK_MANIFEST:
            return 200, {"Content-Type": "text/html"}, b"<html>not a manifest</html>"
        if endpoint == "manifest":
            body = {"path": dataset, "etag": ETAG_LIE, "digests": [storage.chunk_digest(chunk)]}
            return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()
        headers = {ETAG: ETAG_LIE, DIGEST: storage.chunk_digest(chunk)}
        if self.in_parts and "blocks" in query:
            headers[PARTS] = f"0-{len(chunk) - 1}/{len(chunk)}"
        return 200, headers, chunk


def announce(d: Deployment, signer: signing.Signer, roots: dict[str, tuple[str, dict[str, bytes]]]) -> None:
    """Announce each of `roots` (name: its URL and a chunk for each dataset path) as a rogue
    MQTT client, signed with its own key (a stranger's root is trusted on first use), and
    subscribe to them."""
    # One connection: a second one of the same client id, right after the first, once lost
    # a retained dataset announcement (amqtt, under load).
    with rogue_client(d.broker) as rogue:
        for root, (url, chunks) in roots.items():
            topic = f"catmqtt/v1/roots/{root}"
            info = {"schema": 1, "name": root, "url": url, "publisher": "rogue", "datasets": len(chunks)}
            publish(rogue, topic, json.dumps(signer.sign(topic, {**info, "etag": "x"})))
            for path, chunk in chunks.items():
                meta = signer.sign(f"{topic}/ds/{path}", lying_meta(path, chunk))
                publish(rogue, f"{topic}/ds/{path}", json.dumps(meta))
    sub = d.url("sub")

    def listed(root: str) -> list[str]:
        return requests.get(f"{sub}/api/list/{root}", timeout=5).json()

    for root, (_, chunks) in roots.items():
        wait_for(lambda root=root: root in requests.get(f"{sub}/api/roots", timeout=5).json(), f"root {root}")
        requests.post(f"{sub}/api/subscribe/{root}", timeout=30).raise_for_status()
        wait_for(lambda root=root, chunks=chunks: len(listed(root)) == len(chunks), f"the datasets of {root}")


@dataclass
class Attack:
    d: Deployment
    parts: LyingPublisher

    @property
    def sub(self) -> str:
        return self.d.url("sub")


@pytest.fixture(scope="module")
def attack(module_broker, sample_root, tmp_path_factory) -> Iterator[Attack]:
    """A genuine publisher of foo, a subscriber process, and a rogue's roots: 'evil' at a
    publisher that lies in its chunks, 'split' at one that lies in parts."""
    workdir = tmp_path_factory.mktemp("attack")
    d = Deployment(module_broker, workdir)
    d.start_pub("foo", sample_root)
    d.start_sub()
    d.wait_root("foo")
    requests.post(f"{d.url('sub')}/api/subscribe/foo", timeout=30).raise_for_status()
    signer = signing.generate(workdir / "rogue.pem")
    liar = LyingPublisher(
        {**{path: chunk for path, (chunk, _) in LIES.items()}, ESCAPES: ONE_BLOCK, JUNK_MANIFEST: ONE_BLOCK}
    )
    # Apart: how fast a publisher answers decides whether blocks come first, per URL.
    parts = LyingPublisher({path: chunk for path, (chunk, _) in IN_PARTS.items()}, in_parts=True)
    try:
        with serving(liar) as url, serving(parts) as parts_url:
            announce(d, signer, {"evil": (url, liar.chunks), "split": (parts_url, parts.chunks)})
            yield Attack(d, parts)
    finally:
        d.stop_all()


def assert_unharmed(attack: Attack, root: str, path: str) -> None:
    """The subscriber is up, still serves a genuine dataset right, and cached nothing of `root/path`."""
    response = requests.get(
        f"{attack.sub}/api/fetch/foo/ds-1d.b2nd", params={"slice": "3:8"}, headers={"Accept": NPY}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert np.load(io.BytesIO(response.content)).tolist() == [3, 4, 5, 6, 7]
    stats = requests.get(f"{attack.sub}/api/stats", timeout=5).json()["datasets"]
    assert stats.get(f"{root}/{path}", {}).get("fetched_chunks", 0) == 0
    cached = Path(attack.d.workdir, "sub", "cache", root, path)
    assert not [p for p in cached.rglob("*") if p.suffix == ".chunk"]
    assert attack.d.procs["sub"].alive()
    assert "Traceback" not in attack.d.procs["sub"].output


def refusal(response: requests.Response) -> str:
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["status"] == 502
    return body["error"]


@pytest.mark.parametrize("path", LIES)
def test_a_lying_chunk_is_refused_and_never_cached(attack, path):
    problem = LIES[path][1]
    sub = attack.sub
    # As in issue 10: a few items, which the subscriber decodes from the chunk's first block.
    fetched = requests.get(f"{sub}/api/fetch/evil/{path}", params={"slice": "0:5"}, timeout=60)
    chunk = requests.get(f"{sub}/api/chunk/evil/{path}", params={"nchunk": 0}, timeout=60)
    for response in (fetched, chunk):
        error = refusal(response)
        assert "publisher of root 'evil' at http://127.0.0.1:" in error
        assert f"sent a chunk 0 of {path!r} that its metadata rules out: {problem}" in error
    assert_unharmed(attack, "evil", path)
    assert f"refusing chunk 0 of evil/{path}" in attack.d.procs["sub"].output


def test_a_manifest_that_is_none_is_refused(attack):
    error = refusal(requests.get(f"{attack.sub}/api/manifest/evil/{JUNK_MANIFEST}", timeout=60))
    assert f"sent no manifest of {JUNK_MANIFEST!r}" in error
    assert_unharmed(attack, "evil", JUNK_MANIFEST)


def test_a_chunk_in_parts_is_checked_before_its_first_blocks_are_decoded(attack):
    path, (_, problem) = next(iter(IN_PARTS.items()))
    response = requests.get(f"{attack.sub}/api/fetch/split/{path}", params={"slice": "0:5"}, timeout=60)
    assert f"sent a chunk 0 of {path!r} that its metadata rules out: {problem}" in refusal(response)
    # It came in parts: its first block asked for first.
    assert (f"/api/chunk/{path}", {"nchunk": "0", "blocks": "0-0"}) in attack.parts.asked
    assert_unharmed(attack, "split", path)


def test_the_command_line_reports_the_lie(attack):
    # Enough of the chunk that the client asks for it whole (/api/chunks), and a few items.
    for selection in ("[0:600000]", "[0:5]"):
        result = run_cli("show", f"evil/crash.b2nd{selection}", sub=attack.sub)
        assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
        assert result.stderr.startswith("Error: publisher of root 'evil' at "), result.stderr
        assert "that its metadata rules out: its blocks are of 8000000 bytes, not 80" in result.stderr
    assert_unharmed(attack, "evil", "crash.b2nd")


def test_a_publishers_error_reaches_the_terminal_escaped(attack):
    result = run_cli("show", f"evil/{ESCAPES}[0:5]", sub=attack.sub)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "\x1b" not in result.stderr and "\r" not in result.stderr
    assert "answered 500: \\x1b[2J\\x1b[31mall is fine\\x0aError: a line of its own\\x0d" in result.stderr
    assert_unharmed(attack, "evil", ESCAPES)


def test_a_chunk_cached_unchecked_is_checked_again(deployment, tmp_path):
    """A chunk cached without the check (by an older catmqtt) is dropped at its first
    read, fetched again, and refused."""
    d = deployment
    path = "poisoned.b2nd"
    liar = LyingPublisher({path: ONE_BLOCK})
    with serving(liar) as url:
        d.start_sub()
        announce(d, signing.generate(tmp_path / "rogue.pem"), {"evil": (url, liar.chunks)})
        d.stop("sub")
        cache = Cache.open(d.workdir / "sub")
        try:
            meta = cache.dataset("evil", path)
            digest, root_url = storage.chunk_digest(ONE_BLOCK), cache.catalogue.root("evil")["info"]["url"]
            assert cache.store_chunk("evil", path, meta, 0, ONE_BLOCK, digest, root_url)
        finally:
            cache.close()
        d.start_sub()
        wait_for(lambda: requests.get(f"{d.url('sub')}/api/list/evil", timeout=5).json(), "root evil")
        response = requests.get(f"{d.url('sub')}/api/fetch/evil/{path}", params={"slice": "0:5"}, timeout=60)
        assert "that its metadata rules out: its blocks are of 8000000 bytes" in refusal(response)
    assert "cached chunk 0 of evil/poisoned.b2nd is damaged; fetching it again" in d.procs["sub"].output
    assert d.procs["sub"].alive()


# A lying subscriber against the client


def lying_subscriber(metas: dict[str, dict], chunks: dict[str, bytes]) -> Route:
    """A subscriber's HTTP API serving `metas` and `chunks` (path in root evil: its one chunk)."""

    def route(path: str, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        endpoint, _, dataset = path.removeprefix("/api/").partition("/")
        name = dataset.removeprefix("evil/")
        if endpoint == "info" and name in metas:
            return 200, {"Content-Type": "application/json"}, json.dumps(metas[name]).encode()
        if endpoint == "chunks" and name in chunks:
            return 200, {}, FRAME.pack(0, len(chunks[name])) + chunks[name]
        if endpoint == "chunk" and name in chunks:
            return 200, {ETAG: metas[name]["etag"]}, chunks[name]
        return not_found(path)

    return route


def test_the_client_reads_again_what_changed_while_being_read(tmp_path):
    asked: Counter[str] = Counter()
    changed = {
        "error": "evil/f.txt changed while being read; try again",
        "status": 503,
        "changed": "evil/f.txt",
    }
    busy = {"error": "the publisher is unreachable", "status": 503}

    def route(path: str, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        asked[path] += 1
        json_error = {"Content-Type": "application/json"}
        if path == "/api/download/evil/f.txt":
            if asked[path] == 1:
                return 503, json_error, json.dumps(changed).encode()
            return 200, {}, b"the new version"
        if path == "/api/download/evil/always.txt":
            return 503, json_error, json.dumps(changed).encode()
        if path == "/api/download/evil/down.txt":
            return 503, json_error, json.dumps(busy).encode()
        return not_found(path)

    with serving(route) as url, Client(url) as client:
        assert client.download("evil/f.txt", tmp_path).read_bytes() == b"the new version"
        assert asked["/api/download/evil/f.txt"] == 2
        with pytest.raises(Changed, match="changed while being read") as raised:
            client.download("evil/always.txt", tmp_path)
        assert raised.value.path == "evil/f.txt" and raised.value.status == 503
        assert asked["/api/download/evil/always.txt"] == CHANGED_TRIES
        # Any other 503 is not the dataset's change: it is not asked again.
        with pytest.raises(Unavailable) as raised:
            client.download("evil/down.txt", tmp_path)
        assert not isinstance(raised.value, Changed) and asked["/api/download/evil/down.txt"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil"]
    assert [p.name for p in (tmp_path / "evil").iterdir()] == ["f.txt"]


def test_the_client_checks_what_its_subscriber_sends():
    # A compressed size of 1 byte: the client asks for the chunk even for a few items.
    meta = {**lying_meta("crash.b2nd", ONE_BLOCK), "cbytes": 1}
    # Metadata that no announcement passes: chunks of 80 bytes, in blocks of 80, of a million items.
    small = blosc2.compress2(np.arange(10).tobytes(), typesize=8)
    bad_meta = {**meta, "path": "bad-meta.b2nd", "chunksize": 80, "nbytes": 80}
    route = lying_subscriber(
        {"crash.b2nd": meta, "bad-meta.b2nd": bad_meta}, {"crash.b2nd": ONE_BLOCK, "bad-meta.b2nd": small}
    )
    with serving(route) as url:
        # ":5", not "0:5": read with the metadata (a first read of "0:5" has the subscriber slice).
        with Client(url) as client, pytest.raises(Unavailable) as refused:
            client.fetch("evil/crash.b2nd", ":5")
        assert str(refused.value) == (
            f"the subscriber at {url} sent chunk 0 of 'crash.b2nd', which is not what its metadata"
            " says: its blocks are of 8000000 bytes, not 80 (blocks [10])"
        )
        # The library's raw chunks too.
        with Client(url) as client, pytest.raises(Unavailable) as refused:
            client.get_chunk("evil/crash.b2nd", 0)
        assert refused.value.status == 502
        assert str(refused.value) == (
            f"the subscriber at {url} sent chunk 0 of evil/crash.b2nd, which is not what its metadata says:"
            " its blocks are of 8000000 bytes, not 80 (blocks [10])"
        )
        result = run_cli("show", "evil/bad-meta.b2nd[:5]", sub=url)
        assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
        assert result.stderr.startswith(
            f"Error: the subscriber at {url} sent metadata of evil/bad-meta.b2nd that cannot be right:"
            " metadata of 'bad-meta.b2nd': chunksize 80 is not 8000000"
        ), result.stderr
