"""This module decides which announcements a subscriber believes.

Keys come from the configuration (``subscriber.trust``: a list of keys for
every root, or a map from root names to keys, ``"*"`` standing for the other
roots) or, for a root the configuration does not name, from the first
signed announcement of that root (trust on first use, kept in the cache's
index). Under a known key, an announcement must be signed by it, newer than
the last one accepted on its topic (its sequence number), and a withdrawal
must be a signed tombstone: a bare clear is ignored. A root nobody ever
signed is believed as it comes, as catmqtt always did.

All of it runs on the MQTT thread, which alone touches `Trust._latest`.
"""

from __future__ import annotations

import logging
from typing import Any

from .cache import Cache
from .errors import BadRequest
from .signing import verify

log = logging.getLogger(__name__)


class Trust:
    """The keys a subscriber accepts each root under, and the freshness of what it accepted."""

    def __init__(self, configured: dict[str, list[str]] | None, cache: Cache) -> None:
        self.configured = configured or {}
        self.cache = cache
        # The highest sequence number accepted on each topic since start (the
        # cache keeps the last accepted announcements, for after a restart).
        self._latest: dict[str, int] = {}
        self._warned_unsigned: set[str] = set()

    def keys(self, root: str) -> list[str] | None:
        """Return the keys root `root` must be signed by; None while it may be unsigned."""
        if root in self.configured:
            return self.configured[root]
        if "*" in self.configured:
            return self.configured["*"]
        pinned = self.cache.pinned_key(root)
        return None if pinned is None else [pinned]

    def check(
        self, topic: str, root: str, obj: dict[str, Any] | None, last: dict[str, Any] | None, *, pin: bool
    ) -> str | None:
        """Return the key that signed `obj` (None: unsigned), or raise BadRequest if
        `obj` is not to be believed: unsigned, forged or under a key not trusted for
        `root`, or older than `last` (the announcement accepted last on `topic`).

        `obj` None is a bare clear. With `pin` (a root's own announcement), the
        first signed announcement of a root the configuration does not name
        pins its key.
        """
        signer = None if obj is None else verify(topic, obj)
        keys = self.keys(root)
        if keys is None:
            if signer is not None and pin:
                log.warning("trusting key %s for root %r from now on (first use)", signer, root)
                self.cache.pin_key(root, signer)
            elif signer is None and obj is not None and root not in self._warned_unsigned:
                self._warned_unsigned.add(root)
                log.warning("root %r is not signed: anyone who can publish on the broker can change it", root)
        elif obj is None:
            raise BadRequest(f"a bare clear of signed root {root!r}: a withdrawal must be a signed tombstone")
        elif signer not in keys:
            raise BadRequest(self._refusal(root, signer, keys))
        if signer is not None:
            seq = obj["seq"]
            latest = max(self._latest.get(topic, -1), -1 if last is None else last.get("seq", -1))
            if seq < latest:
                raise BadRequest(f"sequence number {seq} is older than {latest}: a replay")
            self._latest[topic] = seq
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
