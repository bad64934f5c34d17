"""This module reads ``catmqtt.yaml`` and resolves the settings of each role.

Precedence, highest first: command-line options, the ``<role>.<id>``
section, the ``<role>`` section, values derived from the ``broker`` section,
built-in defaults.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

from .errors import BadRequest, ConfigError
from .schema import parse_public_key
from .topics import DEFAULT_PREFIX, parse_node_id, parse_prefix, parse_root_name

if TYPE_CHECKING:
    import yaml

DEFAULT_FILE = "catmqtt.yaml"
PASSWORD_ENV = "CATMQTT_MQTT_PASSWORD"
SUB_ENV = "CATMQTT_SUB"
USER_ENV = "CATMQTT_USER"
USER_PASSWORD_ENV = "CATMQTT_PASSWORD"
TOKEN_ENV = "CATMQTT_TOKEN"
LOGLEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
WATCH_MODES = ("auto", "poll", "off")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_NODE_KEYS = {
    "http": None,
    "urlbase": None,
    "statedir": None,
    "broker": None,
    "prefix": None,
    "mqtt_user": None,
    "mqtt_password": None,
    "cafile": None,
    "loglevel": "INFO",
    "http_threads": 16,
    "http_connections": 1000,
    "http_timeout": 30,
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "broker": {
        "listen": "127.0.0.1:1883",
        "ws": "127.0.0.1:9001",
        "url": None,
        "prefix": DEFAULT_PREFIX,
        "amqtt_conf": None,
        "loglevel": "INFO",
        "statedir": None,
    },
    "publisher": {
        **_NODE_KEYS,
        "http": "127.0.0.1:8001",
        "name": None,
        "root": None,
        "watch": "auto",
        "settle": 1.0,
        "sign_key": None,
    },
    "subscriber": {
        **_NODE_KEYS,
        "http": "127.0.0.1:8002",
        "fetch_workers": 8,
        "fetch_timeout": 30,
        "max_fetch_bytes": 2 << 30,
        "max_stream_bytes": 256 << 20,
        "max_temp_bytes": 1 << 30,
        "trust": None,
        "auth": False,
        "access": None,
        "allowed_hosts": None,
        "token_ttl": 28800,
        "cache_size": None,
        "min_free": "1GiB",
        "prefetch_rate": None,
    },
    "client": {"sub": "http://127.0.0.1:8002", "user": None, "token": None},
}


@dataclass(frozen=True)
class BrokerAddress:
    """Where nodes reach the MQTT broker."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def load(path: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    """Read the configuration file `path`, or ``./catmqtt.yaml`` if present.

    Unknown sections and keys are refused, so that a typo is not silently
    ignored.
    """
    if path is None:
        if not os.path.exists(DEFAULT_FILE):
            return {}
        path = DEFAULT_FILE
    # Imported here: a command run without a configuration file starts sooner.
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            conf = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {os.fspath(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {os.fspath(path)!r} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} is not valid YAML: {yaml_problem(exc)}") from None
    conf = {} if conf is None else conf
    if not isinstance(conf, dict):
        raise ConfigError(f"config file {os.fspath(path)!r} must hold a mapping of sections")
    for name, section in conf.items():
        role, dot, node_id = str(name).partition(".")
        if role not in DEFAULTS or (dot and role not in ("publisher", "subscriber")) or (dot and not node_id):
            raise ConfigError(
                f"config file {os.fspath(path)!r}: unknown section {name!r}"
                " (sections: broker, publisher[.<id>], subscriber[.<id>], client)"
            )
        if node_id:
            _check(parse_node_id, node_id)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"config file {os.fspath(path)!r}: section {name!r} is not a mapping")
        unknown = set(section) - set(DEFAULTS[role])
        if unknown:
            raise ConfigError(
                f"config file {os.fspath(path)!r}: unknown key(s) {', '.join(sorted(map(str, unknown)))}"
                f" in section {name!r} (known: {', '.join(DEFAULTS[role])})"
            )
    return conf


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Return a one-line account of a YAML syntax error."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(getattr(exc, "problem", None) or exc).split())


def broker_section(conf: dict, **options: Any) -> dict[str, Any]:
    """Return the broker's settings, with ``ws`` None when websockets are off
    (``off``, or ``false``/``no``, which YAML reads ``off`` as) and every
    address checked under its own key's name."""
    s = section(conf, "broker", **options)
    if s["ws"] is False or (isinstance(s["ws"], str) and s["ws"].lower() == "off"):
        s["ws"] = None
    for key in ("listen", "ws"):
        if s[key] is not None:
            host, port = parse_hostport(s[key], f"broker {key}")
            # amqtt binds what it is given: the wildcard as an address it knows.
            s[key] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return s


def section(conf: dict, role: str, node_id: str | None = None, **options: Any) -> dict[str, Any]:
    """Return the settings of `role`, merged by precedence; None options are unset."""
    merged = dict(DEFAULTS[role])
    merged.update(conf.get(role) or {})
    if node_id:
        merged.update(conf.get(f"{role}.{node_id}") or {})
    merged.update({k: v for k, v in options.items() if v is not None})
    return merged


def node_settings(conf: dict, role: str, node_id: str | None = None, **options: Any) -> dict[str, Any]:
    """Return the validated settings of a publisher or subscriber.

    The broker address comes from the node's own ``broker`` key, else the
    ``broker`` section's ``url``, else where the embedded broker listens.
    """
    s = section(conf, role, node_id, **options)
    brokers = section(conf, "broker")
    s["http"] = parse_hostport(s["http"], "http")
    s["broker"] = parse_broker_url(s["broker"] or brokers["url"] or f"mqtt://{brokers['listen']}")
    s["prefix"] = _check(parse_prefix, s["prefix"] or brokers["prefix"])
    s["statedir"] = Path(s["statedir"] or default_statedir(role, node_id))
    s["loglevel"] = parse_loglevel(s["loglevel"])
    if s["mqtt_password"] is None:
        s["mqtt_password"] = os.environ.get(PASSWORD_ENV)
    if s["urlbase"] is not None:
        s["urlbase"] = parse_http_url(s["urlbase"], "urlbase")
    _int_in(s, "http_threads", 1, 1024)
    _int_in(s, "http_connections", 1, 100_000)
    _int_in(s, "http_timeout", 1, 86_400)
    if role == "publisher":
        if s["name"] is not None:
            s["name"] = _check(parse_root_name, s["name"])
        if s["watch"] not in WATCH_MODES:
            raise ConfigError(f"invalid watch mode {s['watch']!r}: one of {', '.join(WATCH_MODES)}")
        _number_in(s, "settle", 0, 3600)
    if role == "subscriber":
        _int_in(s, "fetch_workers", 1, 256)
        _int_in(s, "fetch_timeout", 1, 3600)
        _int_in(s, "max_fetch_bytes", 1, 1 << 50)
        _int_in(s, "max_stream_bytes", 1, 1 << 50)
        _int_in(s, "max_temp_bytes", 1, 1 << 50)
        s["trust"] = parse_trust(s["trust"])
        if not isinstance(s["auth"], bool):
            raise ConfigError(f"auth must be true or false, not {s['auth']!r}")
        _int_in(s, "token_ttl", 1, 366 * 86400)
        s["access"] = parse_access(s["access"])
        s["allowed_hosts"] = parse_allowed_hosts(s["allowed_hosts"])
        if s["cache_size"] is not None:
            s["cache_size"] = _check(parse_cache_size, s["cache_size"])
        s["min_free"] = _check(lambda v: parse_size(v, "min_free"), s["min_free"])
        if s["prefetch_rate"] is not None:
            s["prefetch_rate"] = _check(parse_rate, s["prefetch_rate"])
    return s


# Units of sizes: decimal (SI) and binary (IEC), any case but the IEC "i".
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15}
SIZE_UNITS.update({f"{u[0]}IB": 1 << (10 * n) for n, u in enumerate(("KB", "MB", "GB", "TB", "PB"), 1)})
# Larger sizes are mistakes, and would not fit the integers of a status summary.
MAX_SIZE = 1 << 60
# Smaller budgets are mistakes (500 for 500MB), and hold no useful chunk.
MIN_CACHE_SIZE = 1 << 20


def parse_size(value: object, key: str) -> int:
    """Return a size in bytes: an integer, or a string like ``500MB``, ``1.5GB``
    or ``20GiB`` (kB, MB, GB, TB, PB are powers of 1000; KiB, MiB, GiB, TiB,
    PiB powers of 1024; units in any case); at most `MAX_SIZE`."""
    wrong = ValueError(
        f"{key} must be a size in bytes, like 500MB, 20GiB or 1000000, not {value!r}"
        " (units: B, kB, MB, GB, TB, PB; KiB, MiB, GiB, TiB, PiB)"
    )
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = value, ""
    else:
        # ASCII digits only (\d takes any script's), and not so many that they are a mistake.
        match = isinstance(value, str) and re.fullmatch(
            r"\s*([0-9]{1,30}(?:\.[0-9]{0,30})?)\s*([A-Za-z]*)\s*", value
        )
        if not match or match[2].upper() not in SIZE_UNITS:
            raise wrong
        number, unit = float(match[1]) if "." in match[1] else int(match[1]), match[2].upper()
    if number < 0:
        raise wrong
    if number > MAX_SIZE:
        raise ValueError(f"{key} {value!r} is more than the largest size taken, 1024PiB")
    size = int(number * SIZE_UNITS[unit])
    if size > MAX_SIZE:
        raise ValueError(f"{key} {value!r} is more than the largest size taken, 1024PiB")
    return size


def parse_cache_size(value: object) -> int:
    """Return ``subscriber.cache_size`` (``--cache-size``) in bytes: at least 1 MiB."""
    size = parse_size(value, "cache_size")
    if size < MIN_CACHE_SIZE:
        raise ValueError(
            f"cache_size {value!r} is {size} bytes, less than the least budget of 1MiB"
            " (did you mean MB or GB?)"
        )
    return size


def parse_access(value: object) -> dict[str, list[str]]:
    """Return ``subscriber.access`` as {root: [user or agent token name, ...]}; {} if unset."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"access must map root names to lists of users, not {value!r}")
    access = {}
    for root, names in value.items():
        _check(parse_root_name, root)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"access: root {root!r} must map to a list of user names, not {names!r}")
        access[root] = names
    return access


def parse_allowed_hosts(value: object) -> list[str]:
    """Return ``subscriber.allowed_hosts``: the host names, besides its own, a subscriber answers for."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(h, str) and h and " " not in h for h in value):
        raise ConfigError(f"allowed_hosts must be a list of host names, not {value!r}")
    return value


def parse_trust(value: object) -> dict[str, list[str]] | None:
    """Return ``subscriber.trust`` as {root or "*": [key, ...]}; None if unset.

    A list of keys (or one key) is trusted for every root: ``{"*": keys}``.
    """
    if value is None or value == []:
        return None
    if isinstance(value, str | list):
        value = {"*": value}
    if not isinstance(value, dict):
        raise ConfigError(f"trust must be a list of keys or a map of roots to keys, not {value!r}")
    trusted = {}
    for root, keys in value.items():
        keys = [keys] if isinstance(keys, str) else keys
        if root != "*":
            _check(parse_root_name, root)
        if not isinstance(keys, list) or not keys:
            raise ConfigError(f"trust: root {root!r} must map to a list of keys, not {keys!r}")
        try:
            trusted[root] = [parse_public_key(k) for k in keys]
        except BadRequest as exc:
            raise ConfigError(f"trust: {exc}") from None
    return trusted


def client_sub(conf: dict, option: str | None) -> str:
    """Return the subscriber URL a client talks to: `option` (``--sub``), else
    ``$CATMQTT_SUB``, else ``client.sub``, else the ``urlbase`` the ``subscriber``
    section advertises (as Caterva2's clients read it), else the default."""
    url = (
        option
        or os.environ.get(SUB_ENV)
        or (conf.get("client") or {}).get("sub")
        or (conf.get("subscriber") or {}).get("urlbase")
        or DEFAULTS["client"]["sub"]
    )
    return parse_http_url(url, "subscriber URL")


def client_credentials(conf: dict, user: str | None, token: str | None) -> tuple[str | None, str | None]:
    """Return the user and the token a client logs in with, one of them None.

    The first found wins: ``--token``, ``--user``, ``$CATMQTT_TOKEN``,
    ``$CATMQTT_USER``, ``client.token``, ``client.user``.
    """
    client = conf.get("client") or {}
    for kind, value in (
        ("token", token),
        ("user", user),
        ("token", os.environ.get(TOKEN_ENV)),
        ("user", os.environ.get(USER_ENV)),
        ("token", client.get("token")),
        ("user", client.get("user")),
    ):
        if value:
            return (None, value) if kind == "token" else (value, None)
    return None, None


def default_statedir(role: str, node_id: str | None) -> Path:
    """Return ``./_catmqtt/<role>[.<id>]``."""
    return Path("_catmqtt") / (f"{role}.{node_id}" if node_id else role)


def _int_in(settings: dict[str, Any], key: str, low: int, high: int) -> None:
    value = settings[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{key} must be an integer from {low} to {high}, not {value!r}")


def _number_in(settings: dict[str, Any], key: str, low: float, high: float) -> None:
    value = settings[key]
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{key} must be a number from {low} to {high}, not {value!r}")


def _check(parse, value):
    try:
        return parse(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def parse_hostport(value: object, what: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::1]:PORT`` for IPv6, ``*:PORT`` for every IPv4
    interface, as 0.0.0.0); port 0 picks a free one."""
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if sep and host and port.isascii() and port.isdigit() and int(port) <= 65535:
            return ("0.0.0.0" if host == "*" else host), int(port)
    raise ConfigError(f"invalid {what} address {value!r}: expected HOST:PORT, like 127.0.0.1:8001")


def parse_broker_url(value: object) -> BrokerAddress:
    """Parse ``mqtt://host[:port]`` or ``mqtts://host[:port]``."""
    if isinstance(value, str):
        parts = urlsplit(value if "://" in value else f"mqtt://{value}")
        port = _port(parts)
        # Port 0 means "any free port" to a listener, and nothing to a client.
        valid = parts.hostname and port not in (-1, 0) and not parts.path.strip("/")
        if parts.scheme in ("mqtt", "mqtts") and valid:
            tls = parts.scheme == "mqtts"
            return BrokerAddress(parts.hostname, (8883 if tls else 1883) if port is None else port, tls)
    raise ConfigError(f"invalid broker URL {value!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")


def _port(parts: SplitResult) -> int | None:
    """Return the port of a split URL, None if absent, -1 if invalid."""
    try:
        return parts.port
    except ValueError:
        return -1


def parse_http_url(value: object, what: str) -> str:
    """Parse an ``http(s)://host[:port][/path]`` URL; return it without trailing slash.

    Printable ASCII only, as subscribers take URLs in statuses and announcements."""
    if isinstance(value, str) and re.fullmatch(r"[!-~]+", value):
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.hostname and _port(parts) != -1:
            return value.rstrip("/")
    raise ConfigError(f"invalid {what} {value!r}: expected http://HOST:PORT")


def parse_loglevel(value: object) -> str:
    """Return the logging level name `value`, upper-cased."""
    if isinstance(value, str) and value.upper() in LOGLEVELS:
        return value.upper()
    raise ConfigError(f"invalid log level {value!r}: one of {', '.join(LOGLEVELS)}")


def parse_rate(value: object) -> int:
    """Return ``subscriber.prefetch_rate`` in bytes per second: a size (`parse_size`), one at least."""
    rate = parse_size(value, "prefetch_rate")
    if rate < 1:
        raise ValueError(f"prefetch_rate must be one byte per second at least, not {value!r}")
    return rate


def format_size(size: int, *, exact: bool = False) -> str:
    """Return a number of bytes as people read it: ``512 B``, ``1.5 KiB``, ``12.0 MiB``;
    with `exact`, the exact count too: ``512 bytes``, ``1.5 MiB (1572864 bytes)``."""
    # int(): a count another node sent must be a whole number.
    amount, unit = float(int(size)), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            break
        amount /= 1024
    if unit == "B":
        return f"{size} bytes" if exact else f"{size} B"
    return f"{amount:.1f} {unit} ({size} bytes)" if exact else f"{amount:.1f} {unit}"
