"""Tables of good and bad settings for catmqtt.config: parsers, load and precedence."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from catmqtt import config
from catmqtt.config import (
    DEFAULT_FILE,
    PASSWORD_ENV,
    SUB_ENV,
    BrokerAddress,
    client_sub,
    load,
    node_settings,
    parse_broker_url,
    parse_hostport,
    parse_http_url,
    parse_loglevel,
)
from catmqtt.errors import ConfigError
from catmqtt.topics import DEFAULT_PREFIX


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv(SUB_ENV, raising=False)


# parse_hostport


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8001", ("127.0.0.1", 8001)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("example.org:1", ("example.org", 1)),
        ("[::1]:80", ("::1", 80)),
        ("[::]:8001", ("::", 8001)),
        ("*:3104", ("0.0.0.0", 3104)),
    ],
)
def test_parse_hostport_good(value: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(value, "http") == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "8001",
        ":8001",
        "host:",
        "host:65536",
        "host:-1",
        "host:+80",
        "host:8a",
        "[::1]",
        "[]:80",
        None,
        8001,
    ],
)
def test_parse_hostport_bad(value: object) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(f"invalid http address {value!r}: expected HOST:PORT, like 127.0.0.1:8001"),
    ):
        parse_hostport(value, "http")


def test_parse_hostport_superscript_port() -> None:
    with pytest.raises(ConfigError, match="invalid http address"):
        parse_hostport("host:\u00b2", "http")


# parse_broker_url


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mqtt://h", BrokerAddress("h", 1883, False)),
        ("mqtts://h", BrokerAddress("h", 8883, True)),
        ("mqtt://h:1884", BrokerAddress("h", 1884, False)),
        ("mqtts://h:443", BrokerAddress("h", 443, True)),
        ("h", BrokerAddress("h", 1883, False)),
        ("h:1999", BrokerAddress("h", 1999, False)),
        ("127.0.0.1:1883", BrokerAddress("127.0.0.1", 1883, False)),
        ("mqtt://h/", BrokerAddress("h", 1883, False)),
        ("mqtt://Broker.Example:1", BrokerAddress("broker.example", 1, False)),
    ],
)
def test_parse_broker_url_good(value: str, expected: BrokerAddress) -> None:
    got = parse_broker_url(value)
    assert got == expected
    assert parse_broker_url(got.url) == got


@pytest.mark.parametrize(
    "value",
    [
        "http://h",
        "ws://h:9001",
        "tcp://h:1883",
        "mqtt://",
        "mqtt://:1883",
        "mqtt://h:99999",
        "mqtt://h:x",
        "mqtt://h/path",
        "h:port",
        "",
        None,
        1883,
    ],
)
def test_parse_broker_url_bad(value: object) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(f"invalid broker URL {value!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT"),
    ):
        parse_broker_url(value)


def test_broker_address_url() -> None:
    assert BrokerAddress("h", 1, True).url == "mqtts://h:1"
    assert BrokerAddress("h", 2, False).url == "mqtt://h:2"


@pytest.mark.parametrize("value", ["mqtt://[::1]:1883", "[::1]:1883", "mqtts://[fe80::1]"])
def test_parse_broker_url_ipv6(value: str) -> None:
    got = parse_broker_url(value)
    assert ":" in got.host and not got.host.startswith("[")


def test_broker_address_url_ipv6_round_trip() -> None:
    got = parse_broker_url("mqtt://[::1]:1883")
    assert parse_broker_url(got.url) == got


@pytest.mark.parametrize("value", ["mqtt://h:0", "mqtts://h:0", "h:0"])
def test_parse_broker_url_port_0(value: str) -> None:
    try:
        got = parse_broker_url(value)
    except ConfigError:
        return
    assert got.port == 0


# parse_http_url


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://h:8002", "http://h:8002"),
        ("https://h", "https://h"),
        ("http://h:8002/", "http://h:8002"),
        ("http://h/sub/", "http://h/sub"),
        ("http://[::1]:8002", "http://[::1]:8002"),
        ("HTTP://h", "HTTP://h"),
    ],
)
def test_parse_http_url_good(value: str, expected: str) -> None:
    assert parse_http_url(value, "urlbase") == expected


@pytest.mark.parametrize(
    "value",
    [
        "h:8002",
        "ftp://h",
        "http://",
        "http://:80",
        "http:///x",
        "http://h:x",
        "http://h:70000",
        "",
        None,
        8002,
        # Subscribers refuse such URLs in statuses and announcements.
        "http://a b:8002",
        "http://h:8002/\n",
        "http://h\u00e9:8002",
    ],
)
def test_parse_http_url_bad(value: object) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"invalid urlbase {value!r}: expected http://HOST:PORT")):
        parse_http_url(value, "urlbase")


# parse_loglevel


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("debug", "DEBUG"),
        ("Info", "INFO"),
        ("WARNING", "WARNING"),
        ("error", "ERROR"),
        ("critical", "CRITICAL"),
    ],
)
def test_parse_loglevel_good(value: str, expected: str) -> None:
    assert parse_loglevel(value) == expected


@pytest.mark.parametrize("value", ["warn", "", "NOTSET", "info ", 10, None])
def test_parse_loglevel_bad(value: object) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"invalid log level {value!r}: one of DEBUG, INFO")):
        parse_loglevel(value)


# load


def write(tmp_path: Path, text: str | bytes, name: str = "conf.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("# only a comment\n", {}),
        ("broker:\n", {"broker": None}),
        (
            "broker:\n  listen: 127.0.0.1:1999\n  prefix: site/v1\n"
            "publisher:\n  http: 127.0.0.1:9001\n  name: r\n"
            "publisher.p1:\n  http: 127.0.0.1:9002\n"
            "subscriber.s-1@x:\n  fetch_workers: 2\n"
            "client:\n  sub: http://h:8002\n",
            {
                "broker": {"listen": "127.0.0.1:1999", "prefix": "site/v1"},
                "publisher": {"http": "127.0.0.1:9001", "name": "r"},
                "publisher.p1": {"http": "127.0.0.1:9002"},
                "subscriber.s-1@x": {"fetch_workers": 2},
                "client": {"sub": "http://h:8002"},
            },
        ),
    ],
)
def test_load_good(tmp_path: Path, text: str, expected: dict[str, Any]) -> None:
    assert load(write(tmp_path, text)) == expected
    assert load(str(write(tmp_path, text))) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("pub:\n  http: x\n", "unknown section 'pub' (sections: broker, publisher[.<id>]"),
        ("broker.b1:\n", "unknown section 'broker.b1'"),
        ("client.c1:\n", "unknown section 'client.c1'"),
        ("1:\n", "unknown section 1"),
        ("publisher: 3\n", "section 'publisher' is not a mapping"),
        ("publisher: [http]\n", "section 'publisher' is not a mapping"),
        ("publisher:\n  colour: red\n", "unknown key(s) colour in section 'publisher' (known: http, urlbase"),
        ("subscriber.s1:\n  name: r\n  zz: 1\n", "unknown key(s) name, zz in section 'subscriber.s1'"),
        ("broker:\n  http: x\n", "unknown key(s) http in section 'broker'"),
        ("client:\n  url: x\n", "unknown key(s) url in section 'client' (known: sub, user, token)"),
        ("- broker\n- publisher\n", "must hold a mapping of sections"),
        ("hello\n", "must hold a mapping of sections"),
        ("42\n", "must hold a mapping of sections"),
    ],
)
def test_load_bad(tmp_path: Path, text: str, match: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(f"config file {str(path)!r}") + ".*" + re.escape(match)):
        load(path)


def test_load_bad_section_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("invalid node id 'bad id'")):
        load(write(tmp_path, "publisher.bad id:\n"))


@pytest.mark.parametrize("name", ["publisher.", "subscriber.", "client.", "broker."])
def test_load_section_with_empty_id(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="unknown section"):
        load(write(tmp_path, f"{name}:\n"))


@pytest.mark.parametrize(
    "text",
    [
        "broker: [1, 2\n",
        "broker:\n  listen: x\n listen: y\n",
        "broker:\n\tlisten: x\n",
        "broker: {\n",
        'broker:\n  listen: "x\n',
        "broker:\n  listen: a\x01b\n",
        "a: b: c\n",
    ],
)
def test_load_bad_yaml_is_one_line(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(
        ConfigError, match=re.escape(f"config file {str(path)!r} is not valid YAML: ")
    ) as info:
        load(path)
    assert "\n" not in str(info.value)
    assert str(info.value).strip() == str(info.value)


def test_load_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, b"broker:\n  listen: \xff\xfe\n")
    with pytest.raises(ConfigError, match="config file"):
        load(path)


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"cannot read config file {str(path)!r}: ")):
        load(path)


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path)


def test_load_default_file_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load(None) == {}


def test_load_default_file_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "client:\n  sub: http://h:1\n", DEFAULT_FILE)
    assert load(None) == {"client": {"sub": "http://h:1"}}
    write(tmp_path, "nope:\n", DEFAULT_FILE)
    with pytest.raises(ConfigError, match="unknown section 'nope'"):
        load(None)


# node_settings: precedence


LAYERS = ("option", "id", "role", "broker.url", "broker.listen")


def layered_conf(key: str, values: dict[str, Any], layers: tuple[str, ...]) -> tuple[dict, dict]:
    """Return a config and options that set `key` in each of `layers` only."""
    conf: dict[str, dict[str, Any]] = {}
    options: dict[str, Any] = {}
    if "option" in layers:
        options[key] = values["option"]
    if "id" in layers:
        conf.setdefault("publisher.p1", {})[key] = values["id"]
    if "role" in layers:
        conf.setdefault("publisher", {})[key] = values["role"]
    if "broker.url" in layers:
        conf.setdefault("broker", {})["url"] = values["broker.url"]
    if "broker.listen" in layers:
        conf.setdefault("broker", {})["listen"] = values["broker.listen"]
    if "broker.prefix" in layers:
        conf.setdefault("broker", {})["prefix"] = values["broker.prefix"]
    return conf, options


BROKERS = {
    "option": "mqtt://opt:1",
    "id": "mqtt://id:2",
    "role": "mqtts://role",
    "broker.url": "mqtts://url:4",
    "broker.listen": "127.0.0.5:5",
}


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        (LAYERS, BrokerAddress("opt", 1, False)),
        (LAYERS[1:], BrokerAddress("id", 2, False)),
        (LAYERS[2:], BrokerAddress("role", 8883, True)),
        (LAYERS[3:], BrokerAddress("url", 4, True)),
        (LAYERS[4:], BrokerAddress("127.0.0.5", 5, False)),
        ((), BrokerAddress("127.0.0.1", 1883, False)),
        (("option", "broker.listen"), BrokerAddress("opt", 1, False)),
        (("role", "broker.listen"), BrokerAddress("role", 8883, True)),
    ],
)
def test_node_settings_broker_precedence(layers: tuple[str, ...], expected: BrokerAddress) -> None:
    conf, options = layered_conf("broker", BROKERS, layers)
    assert node_settings(conf, "publisher", "p1", **options)["broker"] == expected


HTTPS = {"option": "127.0.0.1:9003", "id": "127.0.0.1:9002", "role": "127.0.0.1:9001"}


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        (("option", "id", "role"), ("127.0.0.1", 9003)),
        (("id", "role"), ("127.0.0.1", 9002)),
        (("role",), ("127.0.0.1", 9001)),
        ((), ("127.0.0.1", 8001)),
        (("option",), ("127.0.0.1", 9003)),
    ],
)
def test_node_settings_http_precedence(layers: tuple[str, ...], expected: tuple[str, int]) -> None:
    conf, options = layered_conf("http", HTTPS, layers)
    assert node_settings(conf, "publisher", "p1", **options)["http"] == expected


def test_node_settings_other_id_uses_role_section() -> None:
    conf, _ = layered_conf("http", HTTPS, ("id", "role"))
    assert node_settings(conf, "publisher", "p2")["http"] == ("127.0.0.1", 9001)
    assert node_settings(conf, "publisher")["http"] == ("127.0.0.1", 9001)


def test_node_settings_none_option_is_unset() -> None:
    conf, _ = layered_conf("http", HTTPS, ("id",))
    assert node_settings(conf, "publisher", "p1", http=None)["http"] == ("127.0.0.1", 9002)


PREFIXES = {"option": "o/v1", "id": "i/v1", "role": "r/v1", "broker.prefix": "b/v1"}


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        (("option", "id", "role", "broker.prefix"), "o/v1"),
        (("id", "role", "broker.prefix"), "i/v1"),
        (("role", "broker.prefix"), "r/v1"),
        (("broker.prefix",), "b/v1"),
        ((), DEFAULT_PREFIX),
    ],
)
def test_node_settings_prefix_precedence(layers: tuple[str, ...], expected: str) -> None:
    conf, options = layered_conf("prefix", PREFIXES, layers)
    assert node_settings(conf, "publisher", "p1", **options)["prefix"] == expected


LEVELS = {"option": "debug", "id": "error", "role": "warning"}


@pytest.mark.parametrize(
    ("layers", "expected"),
    [(("option", "id", "role"), "DEBUG"), (("id", "role"), "ERROR"), (("role",), "WARNING"), ((), "INFO")],
)
def test_node_settings_loglevel_precedence(layers: tuple[str, ...], expected: str) -> None:
    conf, options = layered_conf("loglevel", LEVELS, layers)
    assert node_settings(conf, "publisher", "p1", **options)["loglevel"] == expected


@pytest.mark.parametrize(
    ("role", "node_id", "conf", "expected"),
    [
        ("publisher", "p1", {}, Path("_catmqtt") / "publisher.p1"),
        ("publisher", None, {}, Path("_catmqtt") / "publisher"),
        ("subscriber", "s1", {}, Path("_catmqtt") / "subscriber.s1"),
        ("subscriber", None, {}, Path("_catmqtt") / "subscriber"),
        ("publisher", "p1", {"publisher": {"statedir": "/var/x"}}, Path("/var/x")),
        (
            "publisher",
            "p1",
            {"publisher.p1": {"statedir": "st"}, "publisher": {"statedir": "no"}},
            Path("st"),
        ),
    ],
)
def test_node_settings_statedir(role: str, node_id: str | None, conf: dict, expected: Path) -> None:
    statedir = node_settings(conf, role, node_id)["statedir"]
    assert isinstance(statedir, Path)
    assert statedir == expected


def test_node_settings_defaults() -> None:
    pub = node_settings({}, "publisher", "p1")
    assert pub["http"] == ("127.0.0.1", 8001)
    assert pub["broker"] == BrokerAddress("127.0.0.1", 1883, False)
    assert pub["prefix"] == DEFAULT_PREFIX
    assert pub["mqtt_password"] is None
    assert pub["urlbase"] is None and pub["name"] is None
    sub = node_settings({}, "subscriber", "s1")
    assert sub["http"] == ("127.0.0.1", 8002)
    assert sub["fetch_workers"] == 8
    assert pub["http_threads"] == sub["http_threads"] == 16
    assert pub["http_connections"] == sub["http_connections"] == 1000
    assert pub["http_timeout"] == sub["http_timeout"] == 30
    assert (sub["max_stream_bytes"], sub["max_temp_bytes"]) == (256 << 20, 1 << 30)
    assert (sub["login_attempts"], sub["login_attempts_per_address"], sub["login_window"]) == (5, 20, 900)
    assert (sub["fetch_timeout"], sub["fetch_min_rate"]) == (30, 1000)


@pytest.mark.parametrize(
    ("env", "conf", "options", "expected"),
    [
        ("from-env", {}, {}, "from-env"),
        (None, {}, {}, None),
        ("from-env", {"publisher": {"mqtt_password": "from-conf"}}, {}, "from-conf"),
        ("from-env", {"publisher.p1": {"mqtt_password": "from-id"}}, {}, "from-id"),
        ("from-env", {"publisher": {"mqtt_password": "from-conf"}}, {"mqtt_password": "opt"}, "opt"),
        (None, {}, {"mqtt_password": "opt"}, "opt"),
    ],
)
def test_node_settings_password(
    monkeypatch: pytest.MonkeyPatch, env: str | None, conf: dict, options: dict, expected: str | None
) -> None:
    if env is not None:
        monkeypatch.setenv(PASSWORD_ENV, env)
    assert node_settings(conf, "publisher", "p1", **options)["mqtt_password"] == expected


# node_settings: validation


@pytest.mark.parametrize(
    ("role", "options", "match"),
    [
        ("publisher", {"http": "nope"}, "invalid http address 'nope'"),
        ("publisher", {"http": 8001}, "invalid http address 8001"),
        ("publisher", {"broker": "http://h"}, "invalid broker URL 'http://h'"),
        ("publisher", {"prefix": "a/+"}, "invalid topic prefix 'a/+'"),
        ("publisher", {"prefix": "/a"}, "invalid topic prefix '/a'"),
        ("publisher", {"loglevel": "loud"}, "invalid log level 'loud'"),
        ("publisher", {"urlbase": "ftp://h"}, "invalid urlbase 'ftp://h'"),
        ("publisher", {"name": "bad name"}, "invalid root name 'bad name'"),
        ("publisher", {"name": ".r"}, "invalid root name '.r'"),
        ("subscriber", {"fetch_workers": 0}, "fetch_workers must be an integer from 1 to 256, not 0"),
        ("subscriber", {"fetch_workers": 257}, "fetch_workers must be an integer from 1 to 256, not 257"),
        ("subscriber", {"fetch_workers": True}, "fetch_workers must be an integer from 1 to 256, not True"),
        ("subscriber", {"fetch_workers": "8"}, "fetch_workers must be an integer from 1 to 256, not '8'"),
        ("subscriber", {"fetch_workers": 2.0}, "fetch_workers must be an integer"),
        ("subscriber", {"max_fetch_bytes": 0}, "max_fetch_bytes must be an integer from 1 to"),
        ("publisher", {"http_threads": 0}, "http_threads must be an integer from 1 to 1024, not 0"),
        ("subscriber", {"http_threads": 1025}, "http_threads must be an integer from 1 to 1024, not 1025"),
        ("subscriber", {"http_threads": "4"}, "http_threads must be an integer from 1 to 1024, not '4'"),
        ("publisher", {"http_connections": 0}, "http_connections must be an integer from 1 to 100000, not 0"),
        ("subscriber", {"http_timeout": 0}, "http_timeout must be an integer from 1 to 86400, not 0"),
        ("subscriber", {"max_stream_bytes": 0}, "max_stream_bytes must be an integer from 1 to"),
        ("subscriber", {"max_temp_bytes": "1GB"}, "max_temp_bytes must be an integer from 1 to"),
        ("subscriber", {"max_fetch_bytes": (1 << 50) + 1}, "max_fetch_bytes must be an integer from 1 to"),
        ("subscriber", {"login_attempts": -1}, "login_attempts must be an integer from 0 to 1000, not -1"),
        ("subscriber", {"login_attempts": 1001}, "login_attempts must be an integer from 0 to 1000"),
        (
            "subscriber",
            {"login_attempts_per_address": 1e3},
            "login_attempts_per_address must be an integer from 0 to 100000, not 1000.0",
        ),
        ("subscriber", {"login_window": 0}, "login_window must be an integer from 1 to 86400, not 0"),
        ("subscriber", {"fetch_min_rate": -1}, "fetch_min_rate must be a size in bytes, like 500MB"),
        ("subscriber", {"fetch_min_rate": "1kB/s"}, "fetch_min_rate must be a size in bytes, like 500MB"),
        ("subscriber", {"fetch_min_rate": "fast"}, "fetch_min_rate must be a size in bytes, like 500MB"),
        ("subscriber", {"fetch_min_rate": "2000PB"}, "fetch_min_rate '2000PB' is more than the largest size"),
        ("publisher", {"settle": -1}, "settle must be a number from 0 to 3600, not -1"),
        ("publisher", {"settle": "1"}, "settle must be a number from 0 to 3600, not '1'"),
        ("publisher", {"settle": True}, "settle must be a number from 0 to 3600, not True"),
        ("publisher", {"settle": 1e9}, "settle must be a number from 0 to 3600"),
    ],
)
def test_node_settings_bad(role: str, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(match)):
        node_settings({}, role, "n1", **options)


def test_node_settings_bad_value_from_file() -> None:
    with pytest.raises(ConfigError, match="invalid topic prefix 'x/#'"):
        node_settings({"broker": {"prefix": "x/#"}}, "subscriber", "s1")
    with pytest.raises(ConfigError, match="invalid broker URL 'ws://h'"):
        node_settings({"broker": {"url": "ws://h"}}, "subscriber", "s1")


@pytest.mark.parametrize(
    ("role", "options", "key", "expected"),
    [
        ("publisher", {"urlbase": "http://h:8001/"}, "urlbase", "http://h:8001"),
        ("publisher", {"name": "my.root"}, "name", "my.root"),
        ("subscriber", {"fetch_workers": 1}, "fetch_workers", 1),
        ("subscriber", {"fetch_workers": 256}, "fetch_workers", 256),
        ("subscriber", {"max_fetch_bytes": 1}, "max_fetch_bytes", 1),
        ("publisher", {"http_threads": 1}, "http_threads", 1),
        ("subscriber", {"http_threads": 1024}, "http_threads", 1024),
        ("publisher", {"http_connections": 5000}, "http_connections", 5000),
        ("subscriber", {"http_timeout": 5}, "http_timeout", 5),
        ("subscriber", {"max_temp_bytes": 1 << 20}, "max_temp_bytes", 1 << 20),
        ("subscriber", {"http": "[::1]:0"}, "http", ("::1", 0)),
        ("subscriber", {"login_attempts": 0}, "login_attempts", 0),
        ("subscriber", {"login_attempts": 1000}, "login_attempts", 1000),
        ("subscriber", {"login_attempts_per_address": 0}, "login_attempts_per_address", 0),
        ("subscriber", {"login_window": 1}, "login_window", 1),
        ("subscriber", {"login_window": 86400}, "login_window", 86400),
        ("subscriber", {"fetch_min_rate": 0}, "fetch_min_rate", 0),
        ("subscriber", {"fetch_min_rate": "0"}, "fetch_min_rate", 0),
        ("subscriber", {"fetch_min_rate": 500}, "fetch_min_rate", 500),
        ("subscriber", {"fetch_min_rate": "4kB"}, "fetch_min_rate", 4000),
        ("subscriber", {"fetch_min_rate": "2KiB"}, "fetch_min_rate", 2048),
        ("subscriber", {"fetch_min_rate": "1.5 MB"}, "fetch_min_rate", 1_500_000),
    ],
)
def test_node_settings_good(role: str, options: dict, key: str, expected: Any) -> None:
    assert node_settings({}, role, "n1", **options)[key] == expected


# client_sub


@pytest.mark.parametrize(
    ("option", "env", "conf", "expected"),
    [
        ("http://opt:1/", "http://env:2", {"client": {"sub": "http://conf:3"}}, "http://opt:1"),
        (None, "http://env:2", {"client": {"sub": "http://conf:3"}}, "http://env:2"),
        (None, None, {"client": {"sub": "http://conf:3"}}, "http://conf:3"),
        (None, None, {}, "http://127.0.0.1:8002"),
        (None, None, {"client": None}, "http://127.0.0.1:8002"),
        (None, "", {"client": {"sub": "http://conf:3"}}, "http://conf:3"),
        ("http://opt:1", None, {}, "http://opt:1"),
        # Where the subscriber section listens, reached on this host.
        (None, None, {"subscriber": {"http": "127.0.0.1:9000"}}, "http://127.0.0.1:9000"),
        (None, None, {"subscriber": {"http": "*:9000"}}, "http://127.0.0.1:9000"),
        (None, None, {"subscriber": {"http": "[::]:9000"}}, "http://[::1]:9000"),
        (None, None, {"subscriber": {"http": "[::1]:9000"}}, "http://[::1]:9000"),
        (None, None, {"subscriber": {"http": "edge.example:9000"}}, "http://edge.example:9000"),
        (None, None, {"subscriber": {"http": "127.0.0.1:0"}}, "http://127.0.0.1:8002"),
        (
            None,
            None,
            {"subscriber": {"http": "127.0.0.1:9000", "urlbase": "http://proxy/sub"}},
            "http://proxy/sub",
        ),
        (
            None,
            None,
            {"client": {"sub": "http://c:1"}, "subscriber": {"http": "127.0.0.1:9000"}},
            "http://c:1",
        ),
    ],
)
def test_client_sub_precedence(
    monkeypatch: pytest.MonkeyPatch, option: str | None, env: str | None, conf: dict, expected: str
) -> None:
    if env is not None:
        monkeypatch.setenv(SUB_ENV, env)
    assert client_sub(conf, option) == expected


@pytest.mark.parametrize(
    ("option", "env", "conf", "bad"),
    [
        ("ftp://h", None, {}, "ftp://h"),
        (None, "h:8002", {}, "h:8002"),
        (None, None, {"client": {"sub": "8002"}}, "8002"),
    ],
)
def test_client_sub_bad(
    monkeypatch: pytest.MonkeyPatch, option: str | None, env: str | None, conf: dict, bad: str
) -> None:
    if env is not None:
        monkeypatch.setenv(SUB_ENV, env)
    with pytest.raises(ConfigError, match=re.escape(f"invalid subscriber URL {bad!r}: expected http://")):
        client_sub(conf, option)


@pytest.mark.parametrize(
    ("broker", "listen", "ws"),
    [
        ({}, "127.0.0.1:1883", "127.0.0.1:9001"),
        # YAML reads off, no and false as False.
        ({"ws": False}, "127.0.0.1:1883", None),
        ({"ws": "off"}, "127.0.0.1:1883", None),
        ({"ws": "OFF", "listen": "*:3104"}, "0.0.0.0:3104", None),
        ({"ws": "[::1]:9001"}, "127.0.0.1:1883", "[::1]:9001"),
    ],
)
def test_broker_section(broker: dict, listen: str, ws: str | None) -> None:
    s = config.broker_section({"broker": broker})
    assert (s["listen"], s["ws"]) == (listen, ws)


@pytest.mark.parametrize(
    ("broker", "match"),
    [
        ({"ws": True}, "invalid broker ws address True"),
        ({"ws": 9001}, "invalid broker ws address 9001"),
        ({"listen": "1883"}, "invalid broker listen address '1883'"),
    ],
)
def test_broker_section_bad(broker: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(match)):
        config.broker_section({"broker": broker})


# Every setting, given a value of the wrong kind in the file: one line naming its section and key

INT, LIST, MAP, BOOL, NULL = 5, [1], {"a": 1}, True, None
NOT_TEXT = (INT, LIST, MAP, BOOL, False)
NOT_NUMBER = (LIST, MAP, BOOL, NULL, "5")
WRONG: list[tuple[str, str, tuple]] = [
    ("broker", "listen", (*NOT_TEXT, NULL)),
    ("broker", "ws", (INT, LIST, MAP, BOOL, NULL)),
    ("broker", "url", NOT_TEXT),
    ("broker", "prefix", (*NOT_TEXT, NULL)),
    ("broker", "amqtt_conf", (*NOT_TEXT, "")),
    ("broker", "loglevel", (*NOT_TEXT, NULL)),
    ("broker", "statedir", (*NOT_TEXT, "")),
    *(
        (section, key, values)
        for section in ("publisher", "subscriber", "subscriber.s1")
        for key, values in (
            ("http", (*NOT_TEXT, NULL)),
            ("urlbase", NOT_TEXT),
            ("statedir", (*NOT_TEXT, "")),
            ("broker", NOT_TEXT),
            ("prefix", NOT_TEXT),
            ("mqtt_user", (*NOT_TEXT, "")),
            ("mqtt_password", NOT_TEXT),
            ("cafile", (*NOT_TEXT, "")),
            ("loglevel", (*NOT_TEXT, NULL)),
            ("http_threads", NOT_NUMBER),
            ("http_connections", NOT_NUMBER),
            ("http_timeout", NOT_NUMBER),
        )
    ),
    ("publisher", "name", NOT_TEXT),
    ("publisher", "root", (*NOT_TEXT, "")),
    ("publisher", "watch", (INT, LIST, MAP, BOOL, NULL, "on")),
    ("publisher", "settle", NOT_NUMBER),
    ("publisher", "sign_key", (*NOT_TEXT, "")),
    ("subscriber", "fetch_workers", NOT_NUMBER),
    ("subscriber", "fetch_timeout", NOT_NUMBER),
    ("subscriber", "max_fetch_bytes", NOT_NUMBER),
    ("subscriber", "max_stream_bytes", NOT_NUMBER),
    ("subscriber", "max_temp_bytes", NOT_NUMBER),
    ("subscriber", "trust", (INT, MAP, BOOL, False)),
    ("subscriber", "auth", (INT, LIST, MAP, NULL, "yes")),
    ("subscriber", "access", (INT, LIST, MAP, BOOL)),
    ("subscriber", "allowed_hosts", (INT, LIST, MAP, BOOL)),
    ("subscriber", "token_ttl", NOT_NUMBER),
    ("subscriber", "login_attempts", (*NOT_NUMBER, -1, 2.5)),
    ("subscriber", "login_attempts_per_address", (*NOT_NUMBER, -1, False)),
    ("subscriber", "login_window", (*NOT_NUMBER, 0, 0.5, 86401)),
    ("subscriber", "cache_size", (INT, LIST, MAP, BOOL, False)),
    ("subscriber", "min_free", (LIST, MAP, BOOL, NULL)),
    ("subscriber", "prefetch_rate", (LIST, MAP, BOOL, False)),
    ("subscriber", "fetch_min_rate", (LIST, MAP, BOOL, NULL, False)),
    ("client", "sub", NOT_TEXT),
    ("client", "user", (*NOT_TEXT, "")),
    ("client", "token", (*NOT_TEXT, "")),
]


def resolve(conf: dict, section: str) -> None:
    """Read the settings of `section` as the command using it does."""
    role, _, node_id = section.partition(".")
    if role == "broker":
        config.broker_section(conf)
    elif role == "client":
        config.client_sub(conf, None)
        config.client_credentials(conf, None, None)
    else:
        node_settings(conf, role, node_id or None)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [(section, key, value) for section, key, values in WRONG for value in values],
)
def test_a_wrong_value_names_its_section_and_key(
    tmp_path: Path, section: str, key: str, value: object
) -> None:
    import yaml

    conf = load(write(tmp_path, yaml.safe_dump({section: {key: value}})))
    with pytest.raises(ConfigError) as info:
        resolve(conf, section)
    message = str(info.value)
    # A map of wrong values names the wrong one.
    assert "\n" not in message and (repr(value) in message or isinstance(value, dict)), message
    assert f"section {section!r}" in message and key in message, message


@pytest.mark.parametrize(
    ("text", "section", "key", "expected"),
    [
        # YAML 1.1 reads off and no as false: for watch and ws, that is off.
        ("publisher:\n  watch: off\n", "publisher", "watch", "off"),
        ("publisher:\n  watch: no\n", "publisher", "watch", "off"),
        ("publisher:\n  watch: 'OFF'\n", "publisher", "watch", "off"),
        ("publisher:\n  watch: Poll\n", "publisher", "watch", "poll"),
        ("publisher:\n  watch: auto\n", "publisher", "watch", "auto"),
        ("broker:\n  ws: off\n", "broker", "ws", None),
        ("broker:\n  ws: no\n", "broker", "ws", None),
        ("subscriber:\n  auth: on\n", "subscriber", "auth", True),
        ("subscriber:\n  auth: off\n", "subscriber", "auth", False),
        ("subscriber:\n  fetch_min_rate: 0\n", "subscriber", "fetch_min_rate", 0),
        ("subscriber:\n  fetch_min_rate: 10kB\n", "subscriber", "fetch_min_rate", 10_000),
        ("subscriber:\n  statedir: st\n", "subscriber", "statedir", Path("st")),
        ("subscriber:\n  statedir:\n", "subscriber", "statedir", Path("_catmqtt") / "subscriber"),
        ("subscriber:\n  mqtt_user: lab\n  mqtt_password: ''\n", "subscriber", "mqtt_password", ""),
        ("publisher:\n  root: ./r\n  sign_key:\n", "publisher", "root", "./r"),
        ("broker:\n  amqtt_conf: a.yaml\n  statedir: st\n", "broker", "amqtt_conf", "a.yaml"),
        ("broker:\n  url: mqtts://b:8883\n", "broker", "url", "mqtts://b:8883"),
    ],
)
def test_a_right_value_is_read(tmp_path: Path, text: str, section: str, key: str, expected: object) -> None:
    conf = load(write(tmp_path, text))
    s = config.broker_section(conf) if section == "broker" else node_settings(conf, section)
    assert s[key] == expected


def test_a_broker_url_from_the_broker_section_reaches_nodes() -> None:
    conf = {"broker": {"url": "mqtts://b:8883", "listen": "*:1884"}}
    assert node_settings(conf, "subscriber")["broker"] == BrokerAddress("b", 8883, True)
    # Nodes reach a broker listening on every interface at that address.
    assert node_settings({"broker": {"listen": "*:1884"}}, "publisher")["broker"].port == 1884


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        (
            "subscriber:\n  statedir: 5\n",
            ["user", "add", "bob"],
            "statedir must be a file or directory path, not 5",
        ),
        ("broker:\n  amqtt_conf: 5\n", ["broker"], "amqtt_conf must be a file or directory path, not 5"),
        ("subscriber:\n  mqtt_user: 5\n", ["sub"], "mqtt_user must be a non-empty string, not 5"),
        ("subscriber:\n  statedir: off\n", ["sub"], "statedir must be a file or directory path, not False"),
        ("client:\n  token: []\n", ["roots"], "token must be a non-empty string, not []"),
        ("", ["--loglevel", "bogus", "roots"], "invalid log level 'bogus'"),
        ("", ["roots", "--loglevel", "bogus"], "invalid log level 'bogus'"),
    ],
)
def test_the_command_refuses_a_wrong_value_in_one_line(
    tmp_path: Path, text: str, args: list, message: str
) -> None:
    import subprocess

    from catmqtt.testing import catmqtt_cmd

    (tmp_path / DEFAULT_FILE).write_text(text)
    result = subprocess.run(
        catmqtt_cmd(*args), input="pw\n", capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"Error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "_catmqtt").exists()


def test_client_sub_bad_listen_address() -> None:
    with pytest.raises(ConfigError, match="invalid http address 9000: .* \\(section 'subscriber'\\)"):
        client_sub({"subscriber": {"http": 9000}}, None)
