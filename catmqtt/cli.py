"""This module is the ``catmqtt`` command: its parser, services (broker, pub, sub,
up), tools (sample, import, export) and `main`; the client commands (roots,
subscribe, list, info, show, download) are in :mod:`.cli_client`."""

from __future__ import annotations

import argparse
import getpass
import hashlib
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

from . import __version__, cli_edge, config
from .cli_accounts import add_commands, client_password
from .cli_client import (
    cmd_bundle,
    cmd_download,
    cmd_info,
    cmd_list,
    cmd_roots,
    cmd_show,
    cmd_subscribe,
    cmd_unsubscribe,
)
from .cli_watch import add_commands as add_watch_commands
from .errors import CatmqttError, ConfigError, Unauthorized

log = logging.getLogger("catmqtt")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit status 1."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"Error: {message} (see '{self.prog} --help')\n")


# Commands


def cmd_broker(args: argparse.Namespace, conf: dict) -> int:
    from . import broker

    s = config.broker_section(
        conf,
        listen=args.listen,
        ws=args.ws,
        amqtt_conf=args.amqtt_conf,
        loglevel=args.loglevel,
        statedir=args.statedir,
    )
    _logging(config.parse_loglevel(s["loglevel"]))
    if s["amqtt_conf"]:
        # An amqtt configuration file has its listeners; only options override them.
        listen = s["listen"] if args.listen else None
        ws = None if args.ws is None else s["ws"] or "off"
    else:
        listen, ws = s["listen"], s["ws"] or "off"
    statedir = Path(s["statedir"]) if s["statedir"] else None
    broker.run(broker.load_config(s["amqtt_conf"], listen, ws), statedir)
    return 0


def _node_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "http": args.http,
        "broker": args.broker,
        "statedir": args.statedir,
        "loglevel": args.loglevel,
        "prefix": args.prefix,
        "mqtt_user": args.mqtt_user,
        "mqtt_password": args.mqtt_password,
        "cafile": args.cafile,
        "urlbase": args.urlbase,
    }


def cmd_pub(args: argparse.Namespace, conf: dict) -> int:
    from .publisher import Publisher
    from .web import tune_allocator, tune_switching

    s = config.node_settings(
        conf,
        "publisher",
        args.id,
        name=args.name,
        root=args.root,
        watch=args.watch,
        sign_key=args.sign_key,
        **_node_options(args),
    )
    if not s["name"] or not s["root"]:
        raise ConfigError(
            "give the root's NAME and ROOT directory, or --id of a config section with 'name' and 'root'"
        )
    _logging(s["loglevel"])
    tune_allocator()
    tune_switching()
    publisher = Publisher(s["name"], s["root"], s, args.id).start()
    print(f"Publishing root {s['name']!r} from {s['root']} at {publisher.url}", flush=True)
    _wait_for_signal()
    publisher.stop()
    return 0


def cmd_sub(args: argparse.Namespace, conf: dict) -> int:
    from .subscriber import Subscriber
    from .web import tune_allocator, tune_switching

    s = config.node_settings(
        conf,
        "subscriber",
        args.id,
        trust=args.trust,
        cache_size=args.cache_size,
        republish=args.republish,
        sign_key=args.sign_key,
        **_node_options(args),
    )
    _logging(s["loglevel"])
    tune_allocator()
    tune_switching()
    subscriber = Subscriber(s, args.id or _default_id(s["statedir"])).start()
    print(f"Subscriber at {subscriber.url} (broker {s['broker'].url})", flush=True)
    _wait_for_signal()
    subscriber.stop()
    return 0


def cmd_up(args: argparse.Namespace, conf: dict) -> int:
    from . import signing
    from .broker import BrokerProcess
    from .publisher import Publisher
    from .subscriber import Subscriber
    from .tools.sample import write_sample
    from .web import tune_allocator, tune_switching

    base = Path(args.statedir)
    b = config.broker_section(conf, listen=args.listen, ws=args.ws, loglevel=args.loglevel)
    listen, ws = b["listen"], b["ws"]
    host, port = config.parse_hostport(listen, "broker listen")
    # The nodes reach a broker listening on every interface through loopback.
    reach = f"127.0.0.1:{port}" if host in ("0.0.0.0", "::") else listen
    # A first look wants the addresses, not the chatter: WARNING unless asked.
    common = {"broker": f"mqtt://{reach}", "loglevel": args.loglevel or "WARNING", "prefix": b["prefix"]}
    pub_s = config.node_settings(conf, "publisher", http=args.pub_http, statedir=base / "publisher", **common)
    sub_s = config.node_settings(
        conf,
        "subscriber",
        http=args.sub_http,
        statedir=base / "subscriber",
        cache_size=args.cache_size,
        **common,
    )
    # Signed by a key made once, and trusted for this root alone: other roots
    # (publishers started beside) are trusted on first use.
    if pub_s["sign_key"] is None:
        pub_s["sign_key"] = base / "sign.key"
    key = signing.load_or_generate(Path(pub_s["sign_key"])).public
    sub_s["trust"] = {args.name: [key], **(sub_s["trust"] or {})}
    _logging(pub_s["loglevel"])
    tune_allocator()
    tune_switching()
    root = args.root
    if root is None:
        root = base / "sample"
        if not root.exists():
            write_sample(root)
    # The HTTP servers bind first, so that a busy port fails before anything runs.
    publisher = Publisher(args.name, root, pub_s).bind()
    subscriber = Subscriber(sub_s, _default_id(sub_s["statedir"])).bind()
    broker = BrokerProcess(listen, ws, b["amqtt_conf"], pub_s["loglevel"], base / "broker")
    try:
        broker.wait_ready()
        publisher.start()
        subscriber.start()
        print(
            f"Broker      mqtt://{listen}" + (f" (websockets ws://{ws})" if ws else "") + "\n"
            f"Publisher   {publisher.url} (root {args.name!r} from {root})\n"
            f"Subscriber  {subscriber.url}\n"
            "Press Ctrl+C to stop.",
            flush=True,
        )
        _wait_for_signal()
        subscriber.stop()
        publisher.stop()
    finally:
        broker.stop()
    print("Stopped.")
    return 0


def cmd_keygen(args: argparse.Namespace, conf: dict) -> int:
    from . import signing

    print(signing.generate(args.file).public)
    return 0


def cmd_sample(args: argparse.Namespace, conf: dict) -> int:
    if args.dir is None and args.h5 is None:
        raise ConfigError(
            "give the DIR to write the sample root into, --h5 FILE for the sample HDF5 file, or both"
        )
    if args.dir is not None:
        from .tools.sample import write_sample

        print(f"Sample root written to {write_sample(args.dir)}")
    if args.h5 is not None:
        from .tools.hdf5io import write_sample_h5

        print(f"Sample HDF5 file written to {write_sample_h5(args.h5)}")
    return 0


def cmd_convert(args: argparse.Namespace, conf: dict) -> int:
    """Run ``catmqtt import`` (HDF5 file to root directory) or ``export`` (back)."""
    from .tools import hdf5io

    # Skipped items are printed below rather than logged.
    _logging(config.parse_loglevel(args.loglevel or "ERROR"))
    if args.command == "import":
        count, skipped = hdf5io.import_h5(args.file, args.dir)
        print(f"Imported {count} datasets from {args.file} into {args.dir}")
    else:
        count, skipped = hdf5io.export_h5(args.dir, args.file)
        print(f"Exported {count} datasets from {args.dir} to {args.file}")
    for item in skipped:
        print(f"Skipped {item['path']}: {item['reason']}")
    return 0


def cmd_passwd(args: argparse.Namespace, conf: dict) -> int:
    from .broker import set_password

    if sys.stdin.isatty():
        password = getpass.getpass(f"Password for {args.user}: ")
        if getpass.getpass("Again: ") != password:
            raise ConfigError("the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    set_password(args.file, args.user, password)
    print(f"Password of {args.user} set in {args.file}")
    return 0


def _default_id(statedir: Path) -> str:
    """A node id that is stable for a state directory and unique on this host."""
    digest = hashlib.blake2b(str(statedir.resolve()).encode(), digest_size=3).hexdigest()
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())[:80]
    return f"{host or 'host'}-{digest}"


def _logging(level: str) -> None:
    logging.basicConfig(level=level, format=config.LOG_FORMAT)
    if level != "DEBUG":
        # amqtt and transitions narrate every connection at INFO.
        for name in ("amqtt", "transitions", "werkzeug", "numexpr"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _wait_for_signal() -> None:
    """Block until SIGINT (Ctrl+C) or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1):
        pass
    log.info("stopping")


# Argument parsing


def _service_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id", help="node id; also selects the config section <role>.<id>")
    p.add_argument("--http", metavar="HOST:PORT", help="where the HTTP API listens")
    p.add_argument("--urlbase", metavar="URL", help="the URL to advertise, if not http://HOST:PORT")
    p.add_argument("--broker", metavar="URL", help="the MQTT broker, mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--prefix", help="the MQTT topic prefix (default catmqtt/v1)")
    p.add_argument("--mqtt-user", help="MQTT user name")
    p.add_argument("--mqtt-password", help=f"MQTT password (better: set ${config.PASSWORD_ENV})")
    p.add_argument("--cafile", help="CA certificate file for mqtts://")
    p.add_argument("--statedir", metavar="DIR", help="state directory (default ./_catmqtt/<role>[.<id>])")


def _cache_size_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-size",
        metavar="SIZE",
        help="the most bytes of chunks the subscriber keeps (500MB, 20GiB...; default no limit)",
    )


def _either_side(p: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """Add an option that may be given before the command name or after it.

    With SUPPRESS as its default, a subcommand's parser leaves out what was not
    given rather than overwriting what was given before the subcommand name
    (main sets what is missing).
    """
    p.add_argument(flag, default=argparse.SUPPRESS, **kwargs)


def _client_options(p: argparse.ArgumentParser) -> None:
    _either_side(
        p,
        "--sub",
        metavar="URL",
        help=f"the subscriber (default ${config.SUB_ENV}, else http://127.0.0.1:8002)",
    )
    _either_side(p, "--json", action="store_true", help="print JSON")
    _either_side(
        p,
        "--user",
        metavar="NAME",
        help=f"log in as NAME (default ${config.USER_ENV}); password: ${config.USER_PASSWORD_ENV}, or asked",
    )
    _either_side(p, "--token", help=f"send this token (default ${config.TOKEN_ENV})")


def _common_options(p: argparse.ArgumentParser) -> None:
    _either_side(
        p, "--conf", metavar="FILE", help=f"config file (default ./{config.DEFAULT_FILE} if present)"
    )
    _either_side(p, "--loglevel", help="DEBUG, INFO (default), WARNING or ERROR")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="catmqtt", description="Share Blosc2 datasets over MQTT.")
    parser.add_argument("--version", action="version", version=f"catmqtt {__version__}")
    _client_options(parser)
    common = _Parser(add_help=False)
    _common_options(common)
    # Before the command name too (catmqtt --conf FILE roots).
    _common_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, func, help: str, service: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=func, service=service)
        return p

    p = add("up", cmd_up, "run a broker, a publisher and a subscriber together", True)
    p.add_argument(
        "root", nargs="?", help="the root directory or HDF5 file to publish (default: the sample root)"
    )
    p.add_argument("--name", default="foo", help="the root's name (default foo)")
    p.add_argument("--listen", metavar="HOST:PORT", help="where the broker listens (default 127.0.0.1:1883)")
    p.add_argument("--ws", metavar="HOST:PORT", help="MQTT over websockets (default 127.0.0.1:9001; 'off')")
    p.add_argument(
        "--pub-http", metavar="HOST:PORT", help="the publisher's HTTP address (default 127.0.0.1:8001)"
    )
    p.add_argument(
        "--sub-http", metavar="HOST:PORT", help="the subscriber's HTTP address (default 127.0.0.1:8002)"
    )
    p.add_argument(
        "--statedir", default="_catmqtt", metavar="DIR", help="state directory (default ./_catmqtt)"
    )
    _cache_size_option(p)

    p = add("broker", cmd_broker, "run the embedded MQTT broker (amqtt)", True)
    p.add_argument("--listen", metavar="HOST:PORT", help="MQTT listener (default 127.0.0.1:1883)")
    p.add_argument("--ws", metavar="HOST:PORT", help="MQTT over websockets (default 127.0.0.1:9001; 'off')")
    p.add_argument("--amqtt-conf", metavar="FILE", help="an amqtt YAML configuration (see brokerconf/)")
    p.add_argument("--statedir", metavar="DIR", help="also write the broker's log to DIR/broker.log")

    p = add("pub", cmd_pub, "publish a root directory or HDF5 file", True)
    p.add_argument("name", nargs="?", help="the root's name")
    p.add_argument("root", nargs="?", help="the root directory or HDF5 file")
    p.add_argument(
        "--watch",
        choices=config.WATCH_MODES,
        help="follow changes: auto (default: inotify, else polling), poll, off",
    )
    _service_options(p)

    p.add_argument("--sign-key", metavar="FILE", help="sign announcements with this key (see keygen)")

    p = add("sub", cmd_sub, "run a subscriber", True)
    _service_options(p)
    _cache_size_option(p)
    p.add_argument(
        "--trust",
        metavar="KEY",
        action="append",
        help="accept only announcements signed by KEY (ed25519:...; repeatable)",
    )
    p.add_argument(
        "--republish",
        metavar="ROOT[=ALIAS][@BROKER_URL]",
        action="append",
        help="announce ROOT (as ALIAS, on BROKER_URL; by default this subscriber's broker) and serve"
        " it to other subscribers from the cache (repeatable)",
    )
    p.add_argument(
        "--sign-key", metavar="FILE", help="sign what is republished with this key (default: one made once)"
    )

    p = add("keygen", cmd_keygen, "make a key to sign announcements with, and print its public key", True)
    p.add_argument("file", help="where to write the private key (PEM, mode 0600; never overwritten)")

    p = add(
        "passwd",
        cmd_passwd,
        "set an MQTT user's password in an amqtt password file (the broker's, not 'catmqtt user')",
        True,
    )
    p.add_argument("file", help="the password file (created if missing)")
    p.add_argument("user", help="the MQTT user name")

    add_commands(lambda name, func, help: add(name, func, help, True))

    p = add("sample", cmd_sample, "write the sample root into a directory, or the sample HDF5 file", True)
    p.add_argument("dir", nargs="?", help="the directory to write")
    p.add_argument("--h5", metavar="FILE", help="write the sample HDF5 file FILE")

    p = add(
        "import", cmd_convert, "write an HDF5 file as a native root directory (needs catmqtt[hdf5])", True
    )
    p.add_argument("file", metavar="FILE.h5", help="the HDF5 file to read")
    p.add_argument("dir", metavar="DIR", help="the directory to write (new or empty)")

    p = add(
        "export", cmd_convert, "write a native root directory as an HDF5 file (needs catmqtt[hdf5])", True
    )
    p.add_argument("dir", metavar="DIR", help="the root directory to read")
    p.add_argument("file", metavar="FILE.h5", help="the HDF5 file to write (replaced if it exists)")

    add("roots", cmd_roots, "list the roots the subscriber knows")
    for name, func, help in (
        ("subscribe", cmd_subscribe, "follow a root"),
        ("unsubscribe", cmd_unsubscribe, "stop following a root"),
    ):
        add(name, func, help).add_argument("root")
    add("list", cmd_list, "list the datasets of a root or directory").add_argument(
        "path", metavar="ROOT[/DIR]"
    )
    add("info", cmd_info, "print a dataset's metadata").add_argument("path", metavar="ROOT/PATH")
    add("show", cmd_show, "print a dataset or a slice of it").add_argument("path", metavar="ROOT/PATH[SLICE]")
    p = add("download", cmd_download, "save a whole dataset, or every dataset of a root or directory")
    p.add_argument("path", metavar="ROOT[/PATH]")
    p.add_argument(
        "-o", "--output", default=".", metavar="DIR", help="where to save, as DIR/ROOT/PATH (default: here)"
    )
    p = add("bundle", cmd_bundle, "save a root or directory as an offline bundle (a ZIP file)")
    p.add_argument("path", metavar="ROOT[/DIR]")
    p.add_argument("-o", "--output", metavar="FILE", help="the bundle's file (default: ROOT[-DIR].zip here)")
    p.add_argument(
        "--cached", action="store_true", help="only datasets whole in the cache; list the others as missing"
    )
    add_watch_commands(add)
    cli_edge.add_commands(add)
    for p in sub.choices.values():
        if not p.get_default("service"):
            _client_options(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    for name in ("conf", "loglevel"):
        setattr(args, name, getattr(args, name, None))
    user = token = None
    try:
        # Checked whatever the command, so that a mistyped level is never ignored.
        loglevel = None if args.loglevel is None else config.parse_loglevel(args.loglevel)
        conf = config.load(args.conf)
        if args.service:
            return args.func(args, conf)
        if loglevel is not None:
            _logging(loglevel)
        from .client import Client

        args.json = getattr(args, "json", False)
        user, token = config.client_credentials(
            conf, getattr(args, "user", None), getattr(args, "token", None)
        )
        url = config.client_sub(conf, getattr(args, "sub", None))
        # One command reads once: a chunk cache would only hold memory.
        with Client(
            url, cache_bytes=0, user=user, password=client_password(user), token=token, plain_http=True
        ) as client:
            return args.func(args, client)
    except Unauthorized as exc:
        given = user is not None or token is not None
        hint = "" if given else " (--user NAME or $CATMQTT_USER; --token or $CATMQTT_TOKEN)"
        print(f"Error: {exc}{hint}", file=sys.stderr)
        return 1
    except CatmqttError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (catmqtt list foo | head): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        print(
            f"Error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
