"""This module guards the subscriber's HTTP API: which host names it answers
for (against DNS rebinding), which state-changing requests it refuses as
cross-site (CSRF), and, with accounts on, who may do what: logins (failed
ones counted, see `throttle`), tokens, admins, per-root access.
`Guard.install` puts its checks before every view and adds the ``/auth``
endpoints.

Threads: the HTTP threads run the checks; a `Guard` is not changed after it
is made, its `Accounts` gives each thread a connection of its own, and its
`Logins` keeps its counts under a lock of its own.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, g, jsonify, redirect, request

from ..config import DEFAULTS
from ..errors import BadRequest, CatmqttError, Forbidden, TooLarge, Unauthorized
from ..web import error_response
from . import page
from .accounts import Accounts, Principal
from .throttle import Logins
from .tokens import AGENT_PREFIX, BadToken, parse_password, parse_token, parse_username

log = logging.getLogger(__name__)

COOKIE = "catmqtt_session"
MAX_LOGIN_BYTES = 4096
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# Endpoints that answer without credentials (the web page's files hold no data).
OPEN = {"auth.login", "auth.jwt_login", "auth.login_page", "subscriber.static_file"}
# POSTs that only read: any other request but a GET or HEAD needs an admin.
READING_POSTS = {"subscriber.fetch", "auth.logout"}
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}

bp = Blueprint("auth", __name__)


def _hostname(value: str) -> str:
    """Return the host name of a Host header (or of an address), lower-cased, without port or brackets."""
    host = value.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":")[0]
    return host.rstrip(".")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def allowed_hosts(settings: dict[str, Any]) -> frozenset[str]:
    """Return the host names (not addresses) the subscriber answers for.

    They are the listen address's (when a name), the host of ``urlbase``,
    ``allowed_hosts``, and: ``localhost`` when listening on loopback; this
    host's names (as ``socket.gethostname`` and ``getfqdn`` give them) and
    ``localhost`` when listening on a wildcard address. An IP address is
    always answered for: DNS rebinding needs a name.
    """
    listen = _hostname(settings["http"][0])
    names = {_hostname(h) for h in settings.get("allowed_hosts") or ()}
    if settings.get("urlbase"):
        names.add(_hostname(urlsplit(settings["urlbase"]).hostname or ""))
    if listen in ("", "0.0.0.0", "::"):
        names |= {_hostname(socket.gethostname()), _hostname(socket.getfqdn())} | LOOPBACK_NAMES
    elif listen in LOOPBACK_NAMES or (_is_ip(listen) and ipaddress.ip_address(listen).is_loopback):
        names |= LOOPBACK_NAMES
    if not _is_ip(listen):
        names.add(listen)
    return frozenset(names - {""})


class Guard:
    """The checks before every view: Host, Origin and, when `accounts` is given, credentials.

    `access` maps root names to the names allowed to read them; `ttl` is the
    life of a session token in seconds; `logins` counts failed logins.
    """

    def __init__(
        self, settings: dict[str, Any], accounts: Accounts | None = None, secret: bytes | None = None
    ) -> None:
        self.hosts = allowed_hosts(settings)
        self.urlbase = settings.get("urlbase")
        self.accounts = accounts
        self.secret = secret
        self.access: dict[str, frozenset[str]] = {
            root: frozenset(names) for root, names in (settings.get("access") or {}).items()
        }
        self.ttl = settings.get("token_ttl", 28800)
        # Settings made by hand (the tests') may leave the limits out.
        limits = {**DEFAULTS["subscriber"], **settings}
        self.logins = Logins(
            limits["login_attempts"], limits["login_attempts_per_address"], limits["login_window"]
        )

    def install(self, app: Flask) -> None:
        app.config["CATMQTT_GUARD"] = self
        app.before_request(self.check)
        app.register_blueprint(bp)

        @app.errorhandler(Unauthorized)
        def unauthorized(exc: Unauthorized):
            response = error_response(exc)
            response.headers["WWW-Authenticate"] = 'Bearer realm="catmqtt"'
            return response

    def check(self) -> Response | None:
        """Refuse a foreign Host (421), a cross-site change (403), missing or bad credentials (401),
        a reader's change or a root not shared with the user (403)."""
        host = _hostname(request.host)
        if not (_is_ip(host) or host in self.hosts):
            raise CatmqttError(
                f"this subscriber does not answer for host {host[:100]!r}:"
                " add it to subscriber.allowed_hosts",
                421,
            )
        if request.method not in SAFE_METHODS:
            self._check_origin()
        # No such route, or not with this method: its 404 or 405 runs no view.
        if self.accounts is None or request.routing_exception is not None:
            return
        # A republished root is served to anyone, as its publisher serves it.
        if request.endpoint in OPEN or request.blueprint == "relay":
            return
        try:
            g.principal = principal = self._principal()
        except Unauthorized:
            # A person opening the index page is shown the login form.
            if request.endpoint == "subscriber.index" and "text/html" in request.accept_mimetypes.values():
                return redirect("auth/login", 303)
            raise
        changes = request.method not in SAFE_METHODS and request.endpoint not in READING_POSTS
        if changes and not principal.admin:
            raise Forbidden(f"{principal.name} is not an admin: {request.method} {request.path} needs one")
        args = request.view_args or {}
        root = args.get("name") or (args.get("fullpath") or "").split("/")[0]
        if root and not self.may_read(principal, root):
            raise Forbidden(f"root {root!r} is not shared with {principal.name}")

    def _check_origin(self) -> None:
        # A browser says where a request comes from; other clients say nothing, and are let through.
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise Forbidden(f"a {request.method} from another site ({site}) is refused")
        origin = request.headers.get("Origin")
        if origin is None:
            return
        own = {f"http://{request.host}", f"https://{request.host}"}
        if self.urlbase:
            parts = urlsplit(self.urlbase)
            own.add(f"{parts.scheme}://{parts.netloc}")
        if origin.lower().rstrip("/") not in {o.lower() for o in own}:
            raise Forbidden(f"a {request.method} from another origin ({origin[:100]}) is refused")

    def _principal(self) -> Principal:
        token = None
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            token = header[7:].strip()
        elif COOKIE in request.cookies:
            token = request.cookies[COOKIE]
        if not token:
            raise Unauthorized(
                "credentials needed: log in (POST /auth/login) and send the token (Authorization: Bearer)"
                " or the cookie it gives"
            )
        if token.startswith(AGENT_PREFIX):
            principal = self.accounts.of_agent(token)
            if principal is None:
                raise Unauthorized("the token is unknown, revoked or expired")
            return principal
        try:
            session = parse_token(self.secret, token, time.time())
        except BadToken as exc:
            raise Unauthorized(str(exc)) from None
        principal = self.accounts.of_session(session)
        if principal is None:
            raise Unauthorized("the session was ended, or its user deleted: log in again")
        g.session = session
        return principal

    def may_read(self, principal: Principal | None, root: str) -> bool:
        allowed = self.access.get(root)
        return allowed is None or (principal is not None and principal.name in allowed)


def readable(roots: dict[str, Any]) -> dict[str, Any]:
    """Return the roots of `roots` (by name) that the request's user may read."""
    guard: Guard | None = current_app.config.get("CATMQTT_GUARD")
    if guard is None or guard.accounts is None:
        return roots
    principal = g.get("principal")
    return {name: root for name, root in roots.items() if guard.may_read(principal, name)}


def _credentials() -> tuple[str, str]:
    """Return the user name and password of a login, from JSON or form fields."""
    if request.content_length is None and request.headers.get("Transfer-Encoding"):
        raise BadRequest("send the login with a Content-Length")
    if (request.content_length or 0) > MAX_LOGIN_BYTES:
        raise TooLarge(f"a login is at most {MAX_LOGIN_BYTES} bytes")
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BadRequest('send the login as JSON {"username": ..., "password": ...}')
    else:
        body = request.form
    name, password = body.get("username"), body.get("password")
    if name is None:
        raise BadRequest("the login has no username")
    return parse_username(name), parse_password(password)


@bp.post("/auth/login")
def login() -> Response:
    """Answer ``{"token", "expires"}`` and set the session cookie, for a right user name and password."""
    guard: Guard = current_app.config["CATMQTT_GUARD"]
    if guard.accounts is None:
        raise BadRequest("this subscriber has no accounts: every request is answered without a login")
    name, password = _credentials()
    with guard.logins.attempt(request.remote_addr, name):
        try:
            token, session = guard.accounts.login(name, password, guard.secret, guard.ttl)
        except Unauthorized:
            # For whoever watches for guessing (fail2ban and the like).
            log.warning("failed login of %r from %s", name, request.remote_addr)
            raise
    # The login page's form goes back to the index; programs (C2Array too) get JSON.
    browser = not request.is_json and request.accept_mimetypes.best_match(["application/json", "text/html"])
    if browser == "text/html":
        response = redirect("../" if request.path == "/auth/login" else "../../", 303)
    else:
        response = jsonify({"token": token, "expires": session.expires})
    response.set_cookie(
        COOKIE,
        token,
        expires=session.expires,
        httponly=True,
        # Behind a proxy that ends TLS, urlbase says that browsers use https.
        secure=request.is_secure or (guard.urlbase or "").startswith("https:"),
        samesite="Strict",
        path="/",
    )
    return response


@bp.get("/auth/login")
def login_page() -> Response:
    """A form for people: it posts to /auth/login, which sets the session cookie."""
    return page.page_response("login.html")


@bp.get("/auth/me")
def me() -> Response:
    """Say who the request acts for, and whether they may change what the subscriber keeps."""
    guard: Guard = current_app.config["CATMQTT_GUARD"]
    if guard.accounts is None:
        return jsonify({"accounts": False, "user": None, "admin": True})
    principal: Principal = g.principal
    return jsonify({"accounts": True, "user": principal.name, "admin": principal.admin})


@bp.post("/auth/jwt/login")
def jwt_login() -> Response:
    """The login python-blosc2's ``c2context`` posts (form fields), as Caterva2's; as `login`."""
    return login()


@bp.post("/auth/logout")
def logout() -> Response:
    """End the session of the request's token or cookie, and clear the cookie."""
    guard: Guard = current_app.config["CATMQTT_GUARD"]
    session = g.get("session")
    if guard.accounts is not None and session is not None:
        guard.accounts.end(session)
    response = jsonify("Ok")
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
    return response
