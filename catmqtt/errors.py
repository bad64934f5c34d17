"""This module contains the set of catmqtt's exceptions.

Every error a user can cause is one of these; the HTTP servers map them to
status codes in one place and the client maps status codes back to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class CatmqttError(Exception):
    """The root of catmqtt's exceptions."""

    status = 500

    def __init__(self, message: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class BadRequest(CatmqttError, ValueError):
    """The request is malformed: a bad slice, path, option or chunk index."""

    status = 400


class OutOfRange(BadRequest, IndexError):
    """An index is past the end of its axis, or there are more indices than axes."""


class Unauthorized(CatmqttError):
    """The subscriber wants credentials (a user's password, a token), or those given are wrong."""

    status = 401


class Forbidden(CatmqttError):
    """The credentials are good but do not allow this: an admin's command, a root not shared,
    a request from another site."""

    status = 403


class NotFound(CatmqttError, KeyError):
    """The root, dataset or directory does not exist."""

    status = 404

    # KeyError.__str__ would quote the message.
    __str__ = CatmqttError.__str__


class NotSubscribed(CatmqttError):
    """The root exists but this subscriber does not follow it."""

    status = 409


class TooLarge(CatmqttError, ValueError):
    """The request asks for more data than the server is willing to build."""

    status = 413


class TooManyRequests(CatmqttError):
    """Too many failed logins from one client address: ask again after `retry_after` seconds
    (None where it is not known: a client's copy of the error)."""

    status = 429

    def __init__(self, message: str = "", retry_after: int | None = None, status: int | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class Unavailable(CatmqttError, ConnectionError):
    """A publisher, subscriber or broker cannot be reached."""

    status = 503


class Busy(Unavailable):
    """The server has no room for the request now: ask again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, status=503)
        self.retry_after = retry_after


class Changed(Unavailable):
    """A dataset changed while being read, or since the metadata a request relied on.

    `path` names it (``ROOT/PATH`` on a subscriber, the root's path on a
    publisher). Reading it again, metadata first, is the remedy: the client
    does so by itself. The status is 503 for a read that a change cut
    short, 412 for a request that named an older version (``etag=``).
    """

    def __init__(self, path: str, message: str = "", status: int | None = None) -> None:
        super().__init__(message or f"{path} changed while being read; try again", status)
        self.path = path


class InsufficientStorage(CatmqttError):
    """The disk that holds a node's state directory is full."""

    status = 507


class ConfigError(CatmqttError, ValueError):
    """The configuration file or a command-line option is invalid."""

    status = 400


_BY_STATUS = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: NotSubscribed,
    413: TooLarge,
    429: TooManyRequests,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
    507: InsufficientStorage,
}


def from_status(status: int, message: str, changed: str | None = None) -> CatmqttError:
    """Return the exception that stands for an HTTP error `status`; `changed`
    is the path that an error body names as changed (see `Changed`)."""
    if changed is not None or status == 412:
        return Changed(changed or "", message, status)
    cls = _BY_STATUS.get(status, CatmqttError)
    return cls(message, status=status)


class DownloadFailed(CatmqttError):
    """Some datasets of a root or directory could not be saved (see `Client.download`).

    `failures` maps each of them (``ROOT/PATH``) to its error (a
    `catmqtt.errors` exception: ``NotFound``, ``Unavailable``,
    ``InsufficientStorage`` for a full disk, ``BadRequest`` for a name that
    is not safe here...); `saved` lists the paths written, which are kept.
    The status is that of the first failure.
    """

    def __init__(self, path: str, saved: list[Path], failures: dict[str, CatmqttError]) -> None:
        self.path = path
        self.saved = saved
        self.failures = failures
        reasons = "; ".join(f"{dataset}: {error}" for dataset, error in failures.items())
        super().__init__(
            f"{len(failures)} of {len(failures) + len(saved)} datasets of {path} could not be saved"
            f" ({reasons})",
            status=next(iter(failures.values())).status,
        )
