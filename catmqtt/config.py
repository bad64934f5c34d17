"""This module reads ``catmqtt.yaml`` and resolves the settings of each role.

Precedence, highest first: command-line options, the ``<role>.<id>``
section, the ``<role>`` section, values derived from the ``broker`` section,
built-in defaults.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import SplitResult, urlsplit

from .errors import BadRequest, ConfigError
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
        "fetch_min_rate": "1kB",
        "max_fetch_bytes": 2 << 30,
        "max_stream_bytes": 256 << 20,
        "max_temp_bytes": 1 << 30,
        "trust": None,
        "auth": False,
        "access": None,
        "allowed_hosts": None,
        "token_ttl": 28800,
        "login_attempts": 5,
        "login_attempts_per_address": 20,
        "login_window": 900,
        "cache_size": None,
        "min_free": "1GiB",
        "prefetch_rate": None,
        "republish": None,
        "sign_key": None,
    },
    "client": {"sub": "http://127.0.0.1:8002", "user": None, "token": None},
}


class BrokerAddress(NamedTuple):
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
    """Return the broker's validated settings, with ``ws`` None when websockets
    are off (``off``, or false, which YAML 1.1 reads ``off`` and ``no`` as) and
    every address checked under its own key's name."""
    s = section(conf, "broker", **options)
    parse = _parser(conf, "broker", None, options)
    parse(s, "ws", parse_ws)
    for key in ("listen", "ws") if s["ws"] is not None else ("listen",):
        host, port = parse(s, key, lambda v, key=key: parse_hostport(v, f"broker {key}"))
        # amqtt binds what it is given: the wildcard as an address it knows.
        s[key] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if s["url"] is not None:
        # Checked here, kept as written: a node reads it as its broker's URL.
        parse(s, "url", lambda v: parse_broker_url(v) and v)
    parse(s, "prefix", parse_prefix)
    parse(s, "loglevel", parse_loglevel)
    for key in ("amqtt_conf", "statedir"):
        if s[key] is not None:
            parse(s, key, lambda v, key=key: parse_path(v, key))
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
    A value of the wrong kind or out of range is a ConfigError naming the
    section it was read from and its key. A null (an empty YAML value) is
    taken as unset for keys unset by default, and refused for the others.
    """
    s = section(conf, role, node_id, **options)
    parse = _parser(conf, role, node_id, options)
    parse(s, "http", lambda v: parse_hostport(v, "http"))
    if s["broker"] is None or s["prefix"] is None:
        brokers = broker_section(conf)
        if s["broker"] is None:
            s["broker"] = brokers["url"] or f"mqtt://{brokers['listen']}"
        if s["prefix"] is None:
            s["prefix"] = brokers["prefix"]
    parse(s, "broker", parse_broker_url)
    parse(s, "prefix", parse_prefix)
    if s["statedir"] is None:
        s["statedir"] = default_statedir(role, node_id)
    parse(s, "statedir", lambda v: Path(parse_path(v, "statedir")))
    parse(s, "loglevel", parse_loglevel)
    for key in ("mqtt_user", "mqtt_password"):
        if s[key] is not None:
            parse(s, key, lambda v, key=key: parse_text(v, key, empty=key == "mqtt_password"))
    if s["mqtt_password"] is None:
        s["mqtt_password"] = os.environ.get(PASSWORD_ENV)
    if s["cafile"] is not None:
        parse(s, "cafile", lambda v: parse_path(v, "cafile"))
    if s["urlbase"] is not None:
        parse(s, "urlbase", lambda v: parse_http_url(v, "urlbase"))
    parse(s, "http_threads", lambda v: _int_in(v, "http_threads", 1, 1024))
    parse(s, "http_connections", lambda v: _int_in(v, "http_connections", 1, 100_000))
    parse(s, "http_timeout", lambda v: _int_in(v, "http_timeout", 1, 86_400))
    if role == "publisher":
        if s["name"] is not None:
            parse(s, "name", parse_root_name)
        for key in ("root", "sign_key"):
            if s[key] is not None:
                parse(s, key, lambda v, key=key: parse_path(v, key))
        parse(s, "watch", parse_watch)
        parse(s, "settle", lambda v: _number_in(v, "settle", 0, 3600))
    if role == "subscriber":
        parse(s, "fetch_workers", lambda v: _int_in(v, "fetch_workers", 1, 256))
        parse(s, "fetch_timeout", lambda v: _int_in(v, "fetch_timeout", 1, 3600))
        parse(s, "fetch_min_rate", lambda v: parse_rate(v, "fetch_min_rate", 0))
        for key in ("max_fetch_bytes", "max_stream_bytes", "max_temp_bytes"):
            parse(s, key, lambda v, key=key: _int_in(v, key, 1, 1 << 50))
        parse(s, "trust", parse_trust)
        parse(s, "auth", parse_auth)
        parse(s, "token_ttl", lambda v: _int_in(v, "token_ttl", 1, 366 * 86400))
        parse(s, "login_attempts", lambda v: _int_in(v, "login_attempts", 0, 1000))
        parse(s, "login_attempts_per_address", lambda v: _int_in(v, "login_attempts_per_address", 0, 100_000))
        parse(s, "login_window", lambda v: _int_in(v, "login_window", 1, 86_400))
        parse(s, "access", parse_access)
        parse(s, "allowed_hosts", parse_allowed_hosts)
        if s["cache_size"] is not None:
            parse(s, "cache_size", parse_cache_size)
        parse(s, "min_free", lambda v: parse_size(v, "min_free"))
        if s["prefetch_rate"] is not None:
            parse(s, "prefetch_rate", lambda v: parse_rate(v, "prefetch_rate", 1))
        parse(s, "republish", parse_republish)
        _check_republish(s)
        if s["sign_key"] is not None:
            parse(s, "sign_key", lambda v: parse_path(v, "sign_key"))
    return s


def _parser(conf: dict, role: str, node_id: str | None, options: dict[str, Any]):
    """Return parse(settings, key, function), which replaces a setting by what
    `function` makes of it, and turns its ValueError into a ConfigError that
    names the section the value came from (none for an option or a default)."""
    names = ([f"{role}.{node_id}"] if node_id else []) + [role]

    def parse(settings: dict[str, Any], key: str, function) -> Any:
        try:
            settings[key] = function(settings[key])
        except ValueError as exc:
            where = (
                None
                if options.get(key) is not None
                else next((name for name in names if key in (conf.get(name) or {})), None)
            )
            raise ConfigError(_in_section(where, key, str(exc))) from None
        return settings[key]

    return parse


def _in_section(section: str | None, key: str, message: str) -> str:
    """Return `message` about `key`, followed by the section it was read from."""
    if section is None:
        return message
    # Most messages name their key ("fetch_workers must be..."); the others get it here.
    named = "" if key in message else f", key {key!r}"
    return f"{message} (section {section!r}{named})"


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
    # Imported here: client commands read the configuration too, and need no schema.
    from . import schema

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
            trusted[root] = [schema.parse_public_key(k) for k in keys]
        except BadRequest as exc:
            raise ConfigError(f"trust: {exc}") from None
    return trusted


class Republish(NamedTuple):
    """A root a subscriber republishes: as `alias`, on `broker` (None: its own), as `user`
    with `password` there (another broker's own, never the subscriber's: None, anonymous)."""

    root: str
    alias: str
    broker: BrokerAddress | None
    user: str | None = None
    password: str | None = None


_REPUBLISH = re.compile(r"([^=@]*)(?:=([^@]*))?(?:@(.*))?")


def parse_republish(value: object) -> list[Republish]:
    """Return ``subscriber.republish`` (``--republish``): a list of ``ROOT[=ALIAS][@BROKER_URL]``
    strings or of ``{root, as, broker}`` mappings; [] if unset."""
    if value is None:
        return []
    if not isinstance(value, list):
        value = [value]
    entries = []
    for item in value:
        if isinstance(item, str):
            match = _REPUBLISH.fullmatch(item)
            root, alias, broker = match.groups()
            credentials = (None, None)
            if not root:
                raise ConfigError(
                    f"republish {item!r}: expected ROOT[=ALIAS][@BROKER_URL], like foo=foo-a@mqtt://hub:1883"
                )
        elif isinstance(item, dict):
            unknown = set(item) - {"root", "as", "broker", "mqtt_user", "mqtt_password"}
            if unknown or "root" not in item or (("mqtt_user" in item) and item.get("broker") is None):
                raise ConfigError(
                    f"republish {str(item)[:200]}: expected a mapping of 'root' and optionally 'as',"
                    " 'broker', and with a broker 'mqtt_user' and 'mqtt_password'"
                )
            root, alias, broker = item["root"], item.get("as"), item.get("broker")
            credentials = (item.get("mqtt_user"), item.get("mqtt_password"))
        else:
            raise ConfigError(
                f"republish must list ROOT[=ALIAS][@BROKER_URL] or {{root, as, broker}}, not {item!r}"
            )
        root = _check(parse_root_name, root)
        alias = root if alias is None else _check(parse_root_name, alias)
        if isinstance(broker, str) and "@" in broker:
            raise ConfigError(
                f"republish {root!r}: give the broker's user and password as mqtt_user and mqtt_password"
                " of a republish mapping in the configuration file, not in its URL"
            )
        user, password = (
            c if c is None else parse_text(c, f"republish {root!r}: {k}", empty=k == "mqtt_password")
            for c, k in zip(credentials, ("mqtt_user", "mqtt_password"), strict=True)
        )
        address = None if broker is None else parse_broker_url(broker)
        entries.append(Republish(root, alias, address, user, password))
    return entries


def _check_republish(s: dict[str, Any]) -> None:
    """Refuse republishing that would announce over a root on the same broker, twice under
    one name, or a root whose access list the relay's open endpoints would not apply."""
    seen: dict[tuple[BrokerAddress, str], str] = {}
    followed = {entry.root for entry in s["republish"]}
    for entry in s["republish"]:
        broker = entry.broker or s["broker"]
        where = "its own broker" if broker == s["broker"] else broker.url
        if broker == s["broker"] and entry.alias in followed:
            raise ConfigError(
                f"republish: root {entry.alias!r}, which this subscriber follows, would be announced over"
                f" on {where}: give {entry.root!r} another name (ROOT=ALIAS) or another broker"
                " (ROOT@mqtt://HOST:PORT)"
            )
        if (broker, entry.alias) in seen:
            raise ConfigError(f"republish: two roots would be announced as {entry.alias!r} on {where}")
        seen[(broker, entry.alias)] = entry.root
        if entry.root in (s["access"] or {}):
            raise ConfigError(
                f"republish: root {entry.root!r} has an access list (subscriber.access), which a"
                " relay's endpoints, open to any subscriber as a publisher's are, would not apply"
            )


def client_sub(conf: dict, option: str | None) -> str:
    """Return the subscriber URL a client talks to: `option` (``--sub``), else
    ``$CATMQTT_SUB``, else ``client.sub``, else the ``urlbase`` the ``subscriber``
    section advertises (as Caterva2's clients read it), else where its ``http``
    listens (on this host), else the default."""
    if option or os.environ.get(SUB_ENV):
        return parse_http_url(option or os.environ.get(SUB_ENV), "subscriber URL")
    for name, key in (("client", "sub"), ("subscriber", "urlbase")):
        value = (conf.get(name) or {}).get(key)
        if value is not None:
            try:
                return parse_http_url(value, "subscriber URL")
            except ConfigError as exc:
                raise ConfigError(_in_section(name, key, str(exc))) from None
    listen = (conf.get("subscriber") or {}).get("http")
    if listen is not None:
        try:
            host, port = parse_hostport(listen, "http")
        except ConfigError as exc:
            raise ConfigError(_in_section("subscriber", "http", str(exc))) from None
        # Every interface includes this host's loopback.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        if port:
            return f"http://{f'[{host}]' if ':' in host else host}:{port}"
    return DEFAULTS["client"]["sub"]


def client_credentials(conf: dict, user: str | None, token: str | None) -> tuple[str | None, str | None]:
    """Return the user and the token a client logs in with, one of them None.

    The first found wins: ``--token``, ``--user``, ``$CATMQTT_TOKEN``,
    ``$CATMQTT_USER``, ``client.token``, ``client.user``.
    """
    client = conf.get("client") or {}
    for key in ("token", "user"):
        if client.get(key) is not None:
            try:
                parse_text(client[key], key)
            except ConfigError as exc:
                raise ConfigError(_in_section("client", key, str(exc))) from None
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


def _int_in(value: object, key: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{key} must be an integer from {low} to {high}, not {value!r}")
    return value


def _number_in(value: object, key: str, low: float, high: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{key} must be a number from {low} to {high}, not {value!r}")
    return value


def parse_path(value: object, key: str) -> str | os.PathLike:
    """Return the file or directory `value` of setting `key`: a non-empty string
    (or a path, as code passes); ``statedir: off`` and ``statedir: []`` are mistakes."""
    if isinstance(value, os.PathLike) or (isinstance(value, str) and value):
        return value
    raise ConfigError(f"{key} must be a file or directory path, not {value!r}")


def parse_text(value: object, key: str, *, empty: bool = False) -> str:
    """Return the string `value` of setting `key`; an empty one only if `empty`."""
    if isinstance(value, str) and (value or empty):
        return value
    raise ConfigError(f"{key} must be a{'' if empty else ' non-empty'} string, not {value!r}")


def parse_watch(value: object) -> str:
    """Return ``publisher.watch`` (``--watch``): auto, poll or off, in any case.

    YAML 1.1 reads ``off`` (and ``no``, ``false``) as false, which is ``off``."""
    if value is False:
        return "off"
    if isinstance(value, str) and value.lower() in WATCH_MODES:
        return value.lower()
    raise ConfigError(f"invalid watch mode {value!r}: one of {', '.join(WATCH_MODES)}")


def parse_ws(value: object) -> str | None:
    """Return ``broker.ws`` (``--ws``), None for ``off`` in any case or false
    (YAML 1.1 reads ``off`` and ``no`` as false); the address is checked apart."""
    if value is False or (isinstance(value, str) and value.lower() == "off"):
        return None
    if isinstance(value, str):
        return value
    raise ConfigError(f"invalid broker ws address {value!r}: expected HOST:PORT, like 127.0.0.1:9001, or off")


def parse_auth(value: object) -> bool:
    """Return ``subscriber.auth``: true or false (YAML reads on, off, yes and no as those)."""
    if isinstance(value, bool):
        return value
    raise ConfigError(f"auth must be true or false, not {value!r}")


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


def parse_rate(value: object, key: str, least: int) -> int:
    """Return a rate in bytes per second (``subscriber.prefetch_rate``,
    ``fetch_min_rate``): a size (`parse_size`), `least` (0 or 1) at least."""
    rate = parse_size(value, key)
    if rate < least:
        raise ValueError(f"{key} must be one byte per second at least, not {value!r}")
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
