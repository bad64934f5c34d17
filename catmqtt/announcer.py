"""This module keeps a root's announcements on the broker for the node that makes
them: a publisher for its own root, a subscriber for a root it republishes.

The node announces each dataset and the root (signed, where it signs), and
withdraws what it no longer serves: with a signed tombstone first, since
subscribers that trust its key ignore a bare clear, which anyone can send. As
the broker replays its topics, it tells its own announcements from someone
else's: what it no longer serves is withdrawn again, and what someone else
changed is restored.

Threads: the caller holds `Announcer.lock` around a batch of announcements
(`announce`, `withdraw`: all of a connection, a rescan, a change); the MQTT
thread takes it in `message`. It guards `_announced`, `_tombstones` and the
order of the publications.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from .errors import BadRequest
from .mqtt import LogThrottle, Node
from .schema import MAX_PAYLOAD
from .signing import Signer, verify
from .topics import dataset_topic, parse_topic, root_topic


class Announcer:
    """The announcements of root `name` under `prefix`, signed by `signer` if not None,
    published through `node` (set before it connects)."""

    def __init__(self, prefix: str, name: str, signer: Signer | None, logger: logging.Logger) -> None:
        self.prefix = prefix
        self.name = name
        self.signer = signer
        self.node: Node | None = None
        self.lock = threading.Lock()
        # What we last announced on each topic of the root (b"" once cleared), and
        # the tombstones we sent, so that our own messages coming back are told
        # from someone else's.
        self._announced: dict[str, bytes] = {}
        self._tombstones: dict[str, bytes] = {}
        self._withdrawals = LogThrottle(logger)
        self._oversized = LogThrottle(logger)

    @property
    def root_topic(self) -> str:
        return root_topic(self.prefix, self.name)

    def dataset_topic(self, path: str) -> str:
        return dataset_topic(self.prefix, self.name, path)

    def subscribe(self) -> None:
        """Have the broker replay the root's topics (on each connection): what we no
        longer serve is withdrawn, and ours that someone else changed are restored."""
        self.node.subscribe(self.root_topic)
        self.node.subscribe(f"{self.root_topic}/ds/#")

    def announce(self, topic: str, obj: dict[str, Any]) -> None:
        """Publish `obj` on `topic`, signed if we sign (`lock` held); not if it is larger
        than subscribers take (a relay's announcements are about twice their origin's)."""
        payload = self.node.payload(topic, obj)
        if len(payload) > MAX_PAYLOAD:
            self._oversized.warning(
                "not announcing %s: its %d bytes are more than the %d subscribers take",
                topic,
                len(payload),
                MAX_PAYLOAD,
            )
            return
        self._announced[topic] = payload
        # Our tombstone of an earlier withdrawal is no longer ours: replayed, it is restored over.
        self._tombstones.pop(topic, None)
        self.node.publish(topic, payload)

    def withdraw(self, topic: str, ident: dict[str, Any]) -> None:
        """Clear `topic`, after a signed tombstone if we sign (`lock` held)."""
        if self.signer is not None:
            tombstone = self.node.payload(topic, {**ident, "deleted": True})
            self._tombstones[topic] = tombstone
            self.node.publish(topic, tombstone)
        self._announced[topic] = b""
        self.node.publish(topic, b"")

    def message(self, topic: str, payload: bytes, serves: Callable[[str], bool]) -> None:
        """Withdraw a dataset we do not serve (`serves(path)` false); restore what
        someone else changed (on the MQTT thread)."""
        try:
            what = parse_topic(self.prefix, topic)
        except BadRequest:
            return
        # Check the topic: amqtt may replay retained messages beyond the filter.
        if what.kind not in ("root", "dataset") or what.name != self.name:
            return
        with self.lock:
            if self._ours(topic, payload):
                if not payload:
                    # Our clear is back: nothing on the topic is left to tell ours
                    # (and a stranger's junk topics do not pile up here).
                    self._announced.pop(topic, None)
                    self._tombstones.pop(topic, None)
                return
            if what.kind == "dataset" and not serves(what.path):
                if payload:
                    self._withdrawals.info("withdrawing the announcement of %s, which is gone", what.path)
                    self.withdraw(topic, {"path": what.path})
                return
            if topic in self._announced:
                self.node.restore(topic, self._announced[topic])

    def _ours(self, topic: str, payload: bytes) -> bool:
        """Tell whether `payload` on `topic` says what we announced last there: that
        announcement, or an earlier one of the same content (a retained copy from
        our last run, which our new one follows), or our tombstone."""
        mine = self._announced.get(topic)
        if payload in (mine, self._tombstones.get(topic)):
            return True
        if not payload or not mine:
            return False
        try:
            theirs, ours = json.loads(payload), json.loads(mine)
            if self.signer is not None and verify(topic, theirs) != self.signer.public:
                return False
        except (ValueError, BadRequest):
            return False
        return isinstance(theirs, dict) and _lasting(theirs) == _lasting(ours)


def _lasting(obj: dict[str, Any]) -> dict[str, Any]:
    """Return an announcement without what changes each time it is made."""
    return {k: v for k, v in obj.items() if k not in ("time", "seq", "sig")}
