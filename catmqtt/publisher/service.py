"""This module holds the publisher service: it scans one root, announces it on
MQTT and serves it over HTTP through the app of :mod:`.app`.

The constructor only builds objects; :meth:`Publisher.bind` makes the state
directory and binds the HTTP socket, :meth:`Publisher.start` scans the root and
starts the threads:

- the MQTT thread (paho's) runs ``_announce_all`` on every (re)connect and
  the announcer's ``message`` for each retained message of our root the
  broker replays;
- the watcher thread, and the timer thread of a rescan once unsettled files
  may have settled, run ``refresh``: a scan, then announcements of what changed;
- the HTTP worker threads run the views, which only call the root (see
  :mod:`.roots` for what guards its entries and chunks).

``_scan_lock`` guards scanning the root and ``_rescan`` (the pending timer);
the announcer's lock guards what we announced and the order of our
publications (see :mod:`catmqtt.announcer`). The two are never held
together: a scan's result is taken out of ``_scan_lock`` before it is
announced under the announcer's lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from .. import fsutil, signing
from ..announcer import Announcer
from ..mqtt import Node
from ..watch import Watcher
from ..web import Server
from .app import create_app
from .roots import open_root

# The publisher's log lines are named as its module was before it was split.
log = logging.getLogger(__package__)


class Publisher:
    """A running publisher: HTTP server plus MQTT announcements of one root."""

    def __init__(
        self, name: str, root_path: str | os.PathLike, settings: dict[str, Any], node_id: str | None = None
    ) -> None:
        self.settings = settings
        self.prefix = settings["prefix"]
        self.node_id = node_id or name
        # Opening a root only tells its kind; start() scans it.
        self.root = open_root(name, root_path, settings["statedir"], settings["settle"])
        self.app = create_app(self.root)
        # Set by bind(): the HTTP server and the URL it is reached at.
        self.server: Server | None = None
        self.url: str | None = None
        # Set by bind(): the key we sign with; by start(): our side of MQTT, and what
        # we announce through it.
        self.signer: signing.Signer | None = None
        self.node: Node | None = None
        self.announcer: Announcer | None = None
        # Scans run one at a time: the watcher's, and a later one while files are being written.
        self._scan_lock = threading.Lock()
        self._rescan: threading.Timer | None = None
        self._stopping = threading.Event()
        # Set by start(), unless watching is off.
        self.watcher: Watcher | None = None

    def bind(self) -> Publisher:
        """Load the signing key, make the state directory and bind the HTTP server's
        socket, which start() does if not done yet: call it first for a bad key or a
        busy port to fail before anything runs."""
        if self.server is None:
            if self.settings["sign_key"] is not None:
                self.signer = signing.load(self.settings["sign_key"])
            fsutil.make_statedir(self.settings["statedir"])
            self.server = Server.for_node(self.app, self.settings)
            self.url = self.settings["urlbase"] or self.server.url
        return self

    def start(self) -> Publisher:
        """Bind (before scanning, which may take a while: a busy port fails at once),
        scan the root, then serve it and announce it."""
        self.bind()
        self.root.scan()
        if self.root.unsettled:
            # Files written just before we started (`catmqtt up`'s sample) are
            # listed from the first announcement; later ones when they settle.
            time.sleep(self.settings["settle"])
            self.root.scan()
        self.announcer = Announcer(self.prefix, self.root.name, self.signer, log)
        self.node = self.announcer.node = Node.for_node(
            "publisher",
            self.node_id,
            self.settings,
            self.url,
            on_connect=self._announce_all,
            on_message=self._message,
            sign=None if self.signer is None else self.signer.sign,
        )
        self.server.start()
        self.node.start()
        if self.settings["watch"] != "off":
            self.watcher = Watcher(
                self.root.path, self.refresh, mode=self.settings["watch"], ignore=[self.root.statedir]
            ).start()
        self._rescan_if_unsettled()
        log.info(
            "publishing root %r (%d datasets) from %s at %s",
            self.root.name,
            len(self.root.entries),
            self.root.path,
            self.url,
        )
        return self

    def stop(self) -> None:
        """Stop watching, announcing and serving; what was not started is left alone."""
        if self.watcher is not None:
            self.watcher.stop()
        self._stopping.set()
        with self._scan_lock:
            rescan = self._rescan
        if rescan is not None:
            rescan.cancel()
            rescan.join()
        if self.node is not None:
            self.node.stop()
        if self.server is not None:
            self.server.stop()

    def _announce_all(self) -> None:
        """Announce the root and every dataset; runs on every (re)connect."""
        announcer = self.announcer
        with announcer.lock:
            announcer.subscribe()
            for path, entry in self.root.entries.items():
                announcer.announce(announcer.dataset_topic(path), entry.meta)
            announcer.announce(announcer.root_topic, self._root_payload())

    def refresh(self) -> None:
        """Scan the root again and announce what changed (the watcher calls this)."""
        self._refresh()
        self._rescan_if_unsettled()

    def _refresh(self) -> None:
        if self._stopping.is_set():
            return
        with self._scan_lock:
            old = self.root.entries
            old_extras = (self.root.groups, self.root.skipped)
            new = self.root.scan()
            extras = (self.root.groups, self.root.skipped)
        changed = [p for p in new if p not in old or old[p].meta != new[p].meta]
        gone = [p for p in old if p not in new]
        if not changed and not gone:
            if extras != old_extras:
                # Only what the root's announcement says of its groups or skipped items.
                with self.announcer.lock:
                    self.announcer.announce(self.announcer.root_topic, self._root_payload())
            return
        log.info("root %r: %d datasets new or changed, %d gone", self.root.name, len(changed), len(gone))
        announcer = self.announcer
        with announcer.lock:
            # Removals first: a renamed file is never listed under both names.
            for path in gone:
                announcer.withdraw(announcer.dataset_topic(path), {"path": path})
            for path in changed:
                announcer.announce(announcer.dataset_topic(path), new[path].meta)
            announcer.announce(announcer.root_topic, self._root_payload())

    def _rescan_if_unsettled(self) -> None:
        """Scan again once files being written may have settled (nothing else
        would tell us: the watcher has seen their last change already)."""
        with self._scan_lock:
            if self.root.unsettled and self._rescan is None and not self._stopping.is_set():
                self._rescan = threading.Timer(self.settings["settle"], self._rescan_now)
                self._rescan.daemon = True
                self._rescan.start()

    def _rescan_now(self) -> None:
        self._refresh()
        with self._scan_lock:
            self._rescan = None
        self._rescan_if_unsettled()

    def _root_payload(self) -> dict[str, Any]:
        return {
            "name": self.root.name,
            "url": self.url,
            "publisher": self.node_id,
            "datasets": len(self.root.entries),
            "etag": self.root.etag,
            "skipped": self.root.skipped,
            "groups": self.root.groups,
            "time": time.time(),
        }

    def _message(self, topic: str, payload: bytes) -> None:
        """Withdraw what we no longer serve; restore what someone else changed."""
        self.announcer.message(topic, payload, lambda path: path in self.root.entries)
