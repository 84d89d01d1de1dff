"""What every API handler shares: settings, database, CA, brute-force
throttle, revision watching, and the mutation wrapper that audits success and
failure (refusals of strangers aggregated, see :mod:`refusals`).

Errors raised by services: :class:`ApiProblem` and its subclasses; the app
turns them into ``{"detail": message}`` with their status code.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from zerogate.controller import background
from zerogate.controller.config import ControllerSettings
from zerogate.controller.flow_export import SyslogExporter
from zerogate.controller.metrics import ControllerMetrics
from zerogate.controller.policy_cache import PolicyCache
from zerogate.controller.refusals import RefusalAudit
from zerogate.controller.services.report_history import HistoryPolicy, Recorder
from zerogate.controller.throttle import Throttle, retry_after
from zerogate.store.db import REVISION_CHANNEL, Database, WriteTx, asyncpg_dsn

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

    kind: str  # admin | user | device | metrics (a token for GET /metrics only) | anonymous
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


class RevisionWatch:
    """Wakes long-polling watchers when the config revision moves.

    Writes in this process notify at once. With PostgreSQL another controller
    may write: each revision bump is announced with ``NOTIFY zerogate_revision``
    (see :mod:`zerogate.store.db`), which a dedicated asyncpg connection
    LISTENs for. That connection is re-opened whenever it drops (logged), and
    after each (re)connect the revision is read once, so notifications missed
    while deaf are caught up. A slow poll every ``poll`` seconds stays as the
    safety net; ``listen=False`` turns LISTEN off (the old polling behaviour,
    kept for the benchmark's baseline).

    :meth:`go_away` (called when the server is told to stop) wakes every
    watcher at once and makes later waits return at once: ``going_away`` tells
    the route to answer "controller going away" instead of holding the
    request until the graceful-shutdown timeout cancels it.
    """

    LISTENER_NAME = "zerogate-revision-listen"  # application_name of the LISTEN connection

    def __init__(self, db: Database, poll: float = 5.0, *, listen: bool = True, retry: float = 1.0) -> None:
        self.db = db
        self.poll = poll
        self.listen = listen
        self.retry = retry  # pause before re-opening a dropped LISTEN connection
        self.current = 0
        self._cond = asyncio.Condition()
        self._poller: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()  # a notification announced a newer revision
        self._wakers: set[asyncio.Task[None]] = set()
        self.going_away = False
        self.waiting = 0  # long-polls waiting now (the metric zerogate_watchers)
        self.listening = False  # a LISTEN connection is open now
        self.listens = 0  # how many times LISTEN was (re)established

    async def start(self) -> None:
        self.current = await self.db.revision()
        self.db.on_revision = self.notify
        if not self.db.is_sqlite:
            self._poller = background.start(self._poll_loop(), "revision poller")
            if self.listen:
                self._refresher = background.start(self._refresh_loop(), "revision refresher")
                self._listener = background.start(self._listen_loop(), "revision listener")

    async def stop(self) -> None:
        await background.stop(self._listener)
        await background.stop(self._refresher)
        await background.stop(self._poller)

    def notify(self, revision: int) -> None:
        if revision > self.current:
            self.current = revision
            self._start_waker()

    def go_away(self) -> None:
        """The server is stopping: end every long-poll now (call in the event loop)."""
        if not self.going_away:
            self.going_away = True
            self._start_waker()

    def _start_waker(self) -> None:
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

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        # Any role that can connect may NOTIFY on this channel, so the payload
        # is only a hint: the revision itself is read from the database.
        if not re.fullmatch(r"[0-9]{1,18}", payload):
            log.warning("ignored a malformed revision notification")
        elif int(payload) > self.current:
            self._kick.set()

    async def _refresh_loop(self) -> None:
        """Read the revision after notifications; a burst of them costs one read."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            try:
                self.notify(await self.db.revision())
            except Exception as exc:  # the poll and the next notification retry
                log.warning("revision read after a notification failed: %s", exc)

    async def _listen_loop(self) -> None:
        """Keep one LISTEN connection open for as long as the controller runs."""
        import asyncpg  # type: ignore[import-untyped]  # no stubs; used through a few calls

        dsn = asyncpg_dsn(self.db.url)
        failures = 0
        while True:
            conn = None
            try:
                conn = await asyncio.wait_for(
                    asyncpg.connect(dsn, server_settings={"application_name": self.LISTENER_NAME}), self.poll
                )
                dropped = asyncio.Event()
                conn.add_termination_listener(lambda _c, ev=dropped: ev.set())
                await conn.add_listener(REVISION_CHANNEL, self._on_notification)
                self.listening = True
                self.listens += 1
                if failures or self.listens > 1:
                    log.warning("revision listener connected again")
                failures = 0
                # Catch up on whatever was announced while nobody listened.
                self.notify(
                    int(await conn.fetchval("SELECT revision FROM deployment_state WHERE id = 1") or 0)
                )
                while not dropped.is_set():
                    try:
                        await asyncio.wait_for(dropped.wait(), self.poll)
                    except TimeoutError:
                        # A quiet connection may be dead without the socket
                        # knowing (a partition): prove it alive now and then.
                        await asyncio.wait_for(conn.fetchval("SELECT 1"), self.poll)
                log.warning("revision listener lost its connection; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect after any failure, quietly after the first
                failures += 1
                if failures == 1:
                    log.warning(
                        "revision listener failed (%s); retrying every %.1f s", type(exc).__name__, self.retry
                    )
            finally:
                self.listening = False
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(self.retry)

    async def wait_past(self, revision: int, seconds: float) -> int:
        """Return the current revision as soon as it is above ``revision``, or at
        timeout, or at once when the server is going away (see ``going_away``)."""
        self.waiting += 1
        try:
            async with self._cond:
                try:
                    await asyncio.wait_for(
                        self._cond.wait_for(lambda: self.current > revision or self.going_away), seconds
                    )
                except TimeoutError:
                    pass
                return self.current
        finally:
            self.waiting -= 1


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
    throttle: Throttle
    watch: RevisionWatch
    refusals: RefusalAudit
    policies: PolicyCache = field(default_factory=PolicyCache)
    metrics: ControllerMetrics = field(init=False)
    history: Recorder = field(init=False)  # samples of the devices' reports (report_history)
    flow_export: SyslogExporter | None = None  # set while the app runs with flow_syslog (api/flows)

    def __post_init__(self) -> None:
        self.history = Recorder(
            HistoryPolicy(self.settings.report_history_interval, self.settings.report_history_days)
        )
        watch = self.watch
        self.metrics = ControllerMetrics(lambda: watch.current, lambda: watch.waiting)
        self.policies.observe_compile = self.metrics.policy_compile_seconds.observe

    @asynccontextmanager
    async def mutation(
        self,
        who: Principal,
        action: str,
        object_type: str,
        object_id: str | int = "",
        *,
        aggregate: bool = False,
    ) -> AsyncIterator[Mutation]:
        """One audited change. On any failure nothing changes and a failure
        record is appended instead, in its own transaction. ``aggregate`` is for
        requests from strangers (sign-in, enrollment): their refusals are
        aggregated, so repeated ones cannot grow the database."""
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
            await self.refused(
                who,
                action,
                object_type,
                m.object_id if m else object_id,
                problem.message,
                m.details if m else None,
                aggregate=aggregate,
            )
            if problem is exc:
                raise
            raise problem from exc

    async def refused(
        self,
        who: Principal,
        action: str,
        object_type: str,
        object_id: str | int,
        error: str,
        details: dict[str, Any] | None = None,
        *,
        aggregate: bool = True,
    ) -> None:
        """Audit a refusal. Strangers' (``aggregate``) are aggregated per
        (source, action) so they cannot grow the database; others get a record each."""
        await self.refusals.record(
            actor=who.actor,
            source=who.source,
            action=action,
            object_type=object_type,
            object_id=object_id,
            error=error,
            details=details,
            aggregate=aggregate,
        )

    @asynccontextmanager
    async def key_attempt(
        self, who: Principal, action: str, object_type: str, details: dict[str, Any] | None = None
    ) -> AsyncIterator[None]:
        """A check of a provisioning key, activation or bootstrap code from
        ``who.source``: refused with 429 while that source is throttled, and
        a wrong key or code (401/403) counts against the source."""
        wait = self.throttle.key_wait(who.source)
        if wait > 0:
            await self.refused(who, action, object_type, "", "rate limited", details)
            raise TooManyAttempts(
                f"too many refused keys or codes from this address; try again in {retry_after(wait)} s",
                headers={"Retry-After": retry_after(wait)},
            )
        try:
            yield
        except ApiProblem as exc:
            if exc.status in (Unauthorized.status, Forbidden.status):
                self.throttle.key_failed(who.source)
            raise
