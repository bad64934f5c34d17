"""This module contains the set of catmqtt's exceptions.

Every error a user can cause is one of these; the HTTP servers map them to
status codes in one place and the client maps status codes back to them.
"""

from __future__ import annotations


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


class NotFound(CatmqttError, KeyError):
    """The root, dataset or directory does not exist."""

    status = 404

    # KeyError.__str__ would quote the message.
    __str__ = CatmqttError.__str__


class NotSubscribed(CatmqttError):
    """The root exists but this subscriber does not follow it."""

    status = 409


class Changed(CatmqttError):
    """The dataset changed since the metadata a request relied on: read it again."""

    status = 412


class TooLarge(CatmqttError, ValueError):
    """The request asks for more data than the server is willing to build."""

    status = 413


class Unavailable(CatmqttError, ConnectionError):
    """A publisher, subscriber or broker cannot be reached."""

    status = 503


class Busy(Unavailable):
    """The server has no room for the request now: ask again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, status=503)
        self.retry_after = retry_after


class InsufficientStorage(CatmqttError):
    """The disk that holds a node's state directory is full."""

    status = 507


class ConfigError(CatmqttError, ValueError):
    """The configuration file or a command-line option is invalid."""

    status = 400


_BY_STATUS = {
    400: BadRequest,
    404: NotFound,
    409: NotSubscribed,
    412: Changed,
    413: TooLarge,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
    507: InsufficientStorage,
}


def from_status(status: int, message: str) -> CatmqttError:
    """Return the exception that stands for an HTTP error `status`."""
    cls = _BY_STATUS.get(status, CatmqttError)
    return cls(message, status=status)
