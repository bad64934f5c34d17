"""Failed logins counted and refused: tables of the counts with a fake clock, the
login endpoints with Flask's test client (client addresses, argon2 spared), then
a real subscriber process with the CLI and the library."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import requests
from flask import Flask

import catmqtt
from catmqtt.errors import Busy, TooManyRequests, Unauthorized
from catmqtt.subscriber.accounts import Accounts
from catmqtt.subscriber.guard import Guard
from catmqtt.subscriber.throttle import Logins, client_of
from catmqtt.web import configure_app

from conftest import Broker, Deployment, wait_for
from test_accounts import PASSWORDS, add_user, cli

SECRET = b"s" * 32
A, B = "192.0.2.1", "192.0.2.2"

# The counts


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(logins: Logins, clock: Clock, step: tuple) -> object:
    """Try a login at `step` = (time, address, name, outcome): "wrong" (its password
    is), "right"; return "wrong", "right", or the Retry-After of a refusal."""
    clock.now, address, name, outcome = step
    try:
        with logins.attempt(address, name):
            if outcome == "wrong":
                raise Unauthorized("wrong user name or password")
    except Unauthorized:
        return "wrong"
    except TooManyRequests as exc:
        return exc.retry_after
    return "right"


# Steps of 3 failures a name from an address, 5 from an address, in 100 s:
# (time, address, name, what is tried, what happens: as tried, or the refusal's Retry-After).
SEQUENCES = {
    "refused past 3 failures, even the right password, until the window passes": [
        (0, A, "al", "wrong", "wrong"),
        (10, A, "al", "wrong", "wrong"),
        (20, A, "al", "wrong", "wrong"),
        (30, A, "al", "right", 70),
        (99.5, A, "al", "right", 1),
        (100, A, "al", "wrong", "wrong"),
        (101, A, "al", "right", 9),
        (110, A, "al", "right", "right"),
    ],
    "a success clears the name's count": [
        (0, A, "al", "wrong", "wrong"),
        (1, A, "al", "wrong", "wrong"),
        (2, A, "al", "right", "right"),
        (3, A, "al", "wrong", "wrong"),
        (4, A, "al", "wrong", "wrong"),
        (5, A, "al", "wrong", "wrong"),
        (6, A, "al", "right", 97),
    ],
    "others' names and addresses are not held back": [
        (0, A, "al", "wrong", "wrong"),
        (1, A, "al", "wrong", "wrong"),
        (2, A, "al", "wrong", "wrong"),
        (3, A, "al", "right", 97),
        (4, B, "al", "right", "right"),
        (5, A, "bo", "right", "right"),
        (6, B, "al", "wrong", "wrong"),
    ],
    "past 5 failures from an address, every name is refused": [
        (0, A, "a", "wrong", "wrong"),
        (1, A, "b", "wrong", "wrong"),
        (2, A, "c", "wrong", "wrong"),
        (3, A, "d", "wrong", "wrong"),
        # A success takes nothing off the address's count, nor adds to it.
        (4, A, "e", "right", "right"),
        (5, A, "e", "wrong", "wrong"),
        (6, A, "f", "right", 94),
        (7, B, "f", "right", "right"),
        (100, A, "f", "right", "right"),
    ],
    "the longer wait is told": [
        (0, A, "b", "wrong", "wrong"),
        (1, A, "b", "wrong", "wrong"),
        (10, A, "a", "wrong", "wrong"),
        (11, A, "a", "wrong", "wrong"),
        (12, A, "a", "wrong", "wrong"),
        (13, A, "c", "right", 87),
        (13, A, "a", "right", 97),
        (100, A, "a", "right", 10),
        (100, A, "c", "right", "right"),
    ],
    "an IPv6 address counts as its /64": [
        (0, "2001:db8::1", "al", "wrong", "wrong"),
        (1, "2001:db8::2", "al", "wrong", "wrong"),
        (2, "2001:db8::ffff:1", "al", "wrong", "wrong"),
        (3, "2001:db8::3", "al", "right", 97),
        (4, "2001:db8:0:1::1", "al", "right", "right"),
    ],
    "an IPv4 address written in IPv6 is itself": [
        (0, "::ffff:192.0.2.1", "al", "wrong", "wrong"),
        (1, A, "al", "wrong", "wrong"),
        (2, "::ffff:192.0.2.1", "al", "wrong", "wrong"),
        (3, A, "al", "right", 97),
    ],
}


@pytest.mark.parametrize("steps", SEQUENCES.values(), ids=SEQUENCES.keys())
def test_counts(steps):
    clock = Clock()
    logins = Logins(3, 5, 100, clock=clock)
    assert [run(logins, clock, step[:4]) for step in steps] == [step[4] for step in steps]


@pytest.mark.parametrize(
    "attempts, per_address, tried, refused",
    [
        (0, 5, [("al", "wrong")] * 5, ("bo", 100)),
        (3, 0, [(f"u{n % 10}", "wrong") for n in range(30)], ("u0", 100)),
        (0, 0, [("al", "wrong")] * 50, None),
    ],
)
def test_a_limit_of_0_is_none(attempts, per_address, tried, refused):
    clock = Clock()
    logins = Logins(attempts, per_address, 100, clock=clock)
    assert [run(logins, clock, (0, A, name, outcome)) for name, outcome in tried] == ["wrong"] * len(tried)
    if refused is not None:
        assert run(logins, clock, (0, A, refused[0], "right")) == refused[1]


def test_logins_checked_together_cannot_pass_the_count():
    # Each counts as failed from the moment it is let through.
    clock = Clock()
    logins = Logins(2, 20, 100, clock=clock)
    with logins.attempt(A, "al"), logins.attempt(A, "al"):
        assert run(logins, clock, (0, A, "al", "right")) == 100


def test_at_most_verifying_logins_at_once_and_a_busy_one_is_not_counted():
    clock = Clock()
    logins = Logins(1, 1, 100, verifying=2, clock=clock)
    with logins.attempt(A, "a"), logins.attempt(B, "b"), pytest.raises(Busy) as busy:
        run(logins, clock, (0, "192.0.2.3", "c", "right"))
    assert (busy.value.status, busy.value.retry_after) == (503, 1)
    assert run(logins, clock, (0, "192.0.2.3", "c", "wrong")) == "wrong"
    assert run(logins, clock, (0, "192.0.2.3", "c", "right")) == 100


def test_an_error_is_no_failure():
    clock = Clock()
    logins = Logins(1, 1, 100, clock=clock)
    for _ in range(3):
        with pytest.raises(RuntimeError), logins.attempt(A, "al"):
            raise RuntimeError("the store is locked")
    assert run(logins, clock, (0, A, "al", "right")) == "right"


def test_the_counts_are_bounded():
    clock = Clock()
    logins = Logins(1, 100, 100, entries=10, clock=clock)
    assert run(logins, clock, (0, A, "al", "wrong")) == "wrong"
    assert run(logins, clock, (1, A, "al", "right")) == 99
    # A flood of other addresses and names: the oldest counts go first.
    for n in range(1000):
        assert run(logins, clock, (2, f"10.0.{n // 256}.{n % 256}", f"u{n}", "wrong")) == "wrong"
        assert len(logins._failures) <= 10
    assert run(logins, clock, (3, A, "al", "right")) == "right"


def test_counts_left_behind_by_the_window_are_dropped():
    clock = Clock()
    logins = Logins(3, 5, 100, clock=clock)
    for n in range(50):
        run(logins, clock, (n, f"10.0.0.{n}", "al", "wrong"))
    run(logins, clock, (200, A, "al", "wrong"))
    assert set(logins._failures) == {(A, None), (A, "al")}


def test_refusals_are_logged_once_a_window_an_address(caplog):
    clock = Clock()
    logins = Logins(1, 2, 100, clock=clock)
    caplog.set_level(logging.WARNING, "catmqtt.subscriber.throttle")
    run(logins, clock, (0, A, "al", "wrong"))
    run(logins, clock, (0, B, "al", "wrong"))
    for t in range(1, 20):
        run(logins, clock, (t, A, "al", "right"))
        run(logins, clock, (t, B, "al", "right"))
    run(logins, clock, (20, A, "bo", "wrong"))
    assert run(logins, clock, (21, A, "cy", "right")) == 79
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "logins of 'al' from 192.0.2.1 refused for 99 s: too many failed within 100 s"
        " (more refusals of 192.0.2.1 within 100 s are not logged)",
        "logins of 'al' from 192.0.2.2 refused for 99 s: too many failed within 100 s"
        " (more refusals of 192.0.2.2 within 100 s are not logged)",
    ]
    caplog.clear()
    run(logins, clock, (101, A, "dd", "wrong"))
    assert run(logins, clock, (102, A, "cy", "right")) == 18
    assert [r.getMessage() for r in caplog.records] == [
        "logins from 192.0.2.1 refused for 18 s: too many failed within 100 s"
        " (more refusals of 192.0.2.1 within 100 s are not logged)"
    ]


@pytest.mark.parametrize(
    "address, client",
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("::1", "::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("", ""),
        (None, ""),
        ("not an address", "not an address"),
    ],
)
def test_client_of(address, client):
    assert client_of(address) == client


# The endpoints, with Flask's test client


@pytest.fixture
def app(tmp_path) -> Iterator[SimpleNamespace]:
    """The guard's endpoints with accounts (users al and bo) and small limits; `verified`
    counts the passwords argon2 checks."""
    accounts = Accounts(tmp_path)
    for name in ("al", "bo"):
        accounts.add_user(name, f"{name}-pw")
    made = SimpleNamespace(verified=0)
    verify = accounts._hasher.verify

    def counted(*args, **kwargs):
        made.verified += 1
        return verify(*args, **kwargs)

    accounts._hasher.verify = counted
    made.flask = Flask(__name__, static_folder=None)
    configure_app(made.flask, tmp_path)
    settings = {"http": ("127.0.0.1", 0), "login_attempts": 2, "login_attempts_per_address": 3}
    made.guard = Guard(settings, accounts, SECRET)
    made.guard.install(made.flask)
    made.client = made.flask.test_client()

    def login(name: str, password: str, address: str = A, path: str = "/auth/login", **kwargs):
        form = {"username": name, "password": password}
        return made.client.post(
            path,
            **({"data": form} if path == "/auth/jwt/login" else {"json": form}),
            environ_base={"REMOTE_ADDR": address},
            **kwargs,
        )

    made.login = login
    yield made
    accounts.close()


def waits(response, message: str) -> int:
    """Return the seconds a refusal (429) says to wait, checking that its body says `message` and as much."""
    body = response.get_json()
    match = re.fullmatch(rf"{re.escape(message)}: try again in (\d+) s", body["error"])
    assert match and body["status"] == 429, body
    assert response.headers["Retry-After"] == match[1]
    return int(match[1])


def test_a_refused_login_checks_no_password(app):
    for _ in range(2):
        assert app.login("al", "wrong").status_code == 401
    assert app.verified == 2
    for path in ("/auth/login", "/auth/jwt/login"):
        response = app.login("al", "al-pw", path=path)
        assert response.status_code == 429 and response.mimetype == "application/json"
        assert waits(response, "too many failed logins of 'al' from this address") > 800
    # Nor does a browser's form get other than JSON.
    html = {"Accept": "text/html"}
    response = app.login("al", "al-pw", path="/auth/jwt/login", headers=html)
    assert response.status_code == 429 and response.get_json()["status"] == 429
    assert app.verified == 2


def test_each_address_and_name_has_its_own_count(app):
    for _ in range(2):
        assert app.login("al", "wrong").status_code == 401
    assert app.login("al", "al-pw").status_code == 429
    assert app.login("al", "al-pw", address=B).status_code == 200
    assert app.login("bo", "bo-pw").status_code == 200
    # The address's third failure: no name gets through from it.
    assert app.login("bo", "wrong").status_code == 401
    response = app.login("bo", "bo-pw")
    assert response.status_code == 429
    assert waits(response, "too many failed logins from this address") > 800
    assert app.login("bo", "bo-pw", address=B).status_code == 200
    assert app.verified == 6


def test_too_many_logins_checked_at_once(app):
    app.guard.logins = Logins(2, 3, 900, verifying=0)
    response = app.login("al", "al-pw")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "checking as many logins" in response.get_json()["error"]
    assert app.verified == 0


# A real subscriber


@pytest.fixture
def subscriber(tmp_path) -> Iterator[SimpleNamespace]:
    """A subscriber with accounts (users root and reader), 3 failed logins a name in 6 s."""
    broker = Broker("amqtt", tmp_path).start()
    d = Deployment(broker, tmp_path)
    try:
        for name in ("root", "reader"):
            add_user(tmp_path / "sub", name, PASSWORDS[name])
        conf = tmp_path / "catmqtt.yaml"
        conf.write_text("subscriber:\n  auth: true\n  login_attempts: 3\n  login_window: 6\n")
        url = d.start_sub("sub", "--conf", str(conf))
        yield SimpleNamespace(url=url, proc=d.procs["sub"])
    finally:
        d.stop_all()
        broker.stop()


def post_login(url: str, name: str, password: str) -> requests.Response:
    return requests.post(f"{url}/auth/login", json={"username": name, "password": password}, timeout=30)


def test_a_subscriber_refuses_a_guesser_for_its_window(subscriber):
    url = subscriber.url
    for _ in range(3):
        assert post_login(url, "reader", "wrong").status_code == 401
    refused = post_login(url, "reader", PASSWORDS["reader"])
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["Retry-After"]) <= 6
    assert refused.json()["error"].startswith("too many failed logins of 'reader' from this address")
    jwt = requests.post(
        f"{url}/auth/jwt/login", data={"username": "reader", "password": PASSWORDS["reader"]}, timeout=30
    )
    assert jwt.status_code == 429 and jwt.json()["status"] == 429
    assert post_login(url, "root", PASSWORDS["root"]).ok
    # The command line says so in one line.
    result = cli("roots", "--sub", url, "--user", "reader", env={"CATMQTT_PASSWORD": PASSWORDS["reader"]})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: too many failed logins of 'reader' from this address: try again")
    assert result.stderr.count("\n") == 1
    # The library raises it.
    with (
        catmqtt.Client(url, user="reader", password=PASSWORDS["reader"]) as client,
        pytest.raises(TooManyRequests, match="too many failed logins of 'reader'"),
    ):
        client.get_roots()
    # The refusals are logged once.
    assert subscriber.proc.output.count("refused for") == 1
    wait_for(lambda: post_login(url, "reader", PASSWORDS["reader"]).ok, "the window to pass", timeout=15)
