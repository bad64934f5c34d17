"""This module holds the subscriber's accounts: users (argon2 hashes of their
passwords), agent tokens (SHA-256 of them), ended sessions, and the secret
that signs session tokens.

They live in ``<statedir>/accounts.sqlite`` (WAL), a file of its own beside
the cache's index, so that ``catmqtt user``/``catmqtt token`` change them
from another process while the subscriber runs: every check reads the file,
so a user added can log in at once, and a user deleted or a token revoked
is refused at once.

Threads: each thread that uses an `Accounts` (the HTTP threads, the CLI's
one) gets a connection of its own (`threading.local`); SQLite's own locking
orders the writers, of this process and of others. No lock of catmqtt's is
taken here.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import fsutil
from ..errors import BadRequest, ConfigError, NotFound, Unauthorized
from .tokens import AGENT_PREFIX, Session, make_token, new_agent_token, parse_username, token_hash

SECRET_ENV = "CATMQTT_SECRET"
SECRET_FILE = "secret"
FILE = "accounts.sqlite"
_TABLES = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
-- An agent token acts as `user` when set, else as a reader named after itself.
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    user TEXT,
    expires REAL,
    created REAL NOT NULL
);
-- Sessions ended by a logout before their expiry.
CREATE TABLE IF NOT EXISTS ended (nonce TEXT PRIMARY KEY, expires INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a user, or an agent token (as itself or as its user)."""

    name: str
    admin: bool


def load_secret(statedir: Path, auth: bool) -> bytes | None:
    """Return the secret that signs session tokens, or None when accounts are off.

    Accounts are on when ``$CATMQTT_SECRET`` is not empty (its value is the
    secret) or `auth` is true: the secret is then ``<statedir>/secret``,
    made once (mode 0600) and kept.
    """
    env = os.environ.get(SECRET_ENV, "")
    if env:
        return env.encode()
    if not auth:
        return None
    fsutil.make_statedir(statedir)
    path = statedir / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes().strip()
        if len(secret) < 32:
            raise ConfigError(f"{path} holds no secret: remove it, and a new one is made") from None
        return secret
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32).hex().encode())
    return path.read_bytes().strip()


class Accounts:
    """The accounts under `statedir`; every method may be called from any thread."""

    def __init__(self, statedir: str | Path) -> None:
        self.dir = Path(statedir)
        self.path = self.dir / FILE
        fsutil.make_statedir(self.dir)
        self._local = threading.local()
        from pwdlib import PasswordHash
        from pwdlib.hashers.argon2 import Argon2Hasher

        self._hasher = PasswordHash((Argon2Hasher(),))
        db = self._db()
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_TABLES)
        os.chmod(self.path, 0o600)

    @functools.cached_property
    def _dummy(self) -> str:
        """A hash to verify against when the user is unknown, so that a wrong name takes as
        long as a wrong password (made at the first such login: a hash takes 0.2 s)."""
        return self._hasher.hash("catmqtt")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
            self._local.db = db
        return db

    def close(self) -> None:
        """Close this thread's connection (others close with their threads)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # Users

    def add_user(self, name: str, password: str, admin: bool = False) -> None:
        """Add user `name`; raise BadRequest if there is one already."""
        parse_username(name)
        hashed = self._hasher.hash(password)
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            if db.execute("SELECT 1 FROM agents WHERE name = ? AND user IS NULL", (name,)).fetchone():
                raise BadRequest(
                    f"there is an agent token {name!r}, which reads as {name!r}: choose another name"
                )
            try:
                db.execute(
                    "INSERT INTO users (name, hash, admin, created) VALUES (?, ?, ?, ?)",
                    (name, hashed, int(admin), time.time()),
                )
            except sqlite3.IntegrityError:
                raise BadRequest(
                    f"there is a user {name!r} already: 'catmqtt user del {name}' first"
                ) from None

    def delete_user(self, name: str) -> None:
        """Delete user `name`, its sessions and the agent tokens that act as it."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            if db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no user {name!r}")
            db.execute("DELETE FROM agents WHERE user = ?", (name,))

    def users(self) -> list[Principal]:
        rows = self._db().execute("SELECT name, admin FROM users ORDER BY name")
        return [Principal(name, bool(admin)) for name, admin in rows]

    # Sessions

    def login(self, name: str, password: str, secret: bytes, ttl: int) -> tuple[str, Session]:
        """Return a session token for `name` and its session; raise Unauthorized if the password is wrong."""
        row = self._db().execute("SELECT id, hash FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            self._hasher.verify(password, self._dummy)
            raise Unauthorized("wrong user name or password")
        if not self._hasher.verify(password, row[1]):
            raise Unauthorized("wrong user name or password")
        return make_token(secret, name, row[0], int(time.time()) + ttl)

    def of_session(self, session: Session) -> Principal | None:
        """Return who a session acts for, None if its user is gone or it was ended."""
        row = (
            self._db()
            .execute(
                "SELECT admin FROM users WHERE id = ? AND name = ?"
                " AND NOT EXISTS (SELECT 1 FROM ended WHERE nonce = ?)",
                (session.user_id, session.user, session.nonce),
            )
            .fetchone()
        )
        return None if row is None else Principal(session.user, bool(row[0]))

    def end(self, session: Session) -> None:
        """End `session` before its expiry (and forget sessions ended that have expired since)."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM ended WHERE expires < ?", (time.time(),))
            db.execute("INSERT OR IGNORE INTO ended VALUES (?, ?)", (session.nonce, session.expires))

    # Agent tokens

    def create_agent(self, name: str, user: str | None = None, days: float | None = None) -> str:
        """Make agent token `name` (acting as `user` if given), valid `days` (forever if None); return it.

        Only its SHA-256 is kept: the token itself is shown once.
        """
        parse_username(name)
        if days is not None and not 0 < days <= 36500:
            raise BadRequest(f"a token's life must be from 0 to 36500 days, not {days}")
        token = new_agent_token()
        expires = None if days is None else time.time() + days * 86400
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            known = db.execute("SELECT 1 FROM users WHERE name = ?", (user or name,)).fetchone()
            if user is not None and known is None:
                raise NotFound(f"no user {user!r}: add it with 'catmqtt user add {user}' first")
            # A token of its own reads as its name: it must not pass for a user.
            if user is None and known is not None:
                raise BadRequest(f"there is a user {name!r}: name the token otherwise, or give --user {name}")
            try:
                db.execute(
                    "INSERT INTO agents VALUES (?, ?, ?, ?, ?)",
                    (name, token_hash(token), user, expires, time.time()),
                )
            except sqlite3.IntegrityError:
                raise BadRequest(f"there is a token {name!r} already: revoke it first") from None
        return token

    def agents(self) -> list[tuple[str, str | None, float | None]]:
        """Return every agent token as (name, user or None, expiry or None), by name."""
        return list(self._db().execute("SELECT name, user, expires FROM agents ORDER BY name"))

    def revoke_agent(self, name: str) -> None:
        if self._db().execute("DELETE FROM agents WHERE name = ?", (name,)).rowcount == 0:
            raise NotFound(f"no token {name!r}")

    def of_agent(self, token: str) -> Principal | None:
        """Return who agent `token` acts for, None if it is unknown, revoked or expired."""
        if not token.startswith(AGENT_PREFIX):
            return None
        row = (
            self._db()
            .execute(
                "SELECT a.name, a.user, u.admin FROM agents a LEFT JOIN users u ON u.name = a.user"
                " WHERE a.hash = ? AND (a.expires IS NULL OR a.expires > ?)",
                (token_hash(token), time.time()),
            )
            .fetchone()
        )
        if row is None:
            return None
        name, user, admin = row
        if user is None:
            return Principal(name, False)
        # Its user deleted since (delete_user deletes its tokens too, but not an older catmqtt's).
        return None if admin is None else Principal(user, bool(admin))
