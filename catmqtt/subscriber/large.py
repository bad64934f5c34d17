"""This module holds what large answers share: a budget of HTTP threads,
memory and temporary disk, and the threads that build them.

A large answer (a selection over `PIECE` bytes, a whole download) enters the
`Budget` before anything is sent, and gets a 503 (`Busy`) when it cannot;
it is built on a `Builders` thread, at a lower priority than the HTTP
threads, so that small reads are answered promptly meanwhile.

Threads: HTTP threads enter and leave the budget, under its one lock
(`Budget._lock`, a condition); each builder thread runs the work of one
answer at a time and touches only that answer's queue. A `Grant` is given
back by whoever holds the answer last: the HTTP thread, or the closer
thread of `Builders` once a sent file is closed.
"""

from __future__ import annotations

import io
import os
import queue
import random
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

from ..errors import Busy, TooLarge

# Selections over this many bytes are large; a Blosc2 answer is built in pieces this size.
PIECE = 8 << 20
# A .npy stream is made and sent in pieces this size: Blosc2 holds the GIL
# while it decodes one (about 20 ms for 8 MiB, long enough to hold up every
# small request behind it).
STREAM_PIECE = 1 << 20
# What a .npy stream holds: the piece being sent, the one ready, the one being made.
STREAM_MEMORY = 3 * STREAM_PIECE
# What building a Blosc2 answer holds: a piece, and Blosc2's buffers for it.
BUILD_MEMORY = 2 * PIECE
# How long a large request waits for its share of the budget; when to ask
# again (Retry-After): RETRY_AFTER seconds plus up to RETRY_SPREAD - 1 more.
BUSY_WAIT = 5.0
RETRY_AFTER = 5
RETRY_SPREAD = 5
# Builder threads' niceness, above the HTTP threads' (Linux, where it is per thread).
NICENESS = 10

T = TypeVar("T")


class Budget:
    """HTTP threads, bytes in memory and bytes of temporary disk for large answers, shared by all.

    A large request holds an HTTP thread while it waits and while it is
    answered: at most `threads` of them at once, so that the other HTTP
    threads stay free for small requests; one more is told at once to come
    back later. Inside, it waits up to `wait` seconds for its memory and disk.
    """

    def __init__(self, threads: int, memory: int, disk: int, wait: float = BUSY_WAIT) -> None:
        self.limits = {"threads": threads, "memory": memory, "disk": disk}
        self.wait = wait
        self._lock = threading.Condition()
        self._used = dict.fromkeys(self.limits, 0)
        self._peak = dict.fromkeys(self.limits, 0)
        self._busy = 0

    def enter(self, memory: int, disk: int = 0, *, thread: bool = True) -> Grant:
        """Take an HTTP thread, `memory` and `disk` bytes; raise Busy if they are not free in time.
        Without `thread`, the caller holds a grant of an HTTP thread already (a bundle,
        for each file it builds)."""
        if disk > self.limits["disk"]:
            raise TooLarge(
                f"the answer needs {disk} bytes of temporary disk, over this subscriber's max_temp_bytes"
                f" ({self.limits['disk']}): raise it, or fetch the data as .npy (Accept: application/x-npy)"
            )
        threads = int(thread)
        with self._lock:
            if thread and self._used["threads"] >= self.limits["threads"]:
                self._busy += 1
                raise _busy("every HTTP thread for large answers is taken")
            self._take({"threads": threads})
            if not self._lock.wait_for(lambda: self._fits(memory, disk), self.wait):
                self._give({"threads": threads})
                self._busy += 1
                raise _busy("large answers hold all the memory or disk they may")
            self._take({"memory": memory, "disk": disk})
        return Grant(self, {"threads": threads, "memory": memory, "disk": disk})

    def stats(self) -> dict[str, int]:
        """Return what is in use, its peaks and limits, and how many requests were told to wait."""
        with self._lock:
            figures = {f"{key}_used": value for key, value in self._used.items()}
            figures.update({f"{key}_peak": value for key, value in self._peak.items()})
            figures.update({f"{key}_limit": value for key, value in self.limits.items()})
            figures["busy"] = self._busy
            return figures

    def _fits(self, memory: int, disk: int) -> bool:
        # One answer alone may take more memory than the limit: it is never refused for it.
        used = self._used
        memory_fits = used["memory"] == 0 or used["memory"] + memory <= self.limits["memory"]
        return memory_fits and used["disk"] + disk <= self.limits["disk"]

    def _take(self, amounts: dict[str, int]) -> None:
        for key, amount in amounts.items():
            self._used[key] += amount
            self._peak[key] = max(self._peak[key], self._used[key])

    def _give(self, amounts: dict[str, int]) -> None:
        for key, amount in amounts.items():
            self._used[key] -= amount
        self._lock.notify_all()


def _busy(why: str) -> Busy:
    # Clients told to wait all as long would come back all at once.
    wait = RETRY_AFTER + random.randrange(RETRY_SPREAD)
    return Busy(f"the subscriber is busy: {why}; try again in {wait} s", wait)


class Grant:
    """The share of the budget one answer holds; given back in parts or all at once."""

    def __init__(self, budget: Budget, held: dict[str, int]) -> None:
        self._budget = budget
        self._held = held

    def keep_only_disk(self, nbytes: int) -> None:
        """Give back the thread and the memory, and keep `nbytes` of disk (an answer's file, built)."""
        with self._budget._lock:
            held = self._held
            self._budget._give({"threads": held["threads"], "memory": held["memory"]})
            self._budget._give({"disk": held["disk"] - nbytes})
            self._held = {"threads": 0, "memory": 0, "disk": nbytes}

    def release(self) -> None:
        """Give back everything; calling it again does nothing."""
        with self._budget._lock:
            self._budget._give(self._held)
            self._held = dict.fromkeys(self._held, 0)


class TempFile(io.FileIO):
    """A built answer's file, already unlinked: closing it gives back its grant.

    The last close of an unlinked file frees its blocks, which takes a while
    for a large one (0.25 s for 300 MB written to disk, more on a busy disk):
    it is done on `closer`'s thread, not on the caller's (waitress's I/O
    thread, which every connection waits on).
    """

    def __init__(self, path: Path, grant: Grant, closer: ThreadPoolExecutor) -> None:
        super().__init__(path, "rb")
        self._grant = grant
        self._closer = closer
        self._closing = False

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._closer.submit(self._close)

    def _close(self) -> None:
        try:
            super().close()
        finally:
            self._grant.release()


def _lower_priority() -> None:
    # Elsewhere the niceness is the whole process's: there, builders keep the HTTP threads' priority.
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)


class Builders:
    """The threads that build large answers, at a lower priority than the HTTP threads."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="large", initializer=_lower_priority)
        # Files are built one at a time: Blosc2 holds the GIL while it copies a
        # chunk (a few ms), and several builds at once left small requests
        # little else.
        self._files = ThreadPoolExecutor(1, thread_name_prefix="large-file", initializer=_lower_priority)
        # Closes the files of answers sent (see TempFile).
        self.closer = ThreadPoolExecutor(1, thread_name_prefix="large-close")

    def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run `func(*args)` on a builder thread; return what it returns, or raise what it raises."""
        return self._pool.submit(func, *args).result()

    def build(self, func: Callable[..., T], *args: Any) -> T:
        """Run `func(*args)`, which writes a file, after the files before it; as `run`."""
        return self._files.submit(func, *args).result()

    def stream(self, pieces: Iterable[bytes | memoryview]) -> Stream:
        """Return the pieces of `pieces`, made on a builder thread one piece ahead of the reader."""
        return Stream(self._pool, pieces)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._files.shutdown(wait=False, cancel_futures=True)
        self.closer.shutdown(wait=True)


_END = object()


class Stream:
    """Pieces made on a builder thread and read on another, one ahead; closing it stops the maker.

    A failure of the maker is raised to the reader when it reaches it.
    """

    def __init__(self, pool: ThreadPoolExecutor, pieces: Iterable[bytes | memoryview]) -> None:
        self._ready: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._maker = pool.submit(self._make, iter(pieces))

    def _make(self, pieces: Iterator[bytes | memoryview]) -> None:
        # Once stopped, the reader takes one piece out of the queue: a put never waits forever.
        try:
            for piece in pieces:
                self._ready.put(piece)
                if self._stop.is_set():
                    return
            self._ready.put(_END)
        except Exception as exc:
            self._ready.put(exc)

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> bytes | memoryview:
        item = self._ready.get()
        if item is _END:
            self._ready.put(_END)
            raise StopIteration
        if isinstance(item, Exception):
            self._ready.put(_END)
            raise item
        return item

    def close(self) -> None:
        """Stop the maker and wait for it to finish its piece."""
        self._stop.set()
        try:
            self._ready.get_nowait()
        except queue.Empty:
            pass
        wait([self._maker])
