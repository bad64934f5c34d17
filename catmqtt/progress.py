"""This module draws the progress bars of long commands (``download``, ``pin
--wait``): on standard error when it is a terminal, and nothing at all
otherwise, so that scripts and pipes see exactly what they saw without.

tqdm is imported only when a bar is drawn: the other commands do not pay
for it at start-up.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Progress(Protocol):
    """What a long command tells its bar."""

    def update(self, n: int) -> object:
        """Add `n` units done."""

    def reset(self, total: int | None = None) -> object:
        """Start again from zero, with a new total (None: unknown)."""


class _Quiet:
    """The bar when nothing is drawn."""

    def update(self, n: int) -> None:
        pass

    def reset(self, total: int | None = None) -> None:
        pass


def on_terminal() -> bool:
    """Whether a bar would be drawn: standard error is a terminal."""
    return sys.stderr.isatty()


@contextmanager
def bar(description: str, total: int | None, show: bool | None = None) -> Iterator[Progress]:
    """Yield a bar of `total` bytes (None: unknown) named `description`.

    `show` draws it (True), or not (False); by default, when standard error
    is a terminal. The bar is left on the screen when the block ends.
    """
    if not (on_terminal() if show is None else show):
        yield _Quiet()
        return
    from tqdm import tqdm

    with tqdm(
        total=total,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        dynamic_ncols=True,
    ) as drawn:
        yield drawn
