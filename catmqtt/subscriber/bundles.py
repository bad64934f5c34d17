"""This module makes the subscriber's offline bundles (``GET /api/bundle/...``): a
root, or a directory of it, as a ZIP file streamed as it is written (see
`catmqtt.bundle` for what a bundle holds).

A bundle holds an HTTP thread of the budget large answers share for as long
as it is sent (`Body`). Each dataset's file is built whole in the temporary
directory, as a download is (`Answers.whole_file`, within that budget), then
copied into the stream; one at a time, so that a bundle of any size takes
the room of its largest file. A dataset that cannot be had (its publisher offline, a
change under way, a file larger than the cache's budget), or with ``cached``
one not whole in the cache, is left out and named in the catalog's
``missing`` table with the reason, and the bundle goes on.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..bundle import CATALOG_NAME, ZipStream, member, write_catalog
from ..errors import Busy, CatmqttError
from ..schema import DatasetMeta
from ..web import cut_on_failure
from .answers import Answers
from .flights import Upstream
from .large import STREAM_MEMORY, TempFile

log = logging.getLogger(__name__)

# Times a dataset is tried again when large answers hold all the room they may.
BUSY_TRIES = 3


@dataclass(frozen=True)
class Plan:
    """What a bundle will hold: the root, the directory asked for, and its datasets."""

    root: str
    directory: str | None
    paths: list[str]
    cached: bool

    @property
    def filename(self) -> str:
        return "-".join([self.root, *(self.directory or "").strip("/").split("/")]).strip("-") + ".zip"


def plan(answers: Answers, root: str, directory: str | None, cached: bool) -> Plan:
    """Check what a bundle asks for (raising NotFound, NotSubscribed, BadRequest before
    anything is sent) and return its plan."""
    reader = answers.reader
    reader.root_of(root)
    return Plan(root, directory, reader.list(root, directory), cached)


class Body:
    """The body of a bundle: it holds an HTTP thread of the large answers' budget
    (taken when it is made, so that a subscriber busy with them says so at once,
    503), given back when it is closed, sent or not."""

    def __init__(self, answers: Answers, plan: Plan) -> None:
        self.answers = answers
        self.plan = plan
        self.grant = answers.budget.enter(STREAM_MEMORY)
        self._pieces = cut_on_failure(
            _stream(answers, plan), answers.reader.cache.dir, f"the bundle of {plan.root}"
        )

    def __iter__(self) -> Iterator[bytes]:
        return self._pieces

    def close(self) -> None:
        try:
            self._pieces.close()
        finally:
            self.grant.release()


def _stream(answers: Answers, plan: Plan) -> Iterator[bytes]:
    """Yield the bytes of the bundle `plan` describes, as they are written."""
    reader = answers.reader
    out = ZipStream()
    kept: list[tuple[DatasetMeta, list[str] | None]] = []
    missing: list[tuple[str, str]] = []
    for path in plan.paths:
        fullpath = f"{plan.root}/{path}"
        try:
            source = reader.lookup(fullpath)
            if plan.cached and reader.cache.chunks.digests(plan.root, path, source.meta) is None:
                missing.append((path, "not whole in the cache"))
                continue
            with _whole_file(answers, source) as f:
                # Those of the version the file holds, read while all of it is cached.
                digests = reader.digests(source)
                yield from out.add(member(plan.root, path), f)
            kept.append((source.meta, digests))
        except CatmqttError as exc:
            log.warning("bundle of %s: %s left out: %s", plan.root, fullpath, exc)
            missing.append((path, str(exc)))
    yield from _catalog(answers, plan, out, kept, missing)
    yield out.close()


def _whole_file(answers: Answers, source: Upstream) -> TempFile:
    """Return the dataset's whole file (the bundle holds its HTTP thread), waiting for
    room among large answers a few times."""
    for _ in range(BUSY_TRIES - 1):
        try:
            return answers.whole_file(source, thread=False)
        except Busy as exc:
            time.sleep(exc.retry_after)
    return answers.whole_file(source, thread=False)


def _catalog(
    answers: Answers,
    plan: Plan,
    out: ZipStream,
    kept: list[tuple[DatasetMeta, list[str] | None]],
    missing: list[tuple[str, str]],
) -> Iterator[bytes]:
    """Yield the bytes that add the bundle's catalog."""
    about = {"root": plan.root, "directory": plan.directory or "", "cached": str(plan.cached).lower()}
    about["made_by"] = f"catmqtt {__version__}"
    fd, name = tempfile.mkstemp(dir=answers.tmpdir, suffix=".sqlite")
    os.close(fd)
    tmp = Path(name)
    try:
        tmp.unlink()
        info = answers.reader.root_info(plan.root)
        # The announcement, not how this subscriber sees the root now.
        announced = {key: value for key, value in info.items() if key not in ("online", "subscribed")}
        write_catalog(tmp, plan.root, announced, kept, missing, about)
        with open(tmp, "rb") as f:
            yield from out.add(CATALOG_NAME, f)
    finally:
        tmp.unlink(missing_ok=True)
