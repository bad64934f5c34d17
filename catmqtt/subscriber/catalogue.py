"""This module holds the catalogue of roots a subscriber knows: each root's last
announcement and whether it is subscribed to, the key each root was first
announced under, and the last signed tombstone believed on each topic.

Threads: the MQTT thread records announcements (through `Cache.set_root`,
which forgets chunks in the same transaction), first keys and tombstones
(`trust`); HTTP threads subscribe and unsubscribe and list roots; readers ask
for a root's URL. ``Index.lock`` guards ``Catalogue._roots`` (the roots
table, kept in memory and written through); no other lock is taken under it.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..errors import NotFound
from ..schema import RootInfo
from .index import Index, unusable


class Catalogue:
    """The roots, first keys and tombstones in the index; `load` reads them."""

    def __init__(self, index: Index, roots: dict[str, dict[str, Any]]) -> None:
        self.index = index
        # {name: {"info": announcement, "subscribed": bool}}, under index.lock.
        self._roots = roots

    @classmethod
    def load(cls, index: Index) -> Catalogue:
        try:
            rows = index.query("SELECT name, info, subscribed FROM roots")
        except sqlite3.DatabaseError as exc:
            raise unusable(index.path, exc) from None
        return cls(
            index, {name: {"info": json.loads(info), "subscribed": bool(sub)} for name, info, sub in rows}
        )

    def record_root(self, db: sqlite3.Connection, name: str, info: RootInfo | None) -> None:
        """Record the announcement of root `name` (None forgets the root), in the
        caller's transaction `db` (see `Index.transaction`)."""
        if info is None:
            # A subscribed root stays known (offline), with its subscription
            # and cache: a cleared announcement must not lose them.
            if not self._roots.get(name, {}).get("subscribed"):
                db.execute("DELETE FROM roots WHERE name=?", (name,))
                self._roots.pop(name, None)
            return
        db.execute(
            "INSERT INTO roots (name, info) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET info=excluded.info",
            (name, json.dumps(info)),
        )
        old = self._roots.get(name)
        self._roots[name] = {"info": info, "subscribed": False if old is None else old["subscribed"]}

    def url(self, name: str) -> str | None:
        """Return the URL root `name` is served from, None if it is not known."""
        with self.index.lock:
            return self._roots.get(name, {}).get("info", {}).get("url")

    def roots(self) -> dict[str, dict[str, Any]]:
        """Return {name: {"info": announcement, "subscribed": bool}}, sorted by name."""
        with self.index.lock:
            return {name: dict(self._roots[name]) for name in sorted(self._roots)}

    def root(self, name: str) -> dict[str, Any]:
        """Return one root as `roots` does, or raise NotFound."""
        with self.index.lock:
            root = self._roots.get(name)
        if root is None:
            raise NotFound(f"no root {name!r} is known (see 'catmqtt roots')")
        return dict(root)

    def set_subscribed(self, name: str, subscribed: bool) -> None:
        with self.index.lock:
            self.index.query("UPDATE roots SET subscribed=? WHERE name=?", (int(subscribed), name))
            if name in self._roots:
                self._roots[name]["subscribed"] = subscribed

    def subscribed(self) -> list[str]:
        with self.index.lock:
            return sorted(name for name, root in self._roots.items() if root["subscribed"])

    def first_key(self, name: str) -> str | None:
        """Return the key of the first announcement of root `name` ("" if it was
        unsigned), None while none was believed."""
        rows = self.index.query("SELECT key FROM keys WHERE root=?", (name,))
        return rows[0][0] if rows else None

    def set_first_key(self, name: str, key: str) -> None:
        """Record the key of the first announcement of root `name` ("" if unsigned),
        unless one is recorded already."""
        self.index.query("INSERT OR IGNORE INTO keys VALUES (?, ?)", (name, key))

    def tombstone(self, topic: str) -> tuple[str, int] | None:
        """Return the key and sequence number of the last signed tombstone believed on `topic`."""
        rows = self.index.query("SELECT key, seq FROM tombstones WHERE topic=?", (topic,))
        return rows[0] if rows else None

    def set_tombstone(self, topic: str, key: str, seq: int) -> None:
        self.index.query("INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?)", (topic, key, seq))
