"""This module holds the edge node commands of ``catmqtt`` (pin, unpin, pins,
forget), which ask a subscriber over HTTP what it keeps, and how they print
what it answers.

Each takes the parsed arguments and a :class:`catmqtt.Client`. ``pin
--wait`` draws a progress bar on standard error when it is a terminal
(`progress`), and adds nothing otherwise.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from . import progress
from .config import format_size


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the commands to the parser, by `add(name, func, help)` (see `cli.make_parser`)."""
    p = add("pin", cmd_pin, "mirror a root, a directory or a dataset: fetch it whole, keep it cached")
    p.add_argument("path", metavar="ROOT[/PATH]")
    p.add_argument(
        "--wait", action="store_true", help="return once all of it is cached (a progress bar on a terminal)"
    )
    add("unpin", cmd_unpin, "stop mirroring a root, a directory or a dataset").add_argument(
        "path", metavar="ROOT[/PATH]"
    )
    add("pins", cmd_pins, "list the pins, with the bytes cached of the bytes in total")
    add(
        "forget", cmd_forget, "unsubscribe from a root and drop its cache (and the root, if offline)"
    ).add_argument("root")


def cmd_pin(args: argparse.Namespace, client: Any) -> int:
    if not args.wait:
        return _print(client.pin(args.path), args.json)
    pin = client.pin(args.path, wait=True, progress=progress.on_terminal())
    return _print(pin if args.json else "Ok", args.json)


def cmd_unpin(args: argparse.Namespace, client: Any) -> int:
    return _print(client.unpin(args.path), args.json)


def cmd_pins(args: argparse.Namespace, client: Any) -> int:
    pins = client.pins()
    if args.json:
        print(json.dumps(pins))
        return 0
    for pin in pins:
        name = f"{pin['root']}/{pin['path']}" if pin["path"] else pin["root"]
        line = f"{name}: {format_size(pin['cached'])} of {format_size(pin['total'])}"
        print(line + (f" ({pin['error']})" if pin["error"] else ""))
    return 0


def cmd_forget(args: argparse.Namespace, client: Any) -> int:
    return _print(client.forget(args.root), args.json)


def _print(value: Any, as_json: bool) -> int:
    print(json.dumps(value) if as_json else value)
    return 0
