"""This module holds the client's in-process cache of compressed chunks.

Chunks are kept by dataset, etag and chunk number, so that a chunk of one
version of a dataset is never taken for a chunk of another: what version is
current is the client's to know (see `client.Client`). The cache is bounded
by the bytes it holds and forgets the least recently used chunks first.

It is shared by the threads of one client (its caller's, its decoders and
its background fill), under one lock, ``ChunkCache._lock``, that guards
every field and is held for no I/O.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

Key = tuple[str, str, int]


class ChunkCache:
    """Compressed chunks, at most `budget` bytes of them, least recently used out first.

    A budget of 0 keeps nothing.
    """

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError(f"a chunk cache's budget cannot be negative: {budget}")
        self.budget = budget
        self.nbytes = 0
        self._chunks: OrderedDict[Key, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, key: Key) -> bool:
        return key in self._chunks

    def get(self, key: Key) -> bytes | None:
        """Return chunk `key` (dataset, etag, number), or None; it becomes the most recently used."""
        with self._lock:
            data = self._chunks.get(key)
            if data is not None:
                self._chunks.move_to_end(key)
            return data

    def put(self, key: Key, data: bytes) -> None:
        """Keep chunk `key`, forgetting the least recently used ones to stay within budget;
        a chunk larger than the whole budget is not kept."""
        if len(data) > self.budget:
            return
        with self._lock:
            old = self._chunks.pop(key, None)
            if old is not None:
                self.nbytes -= len(old)
            self._chunks[key] = data
            self.nbytes += len(data)
            while self.nbytes > self.budget:
                _, evicted = self._chunks.popitem(last=False)
                self.nbytes -= len(evicted)

    def forget(self, dataset: str, keep: str) -> None:
        """Forget the chunks of `dataset` of any etag but `keep`: they can no longer be read."""
        with self._lock:
            for key in [k for k in self._chunks if k[0] == dataset and k[1] != keep]:
                self.nbytes -= len(self._chunks.pop(key))
