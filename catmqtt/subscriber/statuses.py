"""This module keeps the statuses that nodes publish on ``PREFIX/nodes/ROLE/ID``.

Threads: the MQTT thread is the only writer (`Statuses.record`); HTTP
threads read single entries (`online`), which a dict gives them whole, and
all of them (`nodes`): `Statuses._lock` guards the writes to `_latest` and
`_urls` and the copies `nodes` takes (nothing else is done under it). The
MQTT thread alone touches `_freshness`, and calls `roots` (which takes the
catalogue's lock) without holding `_lock`.

Which status of a node `nodes` shows, when several keys signed one: anyone
who can publish on the broker can publish a status for any node, signed by
a key of their own or unsigned, so a status proves something only under a
key the subscriber trusts. A publisher that a known root names is shown by
the status signed by that root's key (unsigned for an unsigned root), the
one `online` believes, so that ``nodes`` and ``roots`` agree; if there is
none, it is not shown. Any other node (subscribers, which do not sign; the
publishers of no known root) has no trusted key: its unsigned status is
shown if there is one (the node restores it within a second should someone
overwrite it), else the latest signed one.

How many are kept: anyone can name any number of nodes, so at most
`MAX_NODES` statuses (a node's, one a key) are kept; beyond, the status of
a new node (or of a node under a new key) is refused, but for one signed by
a known root's key for its publisher, which may take up to `MAX_NODES` more
places (the follower asks the broker again for the status of a root's
publisher that may have been refused before the root was known, see
`refused_maybe`). A clear (an empty retained payload) frees the place of the node's
unsigned status, and of those signed by a key no known root gives it. Of a
status, only the fields `schema.parse_node` knows are kept, bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import BadRequest
from ..schema import NodeStatus, parse_node
from ..signing import verify

# A status's key: the node's role and id, and the key that signed it (None if unsigned).
StatusKey = tuple[str, str, str | None]
# The most statuses kept of nodes no known root vouches for (see the module's docstring):
# a few hundred bytes each, their URLs at most 2 KiB.
MAX_NODES = 2000


class Statuses:
    """The latest status of each node, apart for each key it is signed by.

    `roots` returns the known roots' announcements by name, for the keys that
    vouch for their publishers (none by default); `limit` is `MAX_NODES` by default.
    """

    def __init__(
        self, roots: Callable[[], Mapping[str, Mapping[str, Any]]] = dict, limit: int | None = None
    ) -> None:
        self._roots = roots
        self.limit = MAX_NODES if limit is None else limit
        self._latest: dict[StatusKey, NodeStatus] = {}
        # The URL of each node's last "online", for its "offline" and "lost".
        self._urls: dict[StatusKey, str] = {}
        self._lock = threading.Lock()
        # Of each node's current session, the highest sequence number of a signed
        # "online" or "offline" status, and that of the last will its last
        # "online" names (see _check_fresh).
        self._freshness: dict[tuple[str, str, str], tuple[int, int | None]] = {}

    def record(self, topic: str, role: str, node_id: str, obj: dict[str, Any] | None) -> None:
        """Record a node's status, or its clearing; raise BadRequest if it is junk or a replay."""
        signer = None if obj is None else verify(topic, obj)
        key = (role, node_id, signer)
        if obj is None:
            self._clear(role, node_id)
            return
        status = parse_node(obj, role, node_id)
        if key not in self._latest and len(self._latest) >= self.limit:
            self._check_room(key)
        if signer is not None:
            self._check_fresh(key, status)
        with self._lock:
            self._latest[key] = status
            if status["status"] == "online":
                self._urls[key] = status["url"]

    def _clear(self, role: str, node_id: str) -> None:
        """Forget the node's unsigned status, and those signed by keys no known root
        gives it: anyone may clear them, as anyone may publish them."""
        kept = [k for k in self._latest if k[:2] == (role, node_id)]
        signed = role == "publisher" and any(k[2] is not None for k in kept)
        vouched = self._vouched().get(node_id, set()) if signed else set()
        gone = [k for k in kept if k[2] not in vouched]
        with self._lock:
            for k in gone:
                self._latest.pop(k, None)
                self._urls.pop(k, None)
        for k in gone:
            self._freshness.pop(k, None)

    def _check_room(self, key: StatusKey) -> None:
        """Raise BadRequest if the status of a new `key` does not fit in the table, full."""
        role, node_id, signer = key
        vouched = signer is not None and role == "publisher" and signer in self._vouched().get(node_id, ())
        if not vouched or len(self._latest) >= 2 * self.limit:
            raise BadRequest(
                f"{len(self._latest)} node statuses are kept, the most: the status of a new node"
                " is refused until one is cleared"
            )

    def _vouched(self) -> dict[str, set[str]]:
        """Return the keys the known signed roots give each publisher."""
        keys: dict[str, set[str]] = {}
        for info in self._roots().values():
            if info.get("key") is not None:
                keys.setdefault(info["publisher"], set()).add(info["key"])
        return keys

    def refused_maybe(self, info: Mapping[str, Any]) -> bool:
        """Whether the status of the publisher of a root announced as `info` may have been
        refused for want of room, before the root was known to vouch for it: none is kept
        under the root's key, and the table is full."""
        key = ("publisher", info["publisher"], info.get("key"))
        return len(self._latest) >= self.limit and key not in self._latest

    def online(self, info: dict[str, Any]) -> bool:
        """Whether the publisher of a root announced as `info` is online.

        A signed root's publisher is online only by a status signed with the root's key.
        """
        status = self._latest.get(("publisher", info["publisher"], info.get("key")))
        return status is not None and status["status"] == "online"

    def nodes(self, roots: dict[str, Any]) -> list[dict[str, Any]]:
        """Return the status of each node, one a node (see the module's docstring),
        sorted by role and id; `roots` maps the known roots' names to their
        announcements. A publisher lists the roots that name it."""
        with self._lock:
            latest, urls = dict(self._latest), dict(self._urls)
        # The keys each publisher's roots are signed by (None: unsigned), and those roots.
        named: dict[str, dict[str | None, list[str]]] = {}
        for name, info in roots.items():
            named.setdefault(info["publisher"], {}).setdefault(info.get("key"), []).append(name)
        chosen: dict[tuple[str, str], tuple[tuple, StatusKey]] = {}
        for key, status in latest.items():
            role, node_id, signer = key
            served = named.get(node_id, {}) if role == "publisher" else {}
            if served and signer not in served:
                continue
            # Unsigned first where no key is trusted, then the latest.
            rank = (not served and signer is not None, -_time(status))
            if (role, node_id) not in chosen or rank < chosen[(role, node_id)][0]:
                chosen[(role, node_id)] = (rank, key)
        nodes = []
        for (role, node_id), (_, key) in sorted(chosen.items()):
            status = latest[key]
            node = {"role": role, "id": node_id, "status": status["status"], "url": urls.get(key)}
            node.update(key=key[2], session=status.get("session"), time=_time(status) or None)
            if "version" in status:
                node["version"] = status["version"]
            if "summary" in status:
                node["summary"] = status["summary"]
            if role == "publisher":
                node["roots"] = sorted(named.get(node_id, {}).get(key[2], []))
            nodes.append(node)
        return nodes

    def _check_fresh(self, key: tuple[str, str, str], status: NodeStatus) -> None:
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


def _time(status: NodeStatus) -> float:
    """Return when a node says it sent `status` (0 if it says nothing: `parse_node`
    keeps only a finite number)."""
    return float(status.get("time", 0.0))
