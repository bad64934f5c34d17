"""This module watches a root for changes: inotify through watchdog, or polling.

Bursts of events (a file written in many pieces, a directory copied in) are
debounced into one call of the callback once they settle.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

log = logging.getLogger(__name__)


class Watcher:
    """Call `on_change()` when what is under `target` changes.

    Parameters
    ----------
    target : Path
        A directory (watched recursively) or a file (its directory is watched).
    on_change : callable
        Called on the watcher's own thread, `quiet` seconds after the last
        event of a burst (or every `longest` seconds while events keep coming).
    mode : str
        ``"auto"`` (inotify, falling back to polling) or ``"poll"``.
    ignore : iterable of Path
        Paths whose events do not count (a state directory inside the root).
    """

    def __init__(
        self,
        target: Path,
        on_change: Callable[[], None],
        *,
        mode: str = "auto",
        ignore: Iterable[Path] = (),
        quiet: float = 0.1,
        longest: float = 2.0,
        poll_interval: float = 1.0,
    ) -> None:
        self.target = target
        self._on_change = on_change
        self._ignore = tuple(os.fspath(p) for p in ignore)
        self._quiet, self._longest, self._poll_interval = quiet, longest, poll_interval
        self._mode = mode
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._observer: Observer | PollingObserver | None = None
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def start(self) -> Watcher:
        handler = _Handler(self)
        directory = self.target if self.target.is_dir() else self.target.parent
        for observer_class in [Observer, PollingObserver] if self._mode == "auto" else [PollingObserver]:
            observer = (
                observer_class(timeout=self._poll_interval)
                if observer_class is PollingObserver
                else observer_class()
            )
            try:
                observer.schedule(handler, os.fspath(directory), recursive=self.target.is_dir())
                observer.start()
            except OSError as exc:
                log.warning("cannot watch %s with inotify (%s); polling instead", directory, exc)
                continue
            self._observer = observer
            break
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._pending.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        self._thread.join(timeout=5)

    def _relevant(self, path: str) -> bool:
        if any(path == p or path.startswith(p + os.sep) for p in self._ignore):
            return False
        return self.target.is_dir() or path == os.fspath(self.target)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._pending.wait()
            if self._stop.is_set():
                return
            first = time.monotonic()
            # Wait for the burst to settle, but not forever.
            while True:
                self._pending.clear()
                if self._stop.wait(self._quiet) or not self._pending.is_set():
                    break
                if time.monotonic() - first > self._longest:
                    break
            if self._stop.is_set():
                return
            try:
                self._on_change()
            except Exception:
                log.exception("error while applying changes of %s", self.target)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        if any(p and self._watcher._relevant(os.fsdecode(p)) for p in paths):
            self._watcher._pending.set()
