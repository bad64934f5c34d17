"""This module makes a client's HTTP session to one base URL: a requests session
given, once, what requests would read from the environment on every request
(proxies, a CA bundle, netrc credentials), or, for the command line, a
`plainhttp.Session` where requests would add nothing."""

from __future__ import annotations

import os
from typing import Any, NamedTuple
from urllib.parse import urlsplit

# The netrc files requests reads in the home directory (requests.utils.NETRC_FILES).
NETRC_FILES = (".netrc", "_netrc")


class Transport(NamedTuple):
    """A session, with what it needs and fails with."""

    # A requests.Session, or a plainhttp.Session.
    session: Any
    # Keyword arguments of each request (see `environment`).
    settings: dict[str, Any]
    # What a request, or a read of its body, fails with when the network does; and
    # those of them that are timeouts.
    errors: tuple[type[BaseException], ...]
    timeouts: tuple[type[BaseException], ...]


def transport(url: str, *, plain: bool) -> Transport:
    """Return a session for requests to `url`: with `plain`, a `plainhttp.Session`
    if requests would add nothing to them (`url` is ``http://``, and the
    environment names no proxy and no netrc file), else a requests session."""
    if plain and urlsplit(url).scheme == "http" and not _netrc_files():
        # Imported here: with no proxy, nor requests either.
        from urllib.request import getproxies

        if not getproxies():
            from . import plainhttp

            return Transport(plainhttp.Session(), {}, plainhttp.ERRORS, (TimeoutError,))
    import requests
    import urllib3

    session = requests.Session()
    session.trust_env = False
    errors = (requests.RequestException, OSError, urllib3.exceptions.HTTPError)
    return Transport(session, environment(url), errors, (requests.Timeout,))


def environment(url: str) -> dict[str, Any]:
    """Return the proxies, CA bundle and netrc credentials that requests takes
    from the environment for `url`, as keyword arguments of a request.

    requests reads them again for every request, which costs about 0.6 ms of
    a 2 ms request on loopback; a session with ``trust_env = False`` given
    these once per base URL behaves the same for less (environment changes
    made later are not seen).
    """
    import requests

    with requests.Session() as probe:
        settings = probe.merge_environment_settings(url, {}, None, None, None)
    return {"proxies": settings["proxies"], "verify": settings["verify"], "auth": _netrc_auth(url)}


def _netrc_files() -> list[str]:
    """Return the netrc files requests would read (``$NETRC``, else those of the home
    directory) that exist."""
    netrc = os.environ.get("NETRC")
    names = [netrc] if netrc is not None else [f"~/{name}" for name in NETRC_FILES]
    return [name for name in names if os.path.exists(os.path.expanduser(name))]


def _netrc_auth(url: str) -> tuple[str, str] | None:
    """Return what ``requests.utils.get_netrc_auth`` does, without importing the
    netrc module (a millisecond of a new process's first read) when there is
    no netrc file to read."""
    if not _netrc_files():
        return None
    from requests.utils import get_netrc_auth

    return get_netrc_auth(url)
