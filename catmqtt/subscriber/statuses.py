"""This module keeps the statuses that nodes publish on ``PREFIX/nodes/ROLE/ID``.

Threads: the MQTT thread is the only writer (`Statuses.record`); HTTP
threads read single entries (`online`), which a dict gives them whole.
"""

from __future__ import annotations

from typing import Any

from ..errors import BadRequest
from ..schema import parse_node
from ..signing import verify

# A status's key: the node's role and id, and the key that signed it (None if unsigned).
StatusKey = tuple[str, str, str | None]


class Statuses:
    """The latest status of each node, apart for each key it is signed by."""

    def __init__(self) -> None:
        self._latest: dict[StatusKey, dict[str, Any]] = {}
        # Of each node's current session, the highest sequence number of a signed
        # "online" or "offline" status, and that of the last will its last
        # "online" names (see _check_fresh).
        self._freshness: dict[tuple[str, str, str], tuple[int, int | None]] = {}

    def record(self, topic: str, role: str, node_id: str, obj: dict[str, Any] | None) -> None:
        """Record a node's status, or its clearing; raise BadRequest if it is junk or a replay."""
        signer = None if obj is None else verify(topic, obj)
        key = (role, node_id, signer)
        if obj is None:
            # Only an unsigned status can be cleared by anyone.
            self._latest.pop(key, None)
            return
        status = parse_node(obj, role, node_id)
        if signer is not None:
            self._check_fresh(key, status)
        self._latest[key] = status

    def online(self, info: dict[str, Any]) -> bool:
        """Whether the publisher of a root announced as `info` is online.

        A signed root's publisher is online only by a status signed with the root's key.
        """
        status = self._latest.get(("publisher", info["publisher"], info.get("key")))
        return status is not None and status["status"] == "online"

    def _check_fresh(self, key: tuple[str, str, str], status: dict[str, Any]) -> None:
        """Raise BadRequest if a signed status is older than the last one of its node.

        A node's session grows with every run. Within one, its statuses come in
        the order of their sequence numbers ("online" after each connection,
        "offline" at a clean stop, which ends it) but for the last will of each
        connection, "lost", signed before it connects: "lost" is believed until
        the session ends if it is the will that the last "online" names, and
        "online" or "offline" must be newer than every other before, or the
        same message again.
        """
        old = self._latest.get(key)
        what = f"{key[0]} {key[1]!r}"
        session, seq, state = status.get("session", 0), status["seq"], status["status"]
        high, will = self._freshness.get(key, (-1, None))
        if old is not None and session == old.get("session", 0):
            if state == "lost":
                if old["status"] == "offline":
                    raise BadRequest(f"a status of {what} after it stopped: a replay")
                if will is not None and seq != will:
                    raise BadRequest(f"the last will of an earlier connection of {what}: a replay")
            elif seq < high or (seq == high and state != old["status"]):
                raise BadRequest(f"a status of {what} older than its last: a replay")
        elif old is not None and session < old.get("session", 0):
            raise BadRequest(f"a status of an earlier session of {what}: a replay")
        else:
            high, will = -1, None
        if state != "lost":
            high = max(high, seq)
        if state == "online":
            will = status.get("will")
        self._freshness[key] = (high, will)
