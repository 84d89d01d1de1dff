"""Brute-force throttling of sign-in and provisioning-key checks, in memory.

The design slows the attacker, never the owner:

* **Per source address.** A source that fails too often (any account, or any
  provisioning key) waits before its next attempt: 1 delay unit after the
  limit, then 2, 4, 8 ... up to the window. Refused attempts are not checked
  at all, so a throttled source learns nothing.
* **Per source and account.** Guessing one account's password from one
  address hits a lower limit, with the same progressive delays. Another
  address -- the owner's -- is not affected.
* **Per account, from every source** (a distributed attack). Sources that
  have signed in to the account before ("known sources") are exempt, so the
  owner's usual address always gets through with the right password and TOTP
  code. Any other source is slowed to at most one attempt per delay, growing
  to a small cap: never a block of the account.

Counts live in memory: a restart forgets them (this only loosens the limit for
one window), and several controllers each enforce their own. Memory stays
bounded: expired entries are swept and the number of tracked keys is capped.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

# How long a successful sign-in makes its source "known" for that account, and
# how many known sources an account keeps (the most recent ones).
KNOWN_SOURCE_SECONDS = 30 * 86400.0
KNOWN_SOURCES_PER_ACCOUNT = 32
# Beyond this many tracked keys, expired ones are swept and then the oldest dropped.
MAX_TRACKED_KEYS = 100_000


def progressive_wait(failures: deque[float], limit: int, now: float, unit: float, cap: float) -> float:
    """Seconds until the next attempt: 0 below ``limit`` failures; from the
    limit on, ``unit`` after the last failure, doubling with each further one,
    at most ``cap``."""
    over = len(failures) - limit
    if over < 0 or not failures:
        return 0.0
    delay = min(cap, unit * 2.0 ** min(over, 60))
    return max(0.0, failures[-1] + delay - now)


def retry_after(wait: float) -> str:
    """The Retry-After header value (whole seconds, at least 1) for a wait."""
    return str(max(1, math.ceil(wait)))


class FailureLog:
    """Failure times per key within a sliding window, bounded in memory."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._failures: dict[Hashable, deque[float]] = {}
        self._swept = clock()

    def __len__(self) -> int:
        return len(self._failures)

    def recent(self, key: Hashable, now: float) -> deque[float]:
        q = self._failures.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._failures[key]
        return q

    def add(self, key: Hashable, now: float) -> None:
        q = self.recent(key, now)
        if key not in self._failures:
            self._failures[key] = q
        q.append(now)
        if len(self._failures) > MAX_TRACKED_KEYS or now - self._swept > self.window:
            self._sweep(now)

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    def _sweep(self, now: float) -> None:
        self._swept = now
        for key in [k for k, q in self._failures.items() if not q or q[-1] <= now - self.window]:
            del self._failures[key]
        # Still too many (a flood from many addresses): forget the oldest keys,
        # down to 90 % so the next sweep is not due at once. That loosens their
        # limit, but memory must stay bounded.
        if len(self._failures) <= MAX_TRACKED_KEYS:
            return
        excess = len(self._failures) - MAX_TRACKED_KEYS * 9 // 10
        for key in list(self._failures)[: max(0, excess)]:
            del self._failures[key]


@dataclass(frozen=True)
class ThrottleLimits:
    per_source: int = 20  # failed sign-ins from one address (any account)
    per_account: int = 5  # failed sign-ins for one account from one address
    per_account_any_source: int = 50  # for one account from unknown addresses together
    per_source_keys: int = 10  # refused provisioning keys / codes from one address
    window: float = 900.0  # failures older than this are forgotten (seconds)
    delay_unit: float = 1.0  # first delay once a limit is reached (seconds)
    account_delay_cap: float = 30.0  # longest delay an account-wide limit imposes


class Throttle:
    """Decides whether an attempt may proceed; see the module docstring."""

    def __init__(self, limits: ThrottleLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._log = FailureLog(limits.window, clock)
        self._known: dict[str, OrderedDict[str, float]] = {}

    # -- sign-in

    def known_source(self, account: str, source: str) -> bool:
        seen = self._known.get(account, OrderedDict()).get(source)
        return seen is not None and self.clock() - seen < KNOWN_SOURCE_SECONDS

    def login_wait(self, account: str, source: str) -> float:
        """Seconds until ``source`` may try to sign in to ``account``; 0 when now."""
        lim, now = self.limits, self.clock()
        waits = [
            progressive_wait(
                self._log.recent(("source", source), now), lim.per_source, now, lim.delay_unit, lim.window
            ),
            progressive_wait(
                self._log.recent(("pair", source, account), now),
                lim.per_account,
                now,
                lim.delay_unit,
                lim.window,
            ),
        ]
        if not self.known_source(account, source):
            waits.append(
                progressive_wait(
                    self._log.recent(("account", account), now),
                    lim.per_account_any_source,
                    now,
                    lim.delay_unit,
                    lim.account_delay_cap,
                )
            )
        return max(waits)

    def login_failed(self, account: str, source: str) -> None:
        now = self.clock()
        self._log.add(("source", source), now)
        self._log.add(("pair", source, account), now)
        if not self.known_source(account, source):
            # Failures from a known source do not slow strangers down.
            self._log.add(("account", account), now)

    def login_succeeded(self, account: str, source: str) -> None:
        """The owner got in from ``source``: forget its failures on this account
        and remember the source. The source's own count stays, so one valid
        account does not reset a source that sprays guesses at others."""
        self._log.forget(("pair", source, account))
        known = self._known.setdefault(account, OrderedDict())
        known.pop(source, None)
        known[source] = self.clock()
        while len(known) > KNOWN_SOURCES_PER_ACCOUNT:
            known.popitem(last=False)

    # -- provisioning keys, activation and bootstrap codes

    def key_wait(self, source: str) -> float:
        lim, now = self.limits, self.clock()
        return progressive_wait(
            self._log.recent(("key", source), now), lim.per_source_keys, now, lim.delay_unit, lim.window
        )

    def key_failed(self, source: str) -> None:
        self._log.add(("key", source), self.clock())
