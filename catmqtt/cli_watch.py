"""This module holds the ``catmqtt`` commands that watch a subscriber: ``nodes``
(the nodes it hears of, and their statuses) and ``stats`` (its counters), and
how they print what it answers.

Each takes the parsed arguments and a :class:`catmqtt.Client`; `add_commands`
registers them with the command's parser.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .config import format_size
from .errors import Unavailable

__all__ = ["add_commands", "cmd_nodes", "cmd_stats"]


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``nodes`` and ``stats`` with `add(name, func, help)`."""
    add("nodes", cmd_nodes, "list the nodes the subscriber hears of: ROLE ID STATUS URL")
    add("stats", cmd_stats, "print the subscriber's counters: cache hits, bytes fetched and served")


def cmd_nodes(args: argparse.Namespace, client: Any) -> int:
    def lines(nodes: list[dict[str, Any]]) -> list[str]:
        fields = ((node["role"], node["id"], node["status"], node.get("url") or "-") for node in nodes)
        return [" ".join(_shown(str(field)) for field in four) for four in fields]

    return _print(args, client, "nodes", client.nodes(), lines)


def cmd_stats(args: argparse.Namespace, client: Any) -> int:
    def lines(stats: dict[str, Any]) -> list[str]:
        return [f"{name + ':':<14}{value}" for name, value in _stats_rows(stats)]

    return _print(args, client, "stats", client.stats(), lines)


def _print(args: argparse.Namespace, client: Any, endpoint: str, answer: Any, lines: Callable) -> int:
    """Print `answer` of ``/api/<endpoint>`` as JSON with ``--json``, else as `lines` makes it."""
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    with _answer_of(client, endpoint):
        text = lines(answer)
    for line in text:
        print(line)
    return 0


@contextmanager
def _answer_of(client: Any, endpoint: str) -> Iterator[None]:
    """Turn an answer that is not what this catmqtt reads into a one-line error."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise Unavailable(
            f"the subscriber at {client.urlbase} answered /api/{endpoint} with what this catmqtt does"
            f" not read ({type(exc).__name__}: {str(exc)[:100]}): is it another version?",
            status=502,
        ) from None


def _stats_rows(stats: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    total, cache = stats["total"], stats["cache"]
    hits, misses = total["cache_hits"], total["cache_misses"]
    reads = hits + misses
    limit = "no limit" if cache["limit"] is None else format_size(cache["limit"], exact=True)
    return (
        ("cache hits", f"{hits} chunks"),
        ("cache misses", f"{misses} chunks"),
        ("hit ratio", "-" if not reads else f"{100 * hits / reads:.1f} %"),
        ("upstream", f"{format_size(total['fetched_bytes'], exact=True)} fetched from publishers"),
        ("served", f"{format_size(stats['served_bytes'], exact=True)} sent to clients"),
        ("cache", f"{format_size(cache['bytes'], exact=True)} of {limit}"),
        ("evictions", f"{cache['evictions']} chunks"),
    )


def _shown(text: str) -> str:
    """Return `text` with spaces and unprintable characters escaped: a node says what
    its URL is, and must not add lines or columns to the output."""
    return "".join(c if c.isprintable() and not c.isspace() else f"\\x{ord(c):02x}" for c in text)
