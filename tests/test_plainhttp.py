"""The command line's HTTP session over http.client (catmqtt.plainhttp), against a
real HTTP server on loopback, and when the client takes it (catmqtt.sessions)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from catmqtt import plainhttp
from catmqtt.client import Client
from catmqtt.errors import Unavailable
from catmqtt.sessions import transport

from conftest import free_port, wait_for

TIMEOUT = (5, 5)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Set when the test ends: what hangs stops.
    released: threading.Event

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/port":
            self._send(json.dumps(self.client_address[1]).encode())
        elif path == "/echo":
            self._echo(b"")
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"abc", b"de", b"f" * 5000):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.close_connection = True
        elif path == "/bye":
            # Closed after the answer, without saying so.
            self._send(b"bye")
            self.close_connection = True
        elif path == "/hang":
            self.released.wait(30)
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "https://elsewhere.invalid/api/roots")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        self._echo(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def _echo(self, body: bytes) -> None:
        self._send(
            json.dumps(
                {
                    "method": self.command,
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "type": self.headers.get("Content-Type"),
                    "body": body.decode(),
                }
            ).encode()
        )

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    released = threading.Event()
    handler = type("Released", (Handler,), {"released": released})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        released.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def session() -> Iterator[plainhttp.Session]:
    with_session = plainhttp.Session()
    yield with_session
    with_session.close()


def test_connections_are_kept_alive(server, session):
    ports = {session.request("GET", f"{server}/port", timeout=TIMEOUT).json() for _ in range(5)}
    assert len(ports) == 1


def test_a_connection_the_server_closed_is_not_reused(server, session):
    first = session.request("GET", f"{server}/port", timeout=TIMEOUT).json()
    assert session.request("GET", f"{server}/bye", timeout=TIMEOUT).content == b"bye"
    closed(session, server)
    assert session.request("GET", f"{server}/port", timeout=TIMEOUT).json() != first


def closed(session: plainhttp.Session, server: str) -> None:
    """Wait until the server's end of the session's idle connection is closed."""
    (conn,) = session._idle[server.removeprefix("http://")]
    wait_for(
        lambda: conn.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"",
        "the close",
        ignore=(BlockingIOError,),
    )


def test_threads_share_a_session(server, session):
    ports: list[int] = []

    def work() -> None:
        for _ in range(20):
            ports.append(session.request("GET", f"{server}/port", timeout=TIMEOUT).json())

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ports) == 120
    assert len(set(ports)) <= 6


@pytest.mark.parametrize(
    "params",
    [
        None,
        {"slice": "1:5,::2"},
        {"nchunks": "0-3,7", "etag": "a b&c=d"},
        {"cached": "true", "n": 3},
        {"path": "dir/ü/x.b2nd"},
    ],
)
def test_queries_are_sent_as_requests_sends_them(server, session, params):
    url = f"{server}/echo?already=1"
    sent = session.request("GET", url, params=params, timeout=TIMEOUT).json()["path"]
    expected = requests.Request("GET", url, params=params).prepare().path_url
    assert sent == expected


def test_headers_and_json_bodies_are_sent(server, session):
    session.headers["Authorization"] = "Bearer abc"
    got = session.request("POST", f"{server}/echo", json={"username": "ann"}, timeout=TIMEOUT).json()
    assert got == {
        "method": "POST",
        "path": "/echo",
        "authorization": "Bearer abc",
        "type": "application/json",
        "body": '{"username": "ann"}',
    }


def test_chunked_bodies_are_read_whole_or_in_pieces(server, session):
    expected = b"abcde" + b"f" * 5000
    assert session.request("GET", f"{server}/chunked", timeout=TIMEOUT).content == expected
    with session.request("GET", f"{server}/chunked", timeout=TIMEOUT, stream=True) as response:
        assert b"".join(response.iter_content(1000)) == expected
    with session.request("GET", f"{server}/chunked", timeout=TIMEOUT, stream=True) as response:
        parts = []
        while part := response.raw.read1(1 << 20):
            parts.append(part)
        assert b"".join(parts) == expected


@pytest.mark.parametrize("how", ["content", "read", "read1", "iter_content"])
def test_a_body_cut_short_is_an_error(server, session, how):
    # http.client's read(n) and read1 alone would end it as if it were whole.
    with (
        pytest.raises(plainhttp.ERRORS),
        session.request("GET", f"{server}/short", timeout=TIMEOUT, stream=how != "content") as response,
    ):
        if how == "read":
            while response.raw.read(4):
                pass
        elif how == "read1":
            while response.raw.read1(4):
                pass
        elif how == "iter_content":
            list(response.iter_content(4))
    # The session goes on.
    assert session.request("GET", f"{server}/echo", timeout=TIMEOUT).json()["path"] == "/echo"


def test_a_body_left_unread_closes_its_connection(server, session):
    first = session.request("GET", f"{server}/port", timeout=TIMEOUT).json()
    with session.request("GET", f"{server}/chunked", timeout=TIMEOUT, stream=True) as response:
        assert response.raw.read(2) == b"ab"
    assert session.request("GET", f"{server}/port", timeout=TIMEOUT).json() != first


def test_timeouts_and_refusals(server, session):
    with pytest.raises(TimeoutError):
        session.request("GET", f"{server}/hang", timeout=(5, 0.2))
    with pytest.raises(plainhttp.ERRORS):
        session.request("GET", f"http://127.0.0.1:{free_port()}/", timeout=TIMEOUT)
    with pytest.raises(ValueError, match="only http://"):
        session.request("GET", "https://127.0.0.1/", timeout=TIMEOUT)


def test_the_client_tells_a_redirect(server):
    with (
        Client(server, plain_http=True) as client,
        pytest.raises(Unavailable, match="to https://elsewhere.invalid/api/roots: give its new address"),
    ):
        client._send("GET", f"{server}/redirect")


def test_the_client_tells_a_timeout(server):
    with (
        Client(server, timeout=(5, 0.2), plain_http=True) as client,
        pytest.raises(Unavailable, match="did not answer in time") as raised,
    ):
        client._send("GET", f"{server}/hang")
    assert raised.value.status == 504


@pytest.mark.parametrize(
    ("url", "env", "plain", "expected"),
    [
        ("http://127.0.0.1:8002", {}, True, plainhttp.Session),
        ("http://127.0.0.1:8002/prefix", {}, True, plainhttp.Session),
        ("http://127.0.0.1:8002", {}, False, requests.Session),
        ("https://127.0.0.1:8002", {}, True, requests.Session),
        ("http://127.0.0.1:8002", {"http_proxy": "http://127.0.0.1:3128"}, True, requests.Session),
        ("http://127.0.0.1:8002", {"HTTPS_PROXY": "http://127.0.0.1:3128"}, True, requests.Session),
        ("http://127.0.0.1:8002", {"ALL_PROXY": "socks5://127.0.0.1:1080"}, True, requests.Session),
        ("http://127.0.0.1:8002", {"NETRC": "NETRC"}, True, requests.Session),
        ("http://127.0.0.1:8002", {"NETRC": "/nonexistent/netrc"}, True, plainhttp.Session),
    ],
)
def test_the_plain_session_is_taken_where_requests_would_add_nothing(
    monkeypatch, tmp_path, url, env, plain, expected
):
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login ann password secret\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value.replace("NETRC", str(netrc)))
    made = transport(url, plain=plain)
    try:
        assert type(made.session) is expected
    finally:
        made.session.close()


def test_a_stale_idle_connection_is_found(server):
    conn = http.client.HTTPConnection(server.removeprefix("http://"), timeout=5)
    conn.connect()
    try:
        assert plainhttp._open(conn.sock)
        conn.request("GET", "/bye")
        assert conn.getresponse().read() == b"bye"
        # Until the server's end is closed, and once it is.
        wait_for(lambda: not plainhttp._open(conn.sock), "the server's close")
        assert conn.sock.gettimeout() == 5
    finally:
        conn.close()
