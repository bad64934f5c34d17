"""This module decides which announcements a subscriber believes.

Keys come from the configuration (``subscriber.trust``: a list of keys for
every root, or a map from root names to keys, ``"*"`` standing for the other
roots) or, for a root the configuration does not name, from the first
announcement of that root believed (trust on first use, kept in the cache's
catalogue; a root first announced unsigned stays so). Under a known key, an
announcement must be signed by it, newer than the last one accepted on its
topic (its sequence number), and a withdrawal must be a signed tombstone: a
bare clear is ignored. An unsigned root is believed as it comes, as catmqtt
always did.

A relayed announcement (a subscriber's that republishes a root, see
`relay`) is signed by the relay and carries its ``origin``: the topic and
payload its first publisher announced, verbatim. The relay's signature is
checked as any publisher's; the origin's must verify too, be no older than
the last one of its topic, and say what the relay says (but for where the
root is served from, by whom and under what name); with ``subscriber.trust``
set for the root, the origin must be signed by a key it lists too (a relay
vouches for an unsigned origin).

All of it runs on the MQTT thread, which alone touches `Trust._latest`.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import BadRequest
from ..signing import verify
from ..topics import encode_level
from .catalogue import Catalogue

log = logging.getLogger(__name__)

# The fields of a relayed announcement that are the relay's own: the rest is its origin's.
RELAY_FIELDS = frozenset({"schema", "key", "seq", "sig", "origin"})
RELAY_ROOT_FIELDS = RELAY_FIELDS | {"name", "url", "publisher", "time"}


class Trust:
    """The keys a subscriber accepts each root under, and the freshness of what it accepted."""

    def __init__(self, configured: dict[str, list[str]] | None, catalogue: Catalogue) -> None:
        self.configured = configured or {}
        self.catalogue = catalogue
        # The highest sequence number accepted on each topic under each key since
        # start (the cache keeps the last accepted announcements, for after a restart).
        self._latest: dict[tuple[str, str], int] = {}
        self._warned_unsigned: set[str] = set()

    def keys(self, root: str) -> list[str] | None:
        """Return the keys root `root` must be signed by; None while it may be unsigned."""
        if root in self.configured:
            return self.configured[root]
        if "*" in self.configured:
            return self.configured["*"]
        first = self.catalogue.first_key(root)
        return [first] if first else None

    def check(
        self,
        topic: str,
        root: str,
        obj: dict[str, Any] | None,
        last: dict[str, Any] | None,
        *,
        pin: bool,
        path: str = "",
    ) -> str | None:
        """Return the key that signed `obj` (None: unsigned), or raise BadRequest if
        `obj` is not to be believed: unsigned, forged or under a key not trusted for
        `root`, or older than `last` (the announcement accepted last on `topic`).

        `obj` None is a bare clear. With `pin` (a root's own announcement, checked
        otherwise), the first one believed of a root the configuration does not
        name pins its key, or that the root is unsigned: a root known before is
        never pinned to whatever key comes after a clear. `path` is that of a
        dataset's announcement ("" for the root's).
        """
        signer = None if obj is None else verify(topic, obj)
        keys = self.keys(root)
        if keys is None:
            if signer is None and obj is not None and root not in self._warned_unsigned:
                self._warned_unsigned.add(root)
                log.warning("root %r is not signed: anyone who can publish on the broker can change it", root)
        elif obj is None:
            raise BadRequest(f"a bare clear of signed root {root!r}: a withdrawal must be a signed tombstone")
        elif signer not in keys:
            raise BadRequest(self._refusal(root, signer, keys))
        if signer is not None:
            self._check_fresh(topic, signer, obj, last)
        if obj is not None and "origin" in obj:
            self._check_origin(root, path, obj, last)
        if signer is not None:
            self._latest[(topic, signer)] = obj["seq"]
            if obj.get("deleted") is True:
                self.catalogue.set_tombstone(topic, signer, obj["seq"])
        if pin and keys is None and self.catalogue.first_key(root) is None:
            # Known without a record, a root was first announced unsigned (it
            # was recorded as it came, or by a catmqtt that pinned signed ones only).
            first = signer if last is None else None
            self.catalogue.set_first_key(root, first or "")
            if first is not None:
                log.warning("trusting key %s for root %r from now on (first use)", first, root)
        return signer

    def _check_fresh(self, topic: str, signer: str, obj: dict[str, Any], last: dict[str, Any] | None) -> None:
        """Raise BadRequest if `obj`, signed by `signer`, is older than the last announcement
        of that key on `topic`: against the same key only, for a stranger's high number on
        an unsigned root must not make its publisher's look old."""
        seq = obj["seq"]
        if last is not None:
            known = last.get("seq", -1) if last.get("key") == signer else -1
        else:
            # Withdrawn before a restart, perhaps: what the tombstone withdrew is older.
            withdrawn = self.catalogue.tombstone(topic)
            known = withdrawn[1] if withdrawn is not None and withdrawn[0] == signer else -1
        latest = max(self._latest.get((topic, signer), -1), known)
        if seq < latest:
            raise BadRequest(f"sequence number {seq} is older than {latest}: a replay")

    def _check_origin(self, root: str, path: str, obj: dict[str, Any], last: dict[str, Any] | None) -> None:
        """Raise BadRequest unless the origin of relayed `obj` is to be believed (see the
        module's docstring); `last` is the announcement accepted last on its topic."""
        origin = obj["origin"]
        if not isinstance(origin, dict) or set(origin) != {"topic", "payload"}:
            raise BadRequest("'origin' must be an object of a 'topic' and a 'payload'")
        topic, payload = origin["topic"], origin["payload"]
        if not isinstance(topic, str) or not isinstance(payload, dict) or "origin" in payload:
            raise BadRequest("'origin' must be a topic and the payload announced on it, itself no relay's")
        levels = "/".join(encode_level(part) for part in path.split("/"))
        head, _, tail = topic.rpartition(f"/ds/{levels}" if path else "/")
        if not head or (path and tail) or (not path and not (tail and head.endswith("/roots"))):
            raise BadRequest(
                f"'origin' names topic {topic[:200]!r}, not one of a {'dataset' if path else 'root'}"
            )
        signer = verify(topic, payload)
        configured = self.configured.get(root, self.configured.get("*"))
        if signer is not None and configured is not None and signer not in configured:
            raise BadRequest(
                f"relayed from an origin signed by {signer}, but subscriber.trust does not accept"
                f" root {root!r} under it: list the key of its first publisher too"
            )
        own = RELAY_FIELDS if path else RELAY_ROOT_FIELDS
        if {k: v for k, v in obj.items() if k not in own} != {
            k: v for k, v in payload.items() if k not in own
        }:
            raise BadRequest("a relayed announcement that says otherwise than its origin")
        if signer is not None:
            before = (last or {}).get("origin", {}).get("payload", {})
            latest = max(
                self._latest.get((topic, signer), -1),
                before.get("seq", -1) if before.get("key") == signer else -1,
            )
            if payload["seq"] < latest:
                raise BadRequest(
                    f"its origin's sequence number {payload['seq']} is older than {latest}: a replay"
                )
            self._latest[(topic, signer)] = payload["seq"]

    def _refusal(self, root: str, signer: str | None, keys: list[str]) -> str:
        what = "unsigned" if signer is None else f"signed by {signer}"
        if root in self.configured or "*" in self.configured:
            return f"{what}, but subscriber.trust accepts root {root!r} only under {', '.join(keys)}"
        return (
            f"{what}, but root {root!r} was first announced under {keys[0]}. If its publisher's key"
            f" really changed, trust the new one for this root (subscriber.trust: {{{root}: [KEY]}}"
            " in the configuration file) and restart the subscriber"
        )
