"""This module holds the pure logic of the subscriber's accounts: user names,
passwords, and the session tokens a login hands out (signed, expiring).

A session token is ``BODY.SIG``: BODY is the URL-safe base64 of the JSON
``{"u": name, "i": user id, "n": nonce, "e": expiry}`` and SIG the URL-safe
base64 of its HMAC-SHA256 under the subscriber's secret. The user id (never
reused) makes a deleted user's tokens useless even if the name comes back;
the nonce names the session, so that a logout can end it. An agent token is
``AGENT_PREFIX`` and random bytes: it is looked up (by its SHA-256) in the
store, not verified by signature.

No I/O here: the store (`accounts`) and the Flask side (`guard`) use it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass

from ..errors import BadRequest

AGENT_PREFIX = "cmqa_"
MAX_NAME = 64
MAX_PASSWORD = 1024
MAX_TOKEN = 2048
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*\Z")


class BadToken(Exception):
    """A token that is forged, expired, or not a token at all; its message says which."""


@dataclass(frozen=True)
class Session:
    """What a valid session token says: who, since which user row, which session, until when."""

    user: str
    user_id: int
    nonce: str
    expires: int


def parse_username(value: object) -> str:
    """Return `value` if it is a valid user (or agent token) name, else raise BadRequest."""
    if isinstance(value, str) and len(value) <= MAX_NAME and _NAME.match(value):
        return value
    shown = value[:MAX_NAME] if isinstance(value, str) else value
    raise BadRequest(
        f"invalid name {shown!r}: 1 to {MAX_NAME} letters, digits, '.', '_', '@' or '-',"
        " starting with a letter or digit"
    )


def parse_password(value: object) -> str:
    """Return `value` if it can be a password (not empty, not huge, valid Unicode), else raise BadRequest."""
    if not isinstance(value, str) or not value:
        raise BadRequest("the password is empty")
    if len(value) > MAX_PASSWORD:
        raise BadRequest(f"the password is longer than {MAX_PASSWORD} characters")
    # JSON may escape a lone surrogate, which argon2 cannot encode to hash.
    try:
        value.encode()
    except UnicodeEncodeError:
        raise BadRequest("the password is not valid Unicode: it holds a lone surrogate") from None
    return value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, body: str) -> str:
    return _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())


def make_token(secret: bytes, user: str, user_id: int, expires: int) -> tuple[str, Session]:
    """Return a new session token for `user` (row `user_id`) valid until `expires` (Unix time)."""
    session = Session(user, user_id, secrets.token_urlsafe(12), expires)
    body = _b64(json.dumps({"u": user, "i": user_id, "n": session.nonce, "e": expires}).encode())
    return f"{body}.{_sign(secret, body)}", session


def parse_token(secret: bytes, token: str, now: float) -> Session:
    """Return the session `token` stands for at time `now`; raise BadToken if it
    is junk, forged (another secret, a changed body) or expired."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN or token.count(".") != 1:
        raise BadToken("not a catmqtt token")
    body, sig = token.split(".")
    if not hmac.compare_digest(sig.encode("ascii", "replace"), _sign(secret, body).encode()):
        raise BadToken("the token's signature is not this subscriber's")
    try:
        fields = json.loads(_unb64(body))
        session = Session(fields["u"], fields["i"], fields["n"], fields["e"])
    except (ValueError, binascii.Error, TypeError, KeyError):
        raise BadToken("not a catmqtt token") from None
    if not isinstance(session.expires, int) or not isinstance(session.user_id, int):
        raise BadToken("not a catmqtt token")
    if session.expires <= now:
        raise BadToken("the token has expired: log in again")
    return session


def new_agent_token() -> str:
    """Return a new random agent token (shown once, stored only as `token_hash`)."""
    return AGENT_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """Return what the store keeps of an agent token: its SHA-256, hex (it is random, so no salt)."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
