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

All of it runs on the MQTT thread, which alone touches `Trust._latest`.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import BadRequest
from ..signing import verify
from .catalogue import Catalogue

log = logging.getLogger(__name__)


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
        self, topic: str, root: str, obj: dict[str, Any] | None, last: dict[str, Any] | None, *, pin: bool
    ) -> str | None:
        """Return the key that signed `obj` (None: unsigned), or raise BadRequest if
        `obj` is not to be believed: unsigned, forged or under a key not trusted for
        `root`, or older than `last` (the announcement accepted last on `topic`).

        `obj` None is a bare clear. With `pin` (a root's own announcement, checked
        otherwise), the first one believed of a root the configuration does not
        name pins its key, or that the root is unsigned: a root known before is
        never pinned to whatever key comes after a clear.
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
            # Against the announcements of the same key only: a stranger's high
            # number on an unsigned root must not make its publisher's look old.
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
            self._latest[(topic, signer)] = seq
            if obj.get("deleted") is True:
                self.catalogue.set_tombstone(topic, signer, seq)
        if pin and keys is None and self.catalogue.first_key(root) is None:
            # Known without a record, a root was first announced unsigned (it
            # was recorded as it came, or by a catmqtt that pinned signed ones only).
            first = signer if last is None else None
            self.catalogue.set_first_key(root, first or "")
            if first is not None:
                log.warning("trusting key %s for root %r from now on (first use)", first, root)
        return signer

    def _refusal(self, root: str, signer: str | None, keys: list[str]) -> str:
        what = "unsigned" if signer is None else f"signed by {signer}"
        if root in self.configured or "*" in self.configured:
            return f"{what}, but subscriber.trust accepts root {root!r} only under {', '.join(keys)}"
        return (
            f"{what}, but root {root!r} was first announced under {keys[0]}. If its publisher's key"
            f" really changed, trust the new one for this root (subscriber.trust: {{{root}: [KEY]}}"
            " in the configuration file) and restart the subscriber"
        )
