"""This module signs and verifies announcements with Ed25519 keys.

A signed payload carries ``"key"`` (the signer's public key, as
``ed25519:<base64>``), ``"seq"`` (a number that only grows, against replay)
and ``"sig"``: the signature of the topic and of the rest of the payload as
canonical JSON (sorted keys, no spaces, ASCII), so that a payload cannot be
moved to another topic, and a relay may re-encode it without breaking it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import BadRequest, ConfigError
from .schema import KEY_PREFIX, MAX_SEQ, parse_public_key

SIGNED_FIELDS = ("key", "seq", "sig")
# The fields of an announcement that are its announcer's, not the dataset's: its
# signature, and the origin a relay carries (see `subscriber.relay`).
ANNOUNCER_FIELDS = (*SIGNED_FIELDS, "origin")


def _public_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode()


def canonical(topic: str, obj: dict[str, Any]) -> bytes:
    """Return the bytes a signature covers: the topic, then `obj` less its signature."""
    body = {k: v for k, v in obj.items() if k != "sig"}
    return topic.encode() + b"\n" + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class Signer:
    """A private key that signs announcements, with a sequence number that only grows."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = _public_text(key.public_key())
        self._seq = 0
        self._lock = threading.Lock()

    def next_seq(self) -> int:
        """Return a number greater than any this key signed before, here or in an earlier run.

        Microseconds since the epoch, so that a restarted publisher goes on
        above its last run without keeping state (as long as its clock does
        not go back).
        """
        with self._lock:
            self._seq = max(self._seq + 1, time.time_ns() // 1000)
            return self._seq

    def sign(self, topic: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Return `obj` with this key, the next sequence number and the signature for `topic`."""
        signed = {**obj, "key": self.public, "seq": self.next_seq()}
        signature = self._key.sign(canonical(topic, signed))
        return {**signed, "sig": base64.b64encode(signature).decode()}


def verify(topic: str, obj: dict[str, Any]) -> str | None:
    """Return the key that signed `obj` for `topic`, None if it is unsigned.

    Raises BadRequest if it carries a signature that does not verify.
    """
    if not any(field in obj for field in SIGNED_FIELDS):
        return None
    key, seq, sig = obj.get("key"), obj.get("seq"), obj.get("sig")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ or not isinstance(sig, str):
        raise BadRequest("signed payload without a valid 'seq' and 'sig'")
    parse_public_key(key)
    try:
        signature = base64.b64decode(sig, validate=True)
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key[len(KEY_PREFIX) :]))
        public.verify(signature, canonical(topic, obj))
    except (binascii.Error, ValueError, InvalidSignature):
        raise BadRequest(f"the signature by {key} does not verify") from None
    return key


def generate(path: str | os.PathLike) -> Signer:
    """Write a new private key to `path` (PEM, mode 0600, never over an existing file).

    The key is written whole to a temporary file beside `path`, then linked
    into place: nobody ever reads half a key, and a failed write leaves
    nothing behind.
    """
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, target)
    except FileExistsError:
        raise ConfigError(f"{target} exists already: remove it first, or use it") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror}") from None
    finally:
        os.unlink(tmp)
    return Signer(key)


def load(path: str | os.PathLike) -> Signer:
    """Return the signer of the private key in `path`, as `generate` wrote it."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the signing key {os.fspath(path)}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{os.fspath(path)} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{os.fspath(path)} is not an Ed25519 key (make one with 'catmqtt keygen')")
    return Signer(key)


def load_or_generate(path: Path) -> Signer:
    """Return the signer of the key in `path`, making the key first if there is none."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return generate(path)
        except ConfigError:
            if not path.exists():
                raise
    return load(path)
