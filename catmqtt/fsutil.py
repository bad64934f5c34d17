"""This module holds what nodes do with their state directories, without the
weight of Blosc2 or numpy (the broker uses it too)."""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

from .errors import InsufficientStorage

# Marks a directory holding a catmqtt node's state (caches, logs, databases).
STATE_MARKER = ".catmqtt-state"
# A write that fails while its disk has less than this free failed for want of
# space: no write of ours is larger (a chunk, a slab of a large selection).
LOW_SPACE = 64 << 20


def make_statedir(path: Path) -> Path:
    """Create a node's state directory, marked so that no publisher serves it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / STATE_MARKER).touch()
    return path


def out_of_space(exc: BaseException, statedir: Path) -> bool:
    """Tell whether `exc`, raised while writing into `statedir`, comes of its disk being full.

    Blosc2 raises a bare RuntimeError when a write fails: then the disk's
    free space tells.
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error) and exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
        return True
    if not isinstance(exc, OSError | RuntimeError | sqlite3.Error):
        return False
    try:
        return shutil.disk_usage(statedir).free < LOW_SPACE
    except OSError:
        return False


def no_space(statedir: Path) -> InsufficientStorage:
    """Return the error that says the disk of `statedir` is full."""
    return InsufficientStorage(
        f"no space left on device in {statedir}: free some space there (what is cached is still served)"
    )
