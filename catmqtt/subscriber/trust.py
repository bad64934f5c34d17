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

All of it runs on the MQTT thread, which alone touches `Trust._latest` and
`Trust._origins`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ..errors import BadRequest
from ..signing import ANNOUNCER_FIELDS, verify
from ..topics import encode_level
from .catalogue import Catalogue

log = logging.getLogger(__name__)

# The topic of a root's announcement, under any prefix.
_ROOT_TOPIC = re.compile(r"(?:(?!/roots/)[^#+])+/roots/[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
# The fields of a relayed announcement that are the relay's own: the rest is its origin's.
RELAY_FIELDS = frozenset({"schema", *ANNOUNCER_FIELDS})
RELAY_ROOT_FIELDS = RELAY_FIELDS | {"name", "url", "publisher", "time"}


class Trust:
    """The keys a subscriber accepts each root under, and the freshness of what it accepted."""

    def __init__(self, configured: dict[str, list[str]] | None, catalogue: Catalogue) -> None:
        self.configured = configured or {}
        self.catalogue = catalogue
        # The highest sequence number accepted on each topic under each key since
        # start (the cache keeps the last accepted announcements, for after a restart).
        self._latest: dict[tuple[str, str], int] = {}
        # The same of the origins that relayed announcements carry, per root, origin topic and key.
        self._origins: dict[tuple[str, str, str], int] = {}
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
        root_info: dict[str, Any] | None = None,
    ) -> str | None:
        """Return the key that signed `obj` (None: unsigned), or raise BadRequest if
        `obj` is not to be believed: unsigned, forged or under a key not trusted for
        `root`, or older than `last` (the announcement accepted last on `topic`).

        `obj` None is a bare clear. With `pin` (a root's own announcement, checked
        otherwise), the first one believed of a root the configuration does not
        name pins its key, or that the root is unsigned: a root known before is
        never pinned to whatever key comes after a clear. `path` is that of a
        dataset's announcement ("" for the root's), and `root_info` then the root's
        announcement believed last.
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
        if obj is not None:
            relayed = _origin(root_info if path else last)
            self._check_origin(root, path, obj, last, relayed)
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

    def _check_origin(
        self,
        root: str,
        path: str,
        obj: dict[str, Any],
        last: dict[str, Any] | None,
        relayed: dict[str, Any] | None,
    ) -> None:
        """Raise BadRequest unless the origin of `obj` is to be believed (see the module's
        docstring). `last` is the announcement accepted last on its topic; `relayed` the
        origin of the root's announcement believed last (of the root itself for a root's
        announcement, None if it was not relayed)."""
        if obj.get("deleted") is True:
            # A relay's own tombstone: the relay's signature is what it needs.
            return
        if "origin" not in obj:
            if relayed is not None:
                raise BadRequest(
                    f"root {root!r} is relayed, and this announcement does not carry its origin"
                    " (to take it from elsewhere, forget the root first: catmqtt forget)"
                )
            return
        origin = obj["origin"]
        if not isinstance(origin, dict) or set(origin) != {"topic", "payload"}:
            raise BadRequest("'origin' must be an object of a 'topic' and a 'payload'")
        topic, payload = origin["topic"], origin["payload"]
        if not isinstance(topic, str) or not isinstance(payload, dict) or "origin" in payload:
            raise BadRequest("'origin' must be a topic and the payload announced on it, itself no relay's")
        if path:
            if relayed is None:
                raise BadRequest(f"a dataset relayed from {topic[:200]!r}, but root {root!r} is not relayed")
            levels = "/".join(encode_level(part) for part in path.split("/"))
            if topic != f"{relayed['topic']}/ds/{levels}":
                raise BadRequest(
                    f"'origin' names topic {topic[:200]!r}, not that of {path!r} in the root's origin"
                )
        elif not _ROOT_TOPIC.fullmatch(topic):
            raise BadRequest(f"'origin' names topic {topic[:200]!r}, not one of a root")
        signer = verify(topic, payload)
        configured = self.configured.get(root, self.configured.get("*"))
        if configured is not None and signer not in configured:
            raise BadRequest(
                f"relayed from an origin {'unsigned' if signer is None else f'signed by {signer}'}, but"
                f" subscriber.trust does not accept root {root!r} under it: list the key of its first"
                " publisher too"
            )
        first = None if relayed is None else relayed["payload"].get("key")
        if relayed is not None and signer != first and (path or configured is None):
            # The origin's key, as first believed, is kept as the root's is (or, for a
            # dataset, that of the root's origin).
            raise BadRequest(
                f"relayed from an origin {'unsigned' if signer is None else f'signed by {signer}'}, but"
                f" root {root!r} is relayed from one {'unsigned' if first is None else f'signed by {first}'}."
                f" If its first publisher's key really changed, trust it (subscriber.trust: {{{root}:"
                " [RELAY-KEY, KEY]}) and restart the subscriber"
            )
        own = RELAY_FIELDS if path else RELAY_ROOT_FIELDS
        if {k: v for k, v in obj.items() if k not in own} != {
            k: v for k, v in payload.items() if k not in own
        }:
            raise BadRequest("a relayed announcement that says otherwise than its origin")
        if signer is not None:
            # Per root: a root followed both from its publisher and through a relay is
            # announced by each in its own time.
            before = (_origin(last) or {}).get("payload", {})
            latest = max(
                self._origins.get((root, topic, signer), -1),
                before.get("seq", -1) if before.get("key") == signer else -1,
            )
            if payload["seq"] < latest:
                raise BadRequest(
                    f"its origin's sequence number {payload['seq']} is older than {latest}: a replay"
                )
            self._origins[(root, topic, signer)] = payload["seq"]

    def _refusal(self, root: str, signer: str | None, keys: list[str]) -> str:
        what = "unsigned" if signer is None else f"signed by {signer}"
        if root in self.configured or "*" in self.configured:
            return f"{what}, but subscriber.trust accepts root {root!r} only under {', '.join(keys)}"
        return (
            f"{what}, but root {root!r} was first announced under {keys[0]}. If its publisher's key"
            f" really changed, trust the new one for this root (subscriber.trust: {{{root}: [KEY]}}"
            " in the configuration file) and restart the subscriber"
        )


def _origin(announcement: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return the origin a believed announcement was relayed from, None if it was not."""
    origin = (announcement or {}).get("origin")
    return origin if isinstance(origin, dict) and isinstance(origin.get("payload"), dict) else None
