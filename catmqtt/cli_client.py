"""This module holds the client commands of ``catmqtt`` (roots, subscribe,
unsubscribe, list, info, show, download), which ask a subscriber over HTTP, and
how they print what it answers.

Each takes the parsed arguments and a :class:`catmqtt.Client`; it imports
numpy only when it prints an array, so that the others start quickly.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from .progress import on_terminal

# The most items `catmqtt --json show` prints, and bytes `catmqtt show` of a byte stream.
SHOWN_ITEMS = 1_000_000


def cmd_roots(args: argparse.Namespace, client: Any) -> int:
    roots = client.get_roots()
    if args.json:
        return _json(roots)
    for name in sorted(roots):
        root = roots[name]
        print(
            name + (" (subscribed)" if root["subscribed"] else "") + ("" if root["online"] else " (offline)")
        )
    return 0


def cmd_subscribe(args: argparse.Namespace, client: Any) -> int:
    return _print(client.subscribe(args.root), args.json)


def cmd_unsubscribe(args: argparse.Namespace, client: Any) -> int:
    return _print(client.unsubscribe(args.root), args.json)


def cmd_list(args: argparse.Namespace, client: Any) -> int:
    root = args.path.strip("/").split("/", 1)[0]
    paths = [f"{root}/{p}" for p in client.get_list(args.path)]
    if args.json:
        return _json(paths)
    for path in paths:
        print(path)
    return 0


def cmd_info(args: argparse.Namespace, client: Any) -> int:
    return _json(client.get_info(args.path))


def cmd_show(args: argparse.Namespace, client: Any) -> int:
    from .errors import TooLarge
    from .slices import items_at_most, parse_slice, result_shape, select

    path, slice_ = _split_slice(args.path)
    key = parse_slice(slice_ or "")
    meta = None
    bound = items_at_most(key)
    if args.json or bound is None or bound > SHOWN_ITEMS:
        # Checked before anything is fetched: JSON takes about 20 bytes an item, in memory
        # too, and bytes about 3 (their repr). A few items bounded whatever the shape
        # are read at once, without the metadata.
        meta = client.get_info(path)
        size = math.prod(result_shape(select(key, meta["shape"])))
        if (args.json or meta["kind"] != "ndarray") and size > SHOWN_ITEMS:
            what = "--json" if args.json else "show"
            raise TooLarge(
                f"the selection has {size} {'items' if args.json else 'bytes'}, over the {SHOWN_ITEMS}"
                f" that {what} prints: select less ({path}[:{SHOWN_ITEMS}]), or save it with"
                " 'catmqtt download'"
            )
    result = client.fetch(path, key, meta=meta)
    if args.json:
        from .dtypes import to_jsonable

        return _json(to_jsonable(result))
    if isinstance(result, bytes):
        try:
            print(result.decode())
        except UnicodeDecodeError:
            print(repr(result))
        return 0
    import numpy as np

    with np.printoptions(threshold=1000):
        print(result)
    return 0


def cmd_download(args: argparse.Namespace, client: Any) -> int:
    from pathlib import Path

    from .errors import DownloadFailed

    try:
        saved = client.download(args.path, args.output, progress=on_terminal())
    except DownloadFailed as exc:
        # What was saved, then one line for each dataset that was not.
        _saved(exc.saved, args.json)
        for dataset, error in exc.failures.items():
            print(f"Error: cannot save {_one_line(dataset)}: {_one_line(str(error))}", file=sys.stderr)
        return 1
    if isinstance(saved, Path):
        if args.json:
            return _json({"path": str(saved)})
        print(f"Dataset saved to {_one_line(str(saved))}")
        return 0
    return _saved(saved, args.json)


def _saved(paths: list[Any], as_json: bool) -> int:
    """Print the paths a download of a root or directory wrote."""
    if as_json:
        return _json([str(p) for p in paths])
    for path in paths:
        print(f"Dataset saved to {_one_line(str(path))}")
    return 0


def cmd_bundle(args: argparse.Namespace, client: Any) -> int:
    from .bundle import Bundle

    dest = client.bundle(args.path, args.output, cached=args.cached, progress=on_terminal())
    bundle = Bundle(dest)
    try:
        kept, missing = sorted(bundle.metas), bundle.missing()
    finally:
        bundle.close()
    root = args.path.strip("/").split("/", 1)[0]
    if args.json:
        _json({"path": str(dest), "datasets": kept, "missing": missing})
    else:
        print(f"Bundle saved to {dest} ({len(kept)} dataset{'' if len(kept) == 1 else 's'})")
    for path, reason in sorted(missing.items()):
        print(f"missing: {root}/{path}: {reason}", file=sys.stderr)
    # Left out because they were not cached, as asked: not a failure.
    return 1 if missing and not args.cached else 0


def _one_line(text: str) -> str:
    """Return `text` with what is not printable escaped: a subscriber names datasets."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _split_slice(text: str) -> tuple[str, str | None]:
    """Split ``foo/x.b2nd[1,2]`` into the path and the slice."""
    if text.endswith("]") and "[" in text:
        at = text.rindex("[")
        return text[:at], text[at + 1 : -1]
    return text, None


def _print(value: Any, as_json: bool) -> int:
    print(json.dumps(value) if as_json else value)
    return 0


def _json(value: Any) -> int:
    """Print `value` as indented JSON, with lists of plain values on one line."""
    print(_layout(value, ""))
    return 0


def _layout(value: Any, pad: str) -> str:
    inner = pad + "  "
    if isinstance(value, dict) and value:
        items = (f"{inner}{json.dumps(str(k))}: {_layout(v, inner)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        return "[\n" + ",\n".join(inner + _layout(v, inner) for v in value) + f"\n{pad}]"
    return json.dumps(value)
