"""This module holds the subscriber's brake on password guessing: `Logins`
counts failed logins and refuses logins past a count before their password
is checked.

Failures are counted in a sliding window of ``login_window`` seconds, per
client address and user name (``login_attempts``) and per client address
(``login_attempts_per_address``). Past either count a login is refused
(429, with Retry-After: the seconds until the failure that filled the count
leaves the window) and costs no argon2 work. A success clears its name's count at its address,
not the address's: logging in as oneself buys no more guesses at others'
names. A login is counted as failed from the moment it is let through, so
that logins checked together cannot pass the count between them, and
uncounted if it succeeds or fails otherwise than by a wrong password.
Besides, at most `VERIFYING` logins are checked at once (argon2 takes 64
MiB and about 0.2 s of a core for each); another is answered 503 at once.

A client address is the request's remote address; an IPv6 address is
counted by its /64, which one host may use whole. At most `MAX_ENTRIES`
counts are kept (names and addresses together), the least recently failed
dropped first, so that a flood of addresses and names takes bounded memory.

Threads: the HTTP threads call `Logins.attempt`; everything a `Logins`
keeps is under its `_lock`, held to read and change counts, never while a
password is checked.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..errors import Busy, TooManyRequests, Unauthorized

log = logging.getLogger(__name__)

# The most counts kept, and logins checked at once.
MAX_ENTRIES = 10_000
VERIFYING = 4

# A count's key: (address, name), or (address, None) for the address's own.
Key = tuple[str, str | None]


def client_of(address: str | None) -> str:
    """Return what a request from `address` is counted as: an IPv4 address as
    it is (written in IPv6 too), an IPv6 address as its /64, anything else as it is."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or ""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Logins:
    """The failed logins within the last `window` seconds: at most `attempts` a name
    from one address and `per_address` from one address (0: no such limit), at most
    `verifying` logins checked at once; `clock` tells the time in seconds."""

    def __init__(
        self,
        attempts: int,
        per_address: int,
        window: float,
        *,
        entries: int = MAX_ENTRIES,
        verifying: int = VERIFYING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attempts = attempts
        self.per_address = per_address
        self.window = window
        self.entries = entries
        self.verifying = verifying
        self._clock = clock
        self._lock = threading.Lock()
        # The times of each key's failures in the window (logins being checked
        # included), oldest first; the key that failed least lately first.
        self._failures: OrderedDict[Key, deque[float]] = OrderedDict()
        # When a refusal of each address was last logged, the oldest first.
        self._told: OrderedDict[str, float] = OrderedDict()
        self._checking = 0

    @contextmanager
    def attempt(self, address: str | None, name: str) -> Iterator[None]:
        """Let the block check a login of `name` from `address`, which fails if the block
        raises Unauthorized; raise TooManyRequests if too many such logins failed lately,
        Busy if `verifying` logins are being checked."""
        client = client_of(address)
        limits = {(client, None): self.per_address, (client, name): self.attempts}
        limits = {key: limit for key, limit in limits.items() if limit > 0}
        with self._lock:
            now = self._clock()
            self._forget(now)
            # The longer wait, the address's on a tie.
            wait, refusing = max(
                ((self._wait(key, limit, now), key) for key, limit in limits.items()),
                key=lambda pair: pair[0],
                default=(0, None),
            )
            told = wait > 0 and self._tell(client, now)
            busy = not wait and self._checking >= self.verifying
            if not (wait or busy):
                self._checking += 1
                for key in limits:
                    self._count(key, now)
        if wait:
            whose = "" if refusing[1] is None else f" of {name!r}"
            if told:
                log.warning(
                    "logins%s from %s refused for %d s: too many failed within %g s"
                    " (more refusals of %s within %g s are not logged)",
                    whose,
                    client,
                    wait,
                    self.window,
                    client,
                    self.window,
                )
            raise TooManyRequests(
                f"too many failed logins{whose} from this address: try again in {wait} s", wait
            )
        if busy:
            raise Busy("the subscriber is checking as many logins as it may at once: try again in 1 s", 1)
        failed = succeeded = False
        try:
            yield
            succeeded = True
        except Unauthorized:
            failed = True
            raise
        finally:
            with self._lock:
                self._checking -= 1
                for key in limits:
                    if succeeded and key[1] is not None:
                        self._failures.pop(key, None)
                    elif not failed:
                        self._uncount(key, now)

    def _wait(self, key: Key, limit: int, now: float) -> int:
        """Return the whole seconds until `key` may fail again, 0 if it may now."""
        times = self._failures.get(key)
        if times is None:
            return 0
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < limit:
            return 0
        return max(1, math.ceil(times[-limit] + self.window - now))

    def _count(self, key: Key, now: float) -> None:
        times = self._failures.get(key)
        if times is None:
            if len(self._failures) >= self.entries:
                self._failures.popitem(last=False)
            times = self._failures[key] = deque()
        else:
            self._failures.move_to_end(key)
        times.append(now)

    def _uncount(self, key: Key, at: float) -> None:
        times = self._failures.get(key)
        if times is not None and at in times:
            times.remove(at)

    def _tell(self, client: str, now: float) -> bool:
        """Return whether to log a refusal of `client`: the first in a window."""
        if now - self._told.get(client, -math.inf) < self.window:
            return False
        if client not in self._told and len(self._told) >= self.entries:
            self._told.popitem(last=False)
        self._told[client] = now
        self._told.move_to_end(client)
        return True

    def _forget(self, now: float) -> None:
        """Drop the counts and the logged refusals that the window has left behind."""
        while self._failures:
            times = next(iter(self._failures.values()))
            if times and times[-1] > now - self.window:
                break
            self._failures.popitem(last=False)
        while self._told and next(iter(self._told.values())) <= now - self.window:
            self._told.popitem(last=False)
