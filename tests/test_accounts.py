"""Accounts on the subscriber: logins, tokens, admins, per-root access, Host and
Origin checks; tables of the pure logic, then real broker, publisher and
subscriber processes with the CLI and the library."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import blosc2
import numpy as np
import pytest
import requests
from flask import Flask

import catmqtt
from catmqtt import config, errors
from catmqtt.subscriber.accounts import Accounts, load_secret
from catmqtt.subscriber.app import bp
from catmqtt.subscriber.guard import OPEN, Guard, allowed_hosts
from catmqtt.subscriber.tokens import (
    BadToken,
    make_token,
    parse_password,
    parse_token,
    parse_username,
)

from conftest import Broker, Deployment, catmqtt_cmd, up_on_free_ports, wait_for

SECRET = b"s" * 32
PASSWORDS = {"root": "r00t pw", "reader": "read-pw", "other": "other-pw"}


# Pure logic


def test_token_roundtrip():
    token, session = make_token(SECRET, "alice", 7, 2000)
    assert parse_token(SECRET, token, 1999) == session
    assert (session.user, session.user_id, session.expires) == ("alice", 7, 2000)


def _forge_body(token: str) -> str:
    import base64

    body, sig = token.split(".")
    fake = base64.urlsafe_b64encode(b'{"u": "root", "i": 1, "n": "x", "e": 9999999999}').rstrip(b"=").decode()
    return f"{fake}.{sig}"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda t: t, "expired"),
        (lambda t: make_token(b"another secret", "alice", 7, 5000)[0], "signature"),
        (_forge_body, "signature"),
        (lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), "signature"),
        (lambda t: "", "not a catmqtt token"),
        (lambda t: "junk", "not a catmqtt token"),
        (lambda t: "a.b.c", "not a catmqtt token"),
        (lambda t: "x" * 5000, "not a catmqtt token"),
        (lambda t: "é.ü", "signature"),
    ],
)
def test_bad_tokens(make, message):
    token, _ = make_token(SECRET, "alice", 7, 2000)
    with pytest.raises(BadToken, match=message):
        parse_token(SECRET, make(token), 2000)


def test_a_signed_token_of_junk_is_junk():
    import base64
    import hashlib
    import hmac

    body = base64.urlsafe_b64encode(b"[1, 2]").rstrip(b"=").decode()
    sig = base64.urlsafe_b64encode(hmac.new(SECRET, body.encode(), hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(BadToken, match="not a catmqtt token"):
        parse_token(SECRET, f"{body}.{sig.decode()}", 0)


@pytest.mark.parametrize("name", ["alice", "a", "bot-1", "x.y@lab", "A_b", "a" * 64])
def test_good_names(name):
    assert parse_username(name) == name


@pytest.mark.parametrize("name", ["", " alice", "a b", "-a", ".a", "a/b", "a\n", "a" * 65, None, 3, ["a"]])
def test_bad_names(name):
    with pytest.raises(errors.BadRequest, match="invalid name"):
        parse_username(name)


@pytest.mark.parametrize(
    "password, message",
    [("", "empty"), (None, "empty"), (3, "empty"), ("x" * 1025, "longer"), ("pw\ud800", "surrogate")],
)
def test_bad_passwords(password, message):
    with pytest.raises(errors.BadRequest, match=message):
        parse_password(password)


@pytest.mark.parametrize(
    "http, urlbase, extra, allowed, refused",
    [
        ("127.0.0.1", None, [], {"localhost"}, {"rebind.attacker.example", "example.org"}),
        ("::1", None, [], {"localhost"}, {"evil.example"}),
        (
            "10.0.0.5",
            "https://cache.lab.example/sub",
            [],
            {"cache.lab.example"},
            {"localhost", "evil.example"},
        ),
        ("edge.lab", None, ["Data.Lab.Example."], {"edge.lab", "data.lab.example"}, {"localhost"}),
        ("0.0.0.0", None, [], {"localhost"}, {"evil.example"}),
    ],
)
def test_allowed_hosts(http, urlbase, extra, allowed, refused):
    hosts = allowed_hosts({"http": (http, 8002), "urlbase": urlbase, "allowed_hosts": extra})
    assert allowed <= hosts and not (refused & hosts)


def test_secret_made_once_and_private(tmp_path, monkeypatch):
    monkeypatch.delenv("CATMQTT_SECRET", raising=False)
    assert load_secret(tmp_path, False) is None
    secret = load_secret(tmp_path, True)
    assert len(secret) == 64 and load_secret(tmp_path, True) == secret
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("CATMQTT_SECRET", "from-the-environment")
    assert load_secret(tmp_path, False) == b"from-the-environment"


def test_store(tmp_path):
    accounts = Accounts(tmp_path)
    accounts.add_user("alice", "pw", admin=True)
    with pytest.raises(errors.BadRequest, match="already"):
        accounts.add_user("alice", "pw")
    with pytest.raises(errors.Unauthorized, match="wrong"):
        accounts.login("alice", "nope", SECRET, 60)
    with pytest.raises(errors.Unauthorized, match="wrong"):
        accounts.login("nobody", "pw", SECRET, 60)
    _, session = accounts.login("alice", "pw", SECRET, 60)
    assert accounts.of_session(session).admin
    token = accounts.create_agent("bot", "alice")
    assert accounts.of_agent(token).name == "alice"
    accounts.end(session)
    assert accounts.of_session(session) is None
    accounts.delete_user("alice")
    # A new alice is another user: the old one's tokens stay dead.
    accounts.add_user("alice", "pw")
    assert accounts.of_agent(token) is None
    assert accounts.of_session(accounts.login("alice", "pw", SECRET, 60)[1]).admin is False
    with pytest.raises(errors.NotFound):
        accounts.revoke_agent("bot")
    # Users and tokens of their own share one space of names.
    with pytest.raises(errors.BadRequest, match="there is a user 'alice'"):
        accounts.create_agent("alice")
    accounts.create_agent("robot")
    with pytest.raises(errors.BadRequest, match="there is an agent token 'robot'"):
        accounts.add_user("robot", "pw")
    with pytest.raises(errors.BadRequest, match="days"):
        accounts.create_agent("later", days=-1)
    assert (tmp_path / "accounts.sqlite").stat().st_mode & 0o777 == 0o600


# Real processes


def cli(*args: str, statedir: Path | None = None, stdin: str = "", env: dict | None = None):
    import os

    extra = ["--statedir", str(statedir)] if statedir else []
    return subprocess.run(
        catmqtt_cmd(*args, *extra),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args", [("user", "list"), ("user", "del", "bob"), ("token", "list"), ("token", "revoke", "t")]
)
def test_account_commands_refuse_a_directory_without_accounts(tmp_path, args):
    # A mistyped --statedir is said so, not shown as a subscriber without users.
    result = cli(*args, statedir=tmp_path / "typo")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"Error: no accounts in {tmp_path / 'typo'}: not a subscriber's state")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "typo").exists()


def add_user(statedir: Path, name: str, password: str, *flags: str) -> None:
    result = cli("user", "add", name, *flags, statedir=statedir, stdin=password + "\n")
    assert result.returncode == 0, result.stderr


def login(url: str, name: str, password: str | None = None) -> str:
    response = requests.post(
        f"{url}/auth/login", json={"username": name, "password": password or PASSWORDS[name]}
    )
    response.raise_for_status()
    return response.json()["token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Site:
    """A subscriber with accounts on (users root, reader and other; root bar shared
    with root and reader only), following foo and bar, as processes."""

    def __init__(self, deployment: Deployment, conf: Path) -> None:
        self.d = deployment
        self.statedir = deployment.workdir / "sub"
        self.url = deployment.url("sub")
        self.conf = conf
        self.tokens = {name: login(self.url, name) for name in PASSWORDS}

    def get(self, path: str, user: str | None = "reader", **kwargs) -> requests.Response:
        headers = bearer(self.tokens[user]) if user else {}
        return requests.get(
            f"{self.url}{path}", headers={**headers, **kwargs.pop("headers", {})}, timeout=30, **kwargs
        )

    def post(self, path: str, user: str | None = "root", **kwargs) -> requests.Response:
        headers = bearer(self.tokens[user]) if user else {}
        return requests.post(
            f"{self.url}{path}", headers={**headers, **kwargs.pop("headers", {})}, timeout=30, **kwargs
        )

    def cli(self, *args: str, env: dict | None = None, stdin: str = ""):
        return cli(*args, "--sub", self.url, env=env, stdin=stdin)


@pytest.fixture(scope="module")
def site(sample_root, tmp_path_factory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("accounts")
    broker = Broker("amqtt", workdir).start()
    d = Deployment(broker, workdir)
    try:
        for name, password in PASSWORDS.items():
            add_user(workdir / "sub", name, password, *(["--admin"] if name == "root" else []))
        conf = workdir / "catmqtt.yaml"
        conf.write_text("subscriber:\n  auth: true\n  access:\n    bar: [root, reader]\n")
        d.start_pub("foo", sample_root)
        d.start_pub("bar", sample_root)
        d.start_sub("sub", "--conf", str(conf))
        s = Site(d, conf)
        wait_for(lambda: {"foo", "bar"} <= set(s.get("/api/roots", "root").json()), "roots foo and bar")
        for root in ("foo", "bar"):
            assert s.post(f"/api/subscribe/{root}").json() == "Ok"
        yield s
    finally:
        d.stop_all()
        broker.stop()


def _routes() -> list[tuple[str, str, str]]:
    """Every route of the subscriber, as (endpoint, method, a URL that reaches it)."""
    # Its views and the guard's, without the parts behind them.
    app = Flask(__name__, static_folder=None)
    app.register_blueprint(bp)
    Guard({"http": ("127.0.0.1", 0)}).install(app)
    args = {"name": "foo", "fullpath": "foo/ds-1d.b2nd", "directory": "dir1", "filename": "app.js"}
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        url = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: args[m.group(1)], rule.rule)
        routes += [(rule.endpoint, method, url) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return routes


@pytest.mark.parametrize("endpoint, method, url", _routes())
def test_every_endpoint_wants_credentials(site, endpoint, method, url):
    response = requests.request(method, f"{site.url}{url}", timeout=30)
    if endpoint in OPEN:
        # The login page, or a login without credentials.
        assert response.status_code == (200 if method == "GET" else 400), response.text
        return
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["status"] == 401
    # A junk token is no better.
    response = requests.request(method, f"{site.url}{url}", headers=bearer("junk.junk"), timeout=30)
    assert response.status_code == 401 and "signature" in response.json()["error"]


def test_login_with_form_and_cookie(site):
    response = requests.post(
        f"{site.url}/auth/login", data={"username": "reader", "password": PASSWORDS["reader"]}
    )
    assert response.status_code == 200
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "catmqtt_session=" in cookie
    body = response.json()
    assert body["expires"] > time.time() + 3600
    assert requests.get(f"{site.url}/api/roots", cookies=response.cookies).ok
    # Logging out ends the session, whatever carries its token.
    out = requests.post(f"{site.url}/auth/logout", cookies=response.cookies)
    assert out.ok and "catmqtt_session=;" in out.headers["Set-Cookie"]
    again = requests.get(f"{site.url}/api/roots", headers=bearer(body["token"]))
    assert again.status_code == 401 and "ended" in again.json()["error"]


def test_login_page_for_people(site):
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    index = requests.get(f"{site.url}/", headers=html, allow_redirects=False)
    assert index.status_code == 303 and index.headers["Location"] == "auth/login"
    page = requests.get(f"{site.url}/auth/login", headers=html)
    assert page.ok and '<form method="post" action="login">' in page.text
    form = {"username": "other", "password": PASSWORDS["other"]}
    same = {**html, "Origin": site.url, "Sec-Fetch-Site": "same-origin"}
    logged = requests.post(f"{site.url}/auth/login", data=form, headers=same, allow_redirects=False)
    assert logged.status_code == 303 and logged.headers["Location"] == "../"
    index = requests.get(f"{site.url}/", headers=html, cookies=logged.cookies)
    assert index.ok and 'src="static/app.js"' in index.text
    # What the page lists: the roots shared with the user.
    assert list(requests.get(f"{site.url}/api/roots", cookies=logged.cookies).json()) == ["foo"]
    me = requests.get(f"{site.url}/auth/me", cookies=logged.cookies).json()
    assert me == {"accounts": True, "user": "other", "admin": False}


@pytest.mark.parametrize(
    "kwargs, status, message",
    [
        ({"json": {"username": "reader", "password": "wrong"}}, 401, "wrong user name or password"),
        ({"json": {"username": "nobody", "password": "wrong"}}, 401, "wrong user name or password"),
        ({"json": {"username": "reader", "password": ""}}, 400, "empty"),
        ({"json": {"username": "reader"}}, 400, "empty"),
        ({"json": {"password": "x"}}, 400, "no username"),
        ({"json": {"username": "a b", "password": "x"}}, 400, "invalid name"),
        ({"json": {"username": ["x"], "password": "x"}}, 400, "invalid name"),
        # JSON escapes a lone surrogate (\udc80), which argon2 could not hash.
        ({"json": {"username": "reader", "password": "\udc80"}}, 400, "surrogate"),
        ({"json": [1, 2]}, 400, "as JSON"),
        ({"data": "{not json", "headers": {"Content-Type": "application/json"}}, 400, "as JSON"),
        ({"data": {"username": "reader", "password": "x" * 10_000}}, 413, "at most"),
        ({"data": b"x" * 1_000_000}, 413, "at most"),
    ],
)
def test_bad_logins(site, kwargs, status, message):
    response = requests.post(f"{site.url}/auth/login", timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    if status == 401:
        assert "WWW-Authenticate" in response.headers


def test_reader_cannot_change_what_the_node_keeps(site):
    for path in ("/api/subscribe/foo", "/api/unsubscribe/foo"):
        response = site.post(path, user="reader")
        assert response.status_code == 403 and "not an admin" in response.json()["error"]
    # Reading by POST is reading.
    assert site.post("/api/fetch/foo/ds-1d.b2nd", user="reader", json={"slice_": "0:3"}).ok
    assert site.get("/api/list/foo").ok


def test_per_root_access(site):
    assert set(site.get("/api/roots", "other").json()) == {"foo"}
    assert {"foo", "bar"} <= set(site.get("/api/roots", "reader").json())
    assert "bar" not in site.get("/", "other").text
    for path in (
        "/api/list/bar",
        "/api/info/bar/ds-1d.b2nd",
        "/api/fetch/bar/ds-1d.b2nd",
        "/api/info/bar",
        "/api/bundle/bar/dir2",
        "/api/manifest/bar/ds-1d.b2nd",
    ):
        response = site.get(path, "other")
        assert response.status_code == 403 and "not shared" in response.json()["error"], path
        assert site.get(path, "reader").ok, path


def test_stats_show_only_the_datasets_of_readable_roots(site):
    """``/api/stats`` named the datasets of every root, those hidden from the user included."""
    for path in ("bar/ds-1d.b2nd", "foo/ds-1d.b2nd"):
        assert site.get(f"/api/fetch/{path}?slice=0:3", "reader").ok
    reader = site.get("/api/stats", "reader").json()
    assert {"bar/ds-1d.b2nd", "foo/ds-1d.b2nd"} <= set(reader["datasets"])
    other = site.get("/api/stats", "other").json()
    assert "foo/ds-1d.b2nd" in other["datasets"]
    assert not [name for name in other["datasets"] if name.startswith("bar/")]
    # The totals are the node's, as /metrics tells them (the prefetcher may add to them meanwhile).
    assert all(other["total"][k] >= n for k, n in reader["total"].items())


def test_cross_site_posts_refused(site):
    form = {"Content-Type": "text/plain"}
    for headers in (
        {"Origin": "http://evil.example", **form},
        {"Origin": "null", **form},
        {"Sec-Fetch-Site": "cross-site", **form},
        {"Sec-Fetch-Site": "same-site"},
    ):
        response = site.post("/api/unsubscribe/foo", headers=headers, data="x=y")
        assert response.status_code == 403, headers
        assert "another" in response.json()["error"]
        response = requests.post(f"{site.url}/auth/login", headers=headers, data="username=root&password=x")
        assert response.status_code == 403
    # The same origin may.
    same = site.url.replace("127.0.0.1", "localhost")
    assert site.post("/api/subscribe/foo", headers={"Origin": site.url, "Sec-Fetch-Site": "same-origin"}).ok
    assert requests.post(
        f"{same}/api/fetch/foo/ds-1d.b2nd", json={}, headers={**bearer(site.tokens["reader"]), "Origin": same}
    ).ok


@pytest.mark.parametrize(
    "host", ["rebind.attacker.example", "rebind.attacker.example:8002", "localhost.evil.example"]
)
def test_foreign_host_refused(site, host):
    response = site.get("/api/roots", headers={"Host": host})
    assert response.status_code == 421 and "does not answer for host" in response.json()["error"]
    assert site.get("/api/roots", headers={"Host": "localhost"}).ok


def test_cli_with_user_and_token(site):
    env = {"CATMQTT_PASSWORD": PASSWORDS["reader"]}
    assert site.cli("show", "foo/ds-1d.b2nd[0:3]", "--user", "reader", env=env).stdout == "[0 1 2]\n"
    result = site.cli("roots", env={"CATMQTT_USER": "reader", "CATMQTT_PASSWORD": "wrong"})
    assert result.returncode == 1 and result.stderr.startswith("Error: wrong user name or password")
    assert len(result.stderr.splitlines()) == 1
    result = site.cli("roots")
    assert (
        result.returncode == 1
        and "has accounts: give a user and password, or a token (--user NAME" in result.stderr
        and len(result.stderr.splitlines()) == 1
    )
    result = site.cli("subscribe", "foo", "--user", "reader", env=env)
    assert result.returncode == 1 and "not an admin" in result.stderr
    result = site.cli("roots", "--user", "reader")
    assert result.returncode == 1 and "CATMQTT_PASSWORD" in result.stderr
    token = cli("token", "create", "cli-bot", statedir=site.statedir).stdout.strip()
    assert site.cli("list", "foo", "--token", token).stdout.startswith("foo/")
    assert site.cli("roots", env={"CATMQTT_TOKEN": token}).stdout == "foo (subscribed)\n"


def test_library_with_user_and_token(site):
    with catmqtt.Client(site.url, user="reader", password=PASSWORDS["reader"]) as client:
        assert client.fetch("foo/ds-1d.b2nd", "0:4").tolist() == [0, 1, 2, 3]
        with pytest.raises(errors.Forbidden, match="not an admin"):
            client.subscribe("foo")
        with pytest.raises(errors.Forbidden, match="not shared"):
            catmqtt.Client(site.url, user="other", password=PASSWORDS["other"]).get_list("bar")
    with pytest.raises(errors.Unauthorized, match="wrong user name or password"):
        catmqtt.get_roots(site.url, user_auth={"username": "reader", "password": "wrong"})
    with pytest.raises(errors.Unauthorized, match="has accounts"):
        catmqtt.get_roots(site.url)
    assert "bar" in catmqtt.get_roots(
        site.url, user_auth={"username": "reader", "password": PASSWORDS["reader"]}
    )
    root = catmqtt.Root("foo", site.url, user_auth={"username": "root", "password": PASSWORDS["root"]})
    assert root["ds-1d.b2nd"][2] == 2
    # A reader cannot subscribe, and has no need to: foo is followed.
    root = catmqtt.Root("foo", site.url, user_auth={"token": site.tokens["reader"]})
    assert root["ds-1d.b2nd"][3] == 3
    token = cli("token", "create", "lib-bot", "--user", "reader", statedir=site.statedir).stdout.strip()
    assert catmqtt.get_list("bar", site.url, user_auth={"token": token})
    assert catmqtt.Client(site.url, token=site.tokens["other"]).get_list("foo")


def test_agent_token_revoked_at_once(site):
    token = cli("token", "create", "agent-1", "--expires", "30", statedir=site.statedir).stdout.strip()
    assert token.startswith("cmqa_")
    listed = cli("token", "list", statedir=site.statedir).stdout
    assert "agent-1 (as a reader, expires" in listed and token not in listed
    assert site.get("/api/roots", None, headers=bearer(token)).ok
    assert cli("token", "revoke", "agent-1", statedir=site.statedir).returncode == 0
    response = site.get("/api/roots", None, headers=bearer(token))
    assert response.status_code == 401 and "revoked" in response.json()["error"]
    assert site.get("/api/roots", None, headers=bearer(token[:-1] + "x")).status_code == 401
    result = cli("token", "revoke", "agent-1", statedir=site.statedir)
    assert result.returncode == 1 and result.stderr == "Error: no token 'agent-1'\n"


def test_user_added_and_deleted_while_running(site):
    add_user(site.statedir, "newcomer", "new-pw")
    assert "newcomer\n" in cli("user", "list", statedir=site.statedir).stdout
    token = login(site.url, "newcomer", "new-pw")
    assert site.get("/api/roots", None, headers=bearer(token)).ok
    assert cli("user", "del", "newcomer", statedir=site.statedir).returncode == 0
    response = site.get("/api/roots", None, headers=bearer(token))
    assert response.status_code == 401 and "deleted" in response.json()["error"]
    result = cli("user", "add", "x y", statedir=site.statedir, stdin="pw\n")
    assert result.returncode == 1 and result.stderr.startswith("Error: invalid name")
    result = cli("user", "add", "empty", statedir=site.statedir, stdin="\n")
    assert result.returncode == 1 and result.stderr == "Error: the password is empty\n"


def test_c2array_logs_in(site):
    urlbase = f"{site.url}/"
    with blosc2.c2context(urlbase=urlbase, username="reader", password=PASSWORDS["reader"]):
        remote = blosc2.C2Array("foo/ds-1d.b2nd", urlbase=urlbase)
        assert remote[0:5].tolist() == [0, 1, 2, 3, 4]
        other = blosc2.C2Array("bar/dir1/ds-2d.b2nd", urlbase=urlbase)
        want = catmqtt.Client(site.url, token=site.tokens["reader"]).fetch("bar/dir1/ds-2d.b2nd")
        assert np.array_equal(other[:], want)
    with pytest.raises(Exception, match="401"):
        blosc2.C2Array("foo/ds-1d.b2nd", urlbase=urlbase, auth_token="catmqtt_session=junk")


def test_token_expiry_and_the_client_logs_in_again(sample_root, tmp_path):
    broker = Broker("amqtt", tmp_path).start()
    d = Deployment(broker, tmp_path)
    try:
        add_user(tmp_path / "sub", "alice", "alice-pw", "--admin")
        conf = tmp_path / "catmqtt.yaml"
        conf.write_text("subscriber:\n  token_ttl: 2\n")
        d.start_pub("foo", sample_root)
        d.start_sub("sub", "--conf", str(conf), env={"CATMQTT_SECRET": "a secret of the test"})
        url = d.url("sub")
        client = catmqtt.Client(url, user="alice", password="alice-pw")
        wait_for(lambda: "foo" in client.get_roots(), "root foo")
        client.subscribe("foo")
        token = client.session.headers["Authorization"]
        assert requests.get(f"{url}/api/roots", headers={"Authorization": token}).ok

        def expired():
            response = requests.get(f"{url}/api/roots", headers={"Authorization": token})
            return response.status_code == 401 and "expired" in response.json()["error"]

        wait_for(expired, "the token to expire", timeout=10)
        assert client.fetch("foo/ds-1d.b2nd", "0:2").tolist() == [0, 1]
        assert client.session.headers["Authorization"] != token
    finally:
        d.stop_all()
        broker.stop()


def test_up_with_accounts(tmp_path):
    (tmp_path / "catmqtt.yaml").write_text("subscriber:\n  auth: true\n")
    up, mqtt, pub, sub = up_on_free_ports(tmp_path)
    url = f"http://127.0.0.1:{sub}"
    try:
        wait_for(lambda: "Press Ctrl+C to stop." in up.output or not up.alive(), "catmqtt up")
        assert requests.get(f"{url}/api/roots").status_code == 401
        # As the README says: the first admin, in up's state directory.
        result = subprocess.run(
            catmqtt_cmd("user", "add", "admin", "--admin", "--statedir", "_catmqtt/subscriber"),
            input="admin-pw\n",
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "_catmqtt/subscriber/secret").stat().st_mode & 0o777 == 0o600
        env = {"CATMQTT_USER": "admin", "CATMQTT_PASSWORD": "admin-pw"}
        wait_for(lambda: cli("roots", "--sub", url, env=env).stdout == "foo\n", "root foo")
        assert cli("subscribe", "foo", "--sub", url, env=env).stdout == "Ok\n"
        assert cli("show", "foo/ds-1d.b2nd[1:3]", "--sub", url, env=env).stdout == "[1 2]\n"
    finally:
        assert up.stop() == 0, up.output


def test_config_keys():
    s = config.node_settings(
        {
            "subscriber": {
                "auth": True,
                "access": {"foo": ["a"]},
                "allowed_hosts": "x.example",
                "token_ttl": 5,
            }
        },
        "subscriber",
    )
    assert (s["auth"], s["access"], s["allowed_hosts"], s["token_ttl"]) == (
        True,
        {"foo": ["a"]},
        ["x.example"],
        5,
    )
    for bad, message in (
        ({"auth": "yes"}, "auth must be"),
        ({"access": ["foo"]}, "access must map"),
        ({"access": {"foo": "a"}}, "list of user names"),
        ({"access": {"../x": ["a"]}}, "invalid root name"),
        ({"allowed_hosts": [""]}, "allowed_hosts"),
        ({"token_ttl": 0}, "token_ttl"),
    ):
        with pytest.raises(errors.ConfigError, match=message):
            config.node_settings({"subscriber": bad}, "subscriber")


def test_no_accounts_still_checks_hosts_and_origins(sample_root, tmp_path):
    from conftest import running

    broker = Broker("amqtt", tmp_path).start()
    try:
        with running(broker, tmp_path, sample_root) as (pub, sub):
            assert requests.get(f"{sub.url}/api/roots").ok
            assert requests.get(f"{sub.url}/api/roots", headers={"Host": "evil.example"}).status_code == 421
            hit = requests.post(
                f"{sub.url}/api/unsubscribe/foo",
                headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
            )
            assert hit.status_code == 403 and hit.json()["status"] == 403
            assert (
                requests.post(f"{sub.url}/auth/login", json={"username": "a", "password": "b"}).status_code
                == 400
            )
    finally:
        broker.stop()


@pytest.mark.parametrize(
    "user, token, env, conf, want",
    [
        (None, None, {}, {}, (None, None)),
        ("alice", None, {}, {}, ("alice", None)),
        (None, "t1", {}, {}, (None, "t1")),
        ("alice", "t1", {}, {}, (None, "t1")),
        ("alice", None, {"CATMQTT_TOKEN": "t2"}, {}, ("alice", None)),
        (None, None, {"CATMQTT_TOKEN": "t2", "CATMQTT_USER": "bob"}, {}, (None, "t2")),
        (None, None, {"CATMQTT_USER": "bob"}, {"token": "t3"}, ("bob", None)),
        (None, None, {}, {"token": "t3", "user": "carol"}, (None, "t3")),
        (None, None, {}, {"user": "carol"}, ("carol", None)),
    ],
)
def test_client_credentials(monkeypatch, user, token, env, conf, want):
    for name in ("CATMQTT_TOKEN", "CATMQTT_USER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert config.client_credentials({"client": conf}, user, token) == want


@pytest.mark.parametrize("user_auth", [{"user": "a"}, {"password": "x"}, "alice", ["a", "b"]])
def test_bad_user_auth(user_auth):
    with pytest.raises(errors.BadRequest, match="user_auth must be"):
        catmqtt.get_roots("http://127.0.0.1:1", user_auth=user_auth)
