"""What every API handler shares: settings, database, CA, login throttle,
revision watching, and the mutation wrapper that audits success and failure.

Errors raised by services: :class:`ApiProblem` and its subclasses; the app
turns them into ``{"detail": message}`` with their status code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from zerogate.controller.config import ControllerSettings
from zerogate.controller.policy_cache import PolicyCache
from zerogate.store.db import Database, WriteTx

log = logging.getLogger(__name__)


class ApiProblem(Exception):
    status = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class BadRequest(ApiProblem):
    status = 400


class Unauthorized(ApiProblem):
    status = 401


class Forbidden(ApiProblem):
    status = 403


class NotFound(ApiProblem):
    status = 404


class Conflict(ApiProblem):
    status = 409


class Unprocessable(ApiProblem):
    status = 422


class TooManyAttempts(ApiProblem):
    status = 429


@dataclass(frozen=True)
class Principal:
    """Who is calling: an account (admin/user), an enrolled device, or nobody."""

    kind: str  # admin | user | device | anonymous
    id: int = 0
    name: str = ""
    role: str = ""  # device role: gateway | connector | client
    token_id: int = 0
    mfa: bool = False
    source: str = ""

    @property
    def actor(self) -> str:
        if self.kind == "device":
            return f"device:{self.role}:{self.id}:{self.name}"
        if self.kind == "anonymous":
            return "anonymous"
        return f"{self.kind}:{self.name}"


class LoginThrottle:
    """Counts failed logins per account and per source in a sliding window.

    Kept in memory: a restart forgets counts, which only ever loosens the
    limit for one window. Several controllers each enforce their own limit.
    """

    def __init__(self, per_account: int, per_source: int, window: float) -> None:
        self.per_account = per_account
        self.per_source = per_source
        self.window = window
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._failures[key]
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def retry_after(self, account: str, source: str) -> float:
        """Seconds until a login may be tried again; 0 when allowed now."""
        now = time.monotonic()
        waits = []
        for key, limit in ((("account", account), self.per_account), (("source", source), self.per_source)):
            q = self._recent(key, now)
            if len(q) >= limit:
                waits.append(q[0] + self.window - now)
        return max(waits, default=0.0)

    def failed(self, account: str, source: str) -> None:
        now = time.monotonic()
        self._failures[("account", account)].append(now)
        self._failures[("source", source)].append(now)

    def succeeded(self, account: str) -> None:
        self._failures.pop(("account", account), None)


class RevisionWatch:
    """Wakes long-polling watchers when the config revision moves.

    Writes in this process notify at once; with PostgreSQL another controller
    may write, so a poller also reads the revision every ``poll`` seconds.
    """

    def __init__(self, db: Database, poll: float = 0.25) -> None:
        self.db = db
        self.poll = poll
        self.current = 0
        self._cond = asyncio.Condition()
        self._poller: asyncio.Task[None] | None = None
        self._wakers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.current = await self.db.revision()
        self.db.on_revision = self.notify
        if not self.db.is_sqlite:
            self._poller = asyncio.create_task(self._poll_loop(), name="revision-poller")
            self._poller.add_done_callback(self._poller_done)

    def _poller_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("revision poller stopped: %s", task.exception())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass

    def notify(self, revision: int) -> None:
        if revision > self.current:
            self.current = revision
            task = asyncio.get_running_loop().create_task(self._wake())
            # Keep a reference until it ran: the loop holds tasks only weakly.
            self._wakers.add(task)
            task.add_done_callback(self._waker_done)

    def _waker_done(self, task: asyncio.Task[None]) -> None:
        self._wakers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("waking revision watchers failed: %s", task.exception())

    async def _wake(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                self.notify(await self.db.revision())
            except Exception as exc:  # keep watching through a database blip
                log.warning("revision poll failed: %s", exc)

    async def wait_past(self, revision: int, seconds: float) -> int:
        """Return the current revision as soon as it is above ``revision``, or at timeout."""
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: self.current > revision), seconds)
            except TimeoutError:
                pass
            return self.current


def _as_problem(exc: Exception, object_type: str) -> ApiProblem:
    if isinstance(exc, ApiProblem):
        return exc
    if isinstance(exc, ValidationError):
        # Raised when a handler re-validates a merged update (e.g. PATCH).
        return Unprocessable(
            "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or object_type}: {e['msg']}" for e in exc.errors()
            )
        )
    return Conflict(
        f"{object_type} conflicts with an existing object (name or key already in use, or it is still referenced)"
    )


@dataclass
class Mutation:
    """Handed to a handler inside :meth:`ControllerState.mutation`; the handler
    fills in what it changed and the wrapper writes the audit record."""

    tx: WriteTx
    object_id: str | int = ""
    details: dict[str, Any] = field(default_factory=dict)
    config_change: bool = True


@dataclass
class ControllerState:
    settings: ControllerSettings
    db: Database
    ca_pem: bytes
    ca_key_pem: bytes
    throttle: LoginThrottle
    watch: RevisionWatch
    policies: PolicyCache = field(default_factory=PolicyCache)

    @asynccontextmanager
    async def mutation(
        self, who: Principal, action: str, object_type: str, object_id: str | int = ""
    ) -> AsyncIterator[Mutation]:
        """One audited change. On any failure nothing changes and a failure
        record is appended instead, in its own transaction."""
        m: Mutation | None = None
        try:
            async with self.db.write() as tx:
                m = Mutation(tx=tx, object_id=object_id)
                yield m
                if m.config_change:
                    tx.bump()
                tx.audit(
                    actor=who.actor,
                    source=who.source,
                    action=action,
                    object_type=object_type,
                    object_id=m.object_id,
                    details=m.details,
                )
        except (IntegrityError, ValidationError, ApiProblem) as exc:
            # Record what the handler had learnt (object, key hint, name) with the refusal.
            problem = _as_problem(exc, object_type)
            await self.audit_failure(
                who,
                action,
                object_type,
                m.object_id if m else object_id,
                problem.message,
                m.details if m else None,
            )
            if problem is exc:
                raise
            raise problem from exc

    async def audit_failure(
        self,
        who: Principal,
        action: str,
        object_type: str,
        object_id: str | int,
        error: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        async with self.db.write() as tx:
            tx.audit(
                actor=who.actor,
                source=who.source,
                action=action,
                object_type=object_type,
                object_id=object_id,
                outcome="denied",
                details={"error": error, **(details or {})},
            )
