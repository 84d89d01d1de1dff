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

Decisions are made from memory, so a check costs no database round trip and
the API stays synchronous. With a database (:class:`Throttle` given ``db``,
which is how the controller runs) the counts are also shared: each failure is
written as one row (source, account; never the secret tried) by a background
task woken at once. At start the whole window is loaded, so a restart forgets
nothing. On PostgreSQL (where several controllers share a deployment) the task
also replays the other controllers' new rows into this one's log every
``sync_seconds`` (their known sources every second), so they slow an attacker
as if they were one; SQLite has one controller and reads only at start. The
sharing lags by one poll plus a write (about 0.1-0.15 s); a guess racing that
lag is the same race as concurrent guesses on one controller (each passes its
check before its password hash, ~0.1 s, is done). A
successful sign-in writes only when its source becomes known (or is refreshed
after an hour, or had failures to forget). Storage stays bounded: rows older
than the window are pruned in the background, a key that already has
``ROW_CAP`` failures gets no more rows (more would not change a decision), and
the table is capped at ``MAX_ROWS``.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from zerogate.controller import background
from zerogate.store.models_throttle import ThrottleFailure, ThrottleKnownSource

if TYPE_CHECKING:
    from fastapi import FastAPI

    from zerogate.store.db import Database

log = logging.getLogger(__name__)

# How long a successful sign-in makes its source "known" for that account, and
# how many known sources an account keeps (the most recent ones).
KNOWN_SOURCE_SECONDS = 30 * 86400.0
KNOWN_SOURCES_PER_ACCOUNT = 32
# A known source's row is rewritten on sign-in only once it is this old.
KNOWN_REFRESH_SECONDS = 3600.0
# Beyond this many tracked keys, expired ones are swept and then the oldest dropped.
MAX_TRACKED_KEYS = 100_000
# Shared storage: no more rows for a key with this many failures in the window
# (the delay is at its cap long before); at most this many rows in all.
ROW_CAP = 200
MAX_ROWS = 200_000
# Failures waiting for the database while it is unreachable (then the oldest go).
MAX_PENDING = 10_000
PRUNE_SECONDS = 60.0
PULL_BATCH = 5000
# PostgreSQL may commit ids out of order (concurrent inserts): each pull re-reads
# this many ids below the newest one seen. SQLite writers are serialised.
PG_ID_MARGIN = 500
# Known sources are pulled by time: re-read this far back (clocks of two controllers).
KNOWN_MARGIN_SECONDS = 5.0
KNOWN_PULL_SECONDS = 1.0


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

    def __init__(self, window: float, clock: Callable[[], float] = time.time) -> None:
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

    def add(self, key: Hashable, now: float, at: float | None = None) -> None:
        """Count a failure at ``at`` (default ``now``); another controller's
        may be older than the newest here, so it is put in time order."""
        at = now if at is None else at
        if at <= now - self.window:
            return
        q = self.recent(key, now)
        if key not in self._failures:
            self._failures[key] = q
        if q and at < q[-1]:
            q.insert(bisect.bisect_right(q, at), at)
        else:
            q.append(at)
        if len(self._failures) > MAX_TRACKED_KEYS or now - self._swept > self.window:
            self._sweep(now)

    def forget(self, key: Hashable, until: float | None = None) -> None:
        """Forget the key's failures (only those up to ``until`` if given)."""
        if until is None:
            self._failures.pop(key, None)
            return
        q = self._failures.get(key)
        while q and q[0] <= until:
            q.popleft()
        if q is not None and not q:
            del self._failures[key]

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
    """Decides whether an attempt may proceed; see the module docstring.

    ``clock`` is wall-clock time (the controllers of a deployment compare
    their failure times). With ``db``, :meth:`start` loads the shared counts
    and starts the background sync, :meth:`stop` writes what is pending.
    """

    def __init__(
        self,
        limits: ThrottleLimits,
        clock: Callable[[], float] = time.time,
        db: Database | None = None,
        sync_seconds: float = 0.1,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self._log = FailureLog(limits.window, clock)
        self._known: dict[str, OrderedDict[str, float]] = {}
        self.db = db
        self.sync_seconds = sync_seconds
        self.origin = secrets.token_hex(8)  # this process's rows, not replayed here
        self._pending: list[dict[str, Any]] = []
        self._pending_known: dict[tuple[str, str], float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cursor = 0  # newest failure id replayed
        self._seen: set[int] = set()  # ids replayed above cursor - margin
        self._known_since = 0.0
        self._known_pulled = -math.inf
        self._pruned = 0.0

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
        # Failures from a known source do not slow strangers down.
        wide = not self.known_source(account, source)
        self._count_login(account, source, wide, now, now)
        self._share("login", source, account, wide, now)

    def _count_login(self, account: str, source: str, wide: bool, now: float, at: float) -> None:
        self._log.add(("source", source), now, at)
        self._log.add(("pair", source, account), now, at)
        if wide:
            self._log.add(("account", account), now, at)

    def login_succeeded(self, account: str, source: str) -> None:
        """The owner got in from ``source``: forget its failures on this account
        and remember the source. The source's own count stays, so one valid
        account does not reset a source that sprays guesses at others."""
        now = self.clock()
        had_failures = bool(self._log.recent(("pair", source, account), now))
        previous = self._known.get(account, OrderedDict()).get(source)
        self._remember(account, source, now)
        self._log.forget(("pair", source, account))
        fresh = previous is not None and now - previous < KNOWN_REFRESH_SECONDS
        if self.db is not None and (had_failures or not fresh):
            self._pending_known[(account[:255], source[:64])] = now
            self._wake.set()

    def _remember(self, account: str, source: str, at: float) -> None:
        known = self._known.setdefault(account, OrderedDict())
        if known.get(source, 0.0) >= at:
            return
        known.pop(source, None)
        known[source] = at
        while len(known) > KNOWN_SOURCES_PER_ACCOUNT:
            known.popitem(last=False)

    # -- provisioning keys, activation and bootstrap codes

    def key_wait(self, source: str) -> float:
        lim, now = self.limits, self.clock()
        return progressive_wait(
            self._log.recent(("key", source), now), lim.per_source_keys, now, lim.delay_unit, lim.window
        )

    def key_failed(self, source: str) -> None:
        now = self.clock()
        self._log.add(("key", source), now)
        self._share("key", source, "", False, now)

    # -- sharing through the database

    def _share(self, kind: str, source: str, account: str, wide: bool, now: float) -> None:
        """Queue the failure for the database unless its keys are all at ROW_CAP."""
        if self.db is None:
            return
        if kind == "key":
            keys: list[Hashable] = [("key", source)]
        else:
            keys = [("source", source), ("pair", source, account)]
            if wide:
                keys.append(("account", account))
        if all(len(self._log.recent(k, now)) > ROW_CAP for k in keys):
            return
        if len(self._pending) >= MAX_PENDING:
            del self._pending[: MAX_PENDING // 10]
        self._pending.append(
            {
                "kind": kind,
                "source": source[:64],
                "account": account[:255],
                "account_wide": wide,
                "at": now,
                "origin": self.origin,
            }
        )
        self._wake.set()

    async def start(self) -> None:
        """Load the shared counts (a restart keeps them) and start syncing."""
        if self.db is None or self._task is not None:
            return
        try:
            await self.sync()
        except Exception as exc:  # a controller still starts; the loop retries
            log.warning("loading the shared sign-in throttle failed: %s", exc)
        self._task = background.start(self._loop(), "sign-in throttle sync")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await background.stop(task)
        if self.db is not None and (self._pending or self._pending_known):
            try:
                await self._flush()
            except Exception as exc:
                log.warning("writing the last sign-in failures failed: %s", exc)

    async def _loop(self) -> None:
        assert self.db is not None
        shared = not self.db.is_sqlite  # SQLite: one controller, nothing to pull
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.sync_seconds if shared else PRUNE_SECONDS)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._flush()
                if shared:
                    await self._pull()
                if self.clock() - self._pruned > PRUNE_SECONDS:
                    await self.prune()
            except Exception as exc:  # keep sharing through a database blip
                log.warning("sharing the sign-in throttle failed: %s", exc)
                await asyncio.sleep(self.sync_seconds)

    async def sync(self) -> None:
        """Write this controller's pending rows, then replay the others'."""
        await self._flush()
        await self._pull()

    async def _flush(self) -> None:
        assert self.db is not None
        failures, self._pending = self._pending, []
        known, self._pending_known = self._pending_known, {}
        if not failures and not known:
            return
        try:
            async with self.db.read() as session:
                if failures:
                    await session.execute(insert(ThrottleFailure), failures)
                for (account, source), at in known.items():
                    upsert = pg_insert if not self.db.is_sqlite else sqlite_insert
                    stmt = upsert(ThrottleKnownSource).values(account=account, source=source, at=at)
                    await session.execute(
                        stmt.on_conflict_do_update(
                            index_elements=["account", "source"], set_={"at": stmt.excluded.at}
                        )
                    )
                    # Keep the account's newest KNOWN_SOURCES_PER_ACCOUNT.
                    oldest_kept = (
                        select(ThrottleKnownSource.at)
                        .where(ThrottleKnownSource.account == account)
                        .order_by(ThrottleKnownSource.at.desc())
                        .offset(KNOWN_SOURCES_PER_ACCOUNT - 1)
                        .limit(1)
                        .scalar_subquery()
                    )
                    await session.execute(
                        delete(ThrottleKnownSource).where(
                            ThrottleKnownSource.account == account, ThrottleKnownSource.at < oldest_kept
                        )
                    )
                await session.commit()
        except BaseException:
            # Not written: keep them (newest last) for the next round.
            self._pending = (failures + self._pending)[-MAX_PENDING:]
            self._pending_known = known | self._pending_known
            raise

    async def _pull(self) -> None:
        assert self.db is not None
        now = self.clock()
        margin = 0 if self.db.is_sqlite else PG_ID_MARGIN
        f = ThrottleFailure
        while True:
            floor = max(0, self._cursor - margin)
            query = (
                select(f.id, f.kind, f.source, f.account, f.account_wide, f.at)
                .where(f.id > floor, f.origin != self.origin, f.at > now - self.limits.window)
                .order_by(f.id)
                .limit(PULL_BATCH)
            )
            async with self.db.read() as session:
                rows = (await session.execute(query)).all()
            for row in rows:
                if row.id in self._seen:
                    continue
                self._seen.add(row.id)
                self._cursor = max(self._cursor, row.id)
                if row.kind == "key":
                    self._log.add(("key", row.source), now, row.at)
                else:
                    self._count_login(row.account, row.source, row.account_wide, now, row.at)
            self._seen = {i for i in self._seen if i > self._cursor - margin}
            if len(rows) < PULL_BATCH or not rows:
                break
        if now - self._known_pulled < KNOWN_PULL_SECONDS:
            return
        self._known_pulled = now
        k = ThrottleKnownSource
        since = max(self._known_since - KNOWN_MARGIN_SECONDS, now - KNOWN_SOURCE_SECONDS)
        async with self.db.read() as session:
            known = (await session.execute(select(k.account, k.source, k.at).where(k.at > since))).all()
        for account, source, at in known:
            self._remember(account, source, at)
            # The owner got in there: failures before that no longer count.
            self._log.forget(("pair", source, account), at)
            self._known_since = max(self._known_since, at)

    async def prune(self) -> None:
        """Delete expired rows and cap the table (every controller does this; it is idempotent)."""
        assert self.db is not None
        now = self.clock()
        self._pruned = now
        f = ThrottleFailure
        keep_from = select(f.id).order_by(f.id.desc()).offset(MAX_ROWS).limit(1).scalar_subquery()
        async with self.db.read() as session:
            await session.execute(delete(f).where(f.at <= now - self.limits.window))
            await session.execute(delete(f).where(f.id <= keep_from))
            await session.execute(
                delete(ThrottleKnownSource).where(ThrottleKnownSource.at <= now - KNOWN_SOURCE_SECONDS)
            )
            await session.commit()


@asynccontextmanager
async def sharing(app: FastAPI) -> AsyncIterator[None]:
    """The controller's throttle is loaded and shared while the app runs (a
    router lifespan, merged inside the app's own, so the database is open)."""
    throttle: Throttle = app.state.zg.throttle
    await throttle.start()
    try:
        yield
    finally:
        await throttle.stop()
