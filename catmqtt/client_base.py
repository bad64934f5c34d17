"""This module holds the base of catmqtt's Python client: `Connection`, one HTTP session
to a subscriber, and the calls that read no dataset.

`Connection` logs in and turns every failure into a catmqtt.errors exception
(`Connection._request`); its calls manage the subscriber: the roots it knows
and follows, the nodes it hears of, its counters, and, on an edge node, its
pins and the roots it forgets. `client.Client` adds reading datasets to it;
`default_urlbase` and `credentials` say which subscriber, and as whom.

It needs only requests, or, for the command line, only the standard library
(`sessions.transport`). A connection may be called from several threads: its
session is shared by them, and it keeps no other state once made (a login
replaces the session's Authorization header whole).
"""

from __future__ import annotations

import time
from typing import Any, Self
from urllib.parse import quote

from .errors import BadRequest, NotFound, Unauthorized, Unavailable, from_status
from .sessions import transport
from .wire import error_from_json, quote_dataset

# Seconds between looks at a pin being fetched (Connection.pin with wait).
PIN_POLL = 0.5


class Connection:
    """An HTTP session to one subscriber, with its credentials: the base of `client.Client`,
    which makes it and says what the parameters are."""

    def __init__(
        self,
        urlbase: str | None,
        *,
        user: str | None,
        password: str | None,
        token: str | None,
        timeout: Any,
        plain_http: bool,
    ) -> None:
        self.urlbase = (urlbase or default_urlbase()).rstrip("/")
        self.timeout = timeout
        self.session, self._environment, self.network_errors, self._timeouts = transport(
            self.urlbase, plain=plain_http
        )
        self.user = user
        self._password = password
        if token:
            self._use_token(token)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _use_token(self, token: str) -> None:
        self.session.headers["Authorization"] = f"Bearer {token}"
        # A netrc entry's Basic credentials would replace the token.
        self._environment.pop("auth", None)

    def login(self) -> str:
        """Log in as `user` with `password`; return the session token, which later requests send."""
        if self.user is None:
            raise Unauthorized(
                f"the subscriber at {self.urlbase} wants a user (or a token) and none was given"
            )
        login = {"username": self.user, "password": self._password or ""}
        try:
            response = self._send("POST", f"{self.urlbase}/auth/login", json=login)
        except Unauthorized as exc:
            raise Unauthorized(f"{exc} ({self.user} at {self.urlbase})") from None
        token = response.json()["token"]
        self._use_token(token)
        return token

    def _request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
        """Send a request, logging in first if the subscriber asks for it and the client
        has a user; turn every failure into a catmqtt.errors exception."""
        url = f"{self.urlbase}/api/{endpoint}"
        try:
            return self._send(method, url, **kwargs)
        except Unauthorized:
            if self.user is None and "Authorization" in self.session.headers:
                raise
            if self.user is None:
                raise Unauthorized(
                    f"the subscriber at {self.urlbase} has accounts: give a user and password, or a token"
                ) from None
        # No session yet, or an expired one.
        self.login()
        return self._send(method, url, **kwargs)

    def _send(self, method: str, url: str, **kwargs: Any) -> Any:
        """Send a request through the session; return its response (a requests or a
        `plainhttp.Response`), or raise the catmqtt.errors exception its failure or
        its error status stands for."""
        try:
            response = self.session.request(method, url, timeout=self.timeout, **self._environment, **kwargs)
        except self._timeouts:
            raise Unavailable(
                f"the subscriber at {self.urlbase} did not answer in time", status=504
            ) from None
        except self.network_errors:
            raise Unavailable(
                f"cannot reach the subscriber at {self.urlbase}: is 'catmqtt sub' (or 'catmqtt up') running?"
            ) from None
        if 300 <= response.status_code < 400 and response.status_code != 304:
            # requests follows redirects; a plain session does not.
            response.close()
            location = response.headers.get("Location", "elsewhere")[:200]
            raise Unavailable(
                f"the subscriber at {self.urlbase} sends {url} to {location}: give its new address",
                status=502,
            )
        if response.status_code >= 400:
            try:
                error = error_from_json(response.json(), response.status_code)
            except ValueError:
                error = None
            raise error or from_status(
                response.status_code, f"{response.status_code} {response.reason} from {url}"
            )
        return response

    def get_roots(self) -> dict[str, dict[str, Any]]:
        """Return the known roots: ``{name: {"name", "url", "online", "subscribed"}}``."""
        return self._request("GET", "roots").json()

    def subscribe(self, root: str) -> str:
        """Ask the subscriber to follow `root`; returns ``"Ok"``."""
        return self._request("POST", f"subscribe/{quote(root, safe='')}").json()

    def unsubscribe(self, root: str) -> str:
        """Ask the subscriber to stop following `root`; returns ``"Ok"``."""
        return self._request("POST", f"unsubscribe/{quote(root, safe='')}").json()

    def nodes(self) -> list[dict[str, Any]]:
        """Return the status of each node the subscriber hears of, sorted by role and id:
        ``{"role", "id", "status", "url", ...}`` (status ``online``, ``offline`` or ``lost``)."""
        return self._request("GET", "nodes").json()

    def stats(self) -> dict[str, Any]:
        """Return the subscriber's counters since it started (``/api/stats``)."""
        return self._request("GET", "stats").json()

    def pin(self, path: str, *, wait: bool = False, progress: bool = False) -> Any:
        """Pin ``ROOT[/PATH]`` (subscribing to ROOT): the subscriber fetches it whole in the
        background and keeps it cached. Returns ``"Ok"``; with `wait`, once all of it is
        cached, the pin as `pins` lists it (with `progress`, a progress bar on standard
        error follows its bytes cached). Raises Unavailable if something stops it (its
        publisher offline, a failure): the subscriber goes on trying meanwhile."""
        ok = self._request("POST", f"pin/{quote_dataset(path.strip('/'), directory=True)}").json()
        if not wait:
            return ok
        from .progress import bar

        key = path.strip("/").partition("/")[::2]
        with bar(f"pin {path}", None, show=progress) as drawn:
            total, cached = None, 0
            while True:
                pin = next((p for p in self.pins() if (p["root"], p["path"]) == key), None)
                if pin is None:
                    raise NotFound(f"{path} is no longer pinned")
                if pin["total"] != total or pin["cached"] < cached:
                    # A total known, or changed: exact once a plain file is cached, another
                    # when a dataset changes or comes.
                    drawn.reset(pin["total"])
                    total, cached = pin["total"], 0
                drawn.update(pin["cached"] - cached)
                cached = pin["cached"]
                if pin["done"]:
                    return pin
                if pin["error"]:
                    raise Unavailable(f"{path} is not cached whole: {pin['error']}")
                time.sleep(PIN_POLL)

    def unpin(self, path: str) -> str:
        """Unpin ``ROOT[/PATH]``, as pinned; returns ``"Ok"``."""
        return self._request("POST", f"unpin/{quote_dataset(path.strip('/'), directory=True)}").json()

    def pins(self) -> list[dict[str, Any]]:
        """Return the pins: root, path, datasets, bytes cached and in total, done, error."""
        return self._request("GET", "pins").json()

    def forget(self, root: str) -> str:
        """Unsubscribe from `root`, drop its cache, and forget it unless its publisher is online."""
        return self._request("POST", f"forget/{quote(root, safe='')}").json()


def default_urlbase() -> str:
    """Return the subscriber a client talks to when given none, found as the
    command line finds it: ``$CATMQTT_SUB``, else ``client.sub`` (or
    ``subscriber.urlbase``) of ``./catmqtt.yaml``, else http://127.0.0.1:8002."""
    # Imported here: the configuration file needs yaml, which `import catmqtt` does not load.
    from . import config

    return config.client_sub(config.load(None), None)


def credentials(user_auth: dict[str, str] | None) -> dict[str, str | None]:
    """Return `client.Client`'s keyword arguments for Caterva2's ``user_auth``:
    ``{"username": ..., "password": ...}``, or ``{"token": ...}``."""
    if not user_auth:
        return {}
    if not isinstance(user_auth, dict) or not ({"username", "token"} & set(user_auth)):
        raise BadRequest('user_auth must be {"username": ..., "password": ...} or {"token": ...}')
    return {
        "user": user_auth.get("username"),
        "password": user_auth.get("password"),
        "token": user_auth.get("token"),
    }
