"""Database access: engines for SQLite and PostgreSQL, write transactions,
migrations.

Every change goes through :meth:`Database.write`, which serialises writers (an
in-process lock, plus a row lock on ``deployment_state`` for PostgreSQL where
several controllers may share the database). Inside it a mutation may bump the
config revision and appends its audit record, so the change, the revision and
the audit chain commit together or not at all. With an :class:`AuditAnchor`
each record also gets its MAC, and after the commit the newest record is
checkpointed to the anchor file outside the database.

Several controllers may share one PostgreSQL database. A write that bumps the
revision also sends ``NOTIFY zerogate_revision, '<revision>'`` in its own
transaction (delivered only if it commits), so the other controllers' watchers
wake at once (see ``RevisionWatch``); and :func:`upgrade_schema` holds a
PostgreSQL advisory lock around Alembic, so two controllers starting together
cannot both run the same migration: the second waits, then finds nothing to do.

Errors: :class:`DatabaseError` for a URL we cannot use or a database we cannot
reach or migrate; SQLAlchemy errors from queries propagate unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from zerogate.model.audit import AuditEntry, entry_hash
from zerogate.store.anchor import AuditAnchor
from zerogate.store.models import AuditRecord, DeploymentState

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# The channel every revision bump is announced on (payload: the new revision).
REVISION_CHANNEL = "zerogate_revision"
# pg_advisory_lock key held around schema upgrades: any fixed 64-bit number
# nothing else in the database uses ("zgschema" as ASCII).
SCHEMA_LOCK_KEY = 0x7A67736368656D61


class DatabaseError(Exception):
    """The database URL is unusable or the database cannot be reached/migrated."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def async_url(url: str) -> str:
    """Map a user-facing URL (sqlite:///..., postgresql://...) to its async driver."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"not a database URL: {url!r} ({exc})") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise DatabaseError("SQLite needs a file path: sqlite:////var/lib/zerogate/zerogate.db")
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise DatabaseError(
        f"unsupported database {backend!r}: use sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
    )


def redact_url(url: str) -> str:
    """The URL as it may appear in logs and output: never with its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


def create_engine(url: str) -> AsyncEngine:
    engine = create_async_engine(async_url(url), pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets the API read while a writer commits; foreign keys are off
            # by default in SQLite and we rely on them.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

    return engine


def asyncpg_dsn(url: str) -> str:
    """The ``postgresql://`` DSN of a PostgreSQL URL, for a plain asyncpg connection
    (schema lock, revision listener) outside SQLAlchemy's pool."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"not a database URL: {exc}") from None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise DatabaseError("not a PostgreSQL URL")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class WriteTx:
    """One write transaction. ``audit`` adds to the chain; ``bump`` marks that
    the distributed config changed, so watchers get a new revision."""

    session: AsyncSession
    state: DeploymentState
    anchor: AuditAnchor | None = None
    bumped: bool = False
    appended: list[tuple[int, str]] = field(default_factory=list)  # (id, hash) of each new record

    def bump(self) -> None:
        if not self.bumped:
            self.state.revision += 1
            self.bumped = True

    def audit(
        self,
        *,
        actor: str,
        action: str,
        outcome: str = "success",
        object_type: str = "",
        object_id: str | int = "",
        source: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        entry = AuditEntry(
            id=self.state.audit_head_id + 1,
            at=utcnow(),
            actor=actor,
            source=source,
            action=action,
            object_type=object_type,
            object_id=str(object_id),
            outcome=outcome,
            details=details or {},
            prev_hash=self.state.audit_head_hash,
        )
        digest = entry_hash(entry)
        self.session.add(
            AuditRecord(
                id=entry.id,
                at=entry.at,
                actor=entry.actor,
                source=entry.source,
                action=entry.action,
                object_type=entry.object_type,
                object_id=entry.object_id,
                outcome=entry.outcome,
                details=entry.details,
                prev_hash=entry.prev_hash,
                hash=digest,
                mac=self.anchor.mac(digest) if self.anchor is not None else None,
            )
        )
        self.appended.append((entry.id, digest))
        self.state.audit_head_id = entry.id
        self.state.audit_head_hash = digest


class Database:
    def __init__(self, url: str, anchor: AuditAnchor | None = None) -> None:
        self.url = url
        self.anchor = anchor
        self.engine = create_engine(url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = asyncio.Lock()
        self.on_revision: Callable[[int], None] | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[WriteTx]:
        async with self._write_lock:
            async with self.sessions() as session, session.begin():
                query = select(DeploymentState).where(DeploymentState.id == 1)
                if not self.is_sqlite:
                    query = query.with_for_update()
                state = (await session.execute(query)).scalar_one_or_none()
                if state is None:
                    raise DatabaseError("the database is not initialised: run 'zerogate controller init'")
                tx = WriteTx(session=session, state=state, anchor=self.anchor)
                yield tx
                if tx.bumped and not self.is_sqlite:
                    # Sent by PostgreSQL at commit, and only if it commits.
                    await session.execute(
                        text("SELECT pg_notify(:channel, :payload)"),
                        {"channel": REVISION_CHANNEL, "payload": str(tx.state.revision)},
                    )
            # Committed. Still under the lock, so this controller's checkpoints
            # are in id order; one short append, no fsync (a lost checkpoint
            # only makes the anchor a little older, never wrong).
            if tx.appended and self.anchor is not None:
                try:
                    self.anchor.checkpoint(*tx.appended[-1])
                except OSError as exc:
                    # The change is committed and must be reported as such.
                    log.error("audit anchor %s not written: %s", self.anchor.path, exc)
        if tx.bumped and self.on_revision is not None:
            self.on_revision(tx.state.revision)

    async def revision(self, session: AsyncSession | None = None) -> int:
        """The config revision; in ``session`` when given, so it matches what that session reads."""
        if session is not None:
            return await read_revision(session)
        async with self.read() as own:
            return await read_revision(own)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


async def read_revision(session: AsyncSession) -> int:
    rev = await session.scalar(select(DeploymentState.revision).where(DeploymentState.id == 1))
    return int(rev or 0)


def upgrade_schema(url: str, *, lock: bool = True) -> None:
    """Apply every pending Alembic migration (synchronous; call outside an event loop).

    On PostgreSQL this holds ``pg_advisory_lock(SCHEMA_LOCK_KEY)`` on a
    dedicated connection across the whole upgrade, so controllers starting at
    once upgrade one after the other (the later ones find the schema current).
    ``lock=False`` is for tests that show the race the lock prevents.
    SQLite needs no lock: its file lock serialises the migrations already.
    """
    from alembic import command
    from alembic.config import Config

    create_private_sqlite_file(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = async_url(url)
    try:
        if lock and sqlite_path(url) is None:
            asyncio.run(_upgrade_locked(url, lambda: command.upgrade(cfg, "head")))
        else:
            command.upgrade(cfg, "head")
    except DatabaseError:
        raise
    except Exception as exc:  # translate driver errors at the boundary
        raise DatabaseError(f"cannot migrate {redact_url(url)}: {type(exc).__name__}: {exc}") from exc


async def _upgrade_locked(url: str, upgrade: Callable[[], None]) -> None:
    """Run ``upgrade`` (it starts its own event loop, hence the thread) while
    this connection holds the schema lock. The lock is a session lock: it goes
    when we unlock or when the connection ends, even if this process dies."""
    import asyncpg  # type: ignore[import-untyped]  # no stubs; used through a few calls

    conn = await asyncpg.connect(
        asyncpg_dsn(url), server_settings={"application_name": "zerogate-schema-upgrade"}
    )
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SCHEMA_LOCK_KEY):
            log.info("waiting for the schema lock: another controller is upgrading %s", redact_url(url))
            await conn.execute("SELECT pg_advisory_lock($1)", SCHEMA_LOCK_KEY)
            log.info("got the schema lock")
        try:
            await asyncio.to_thread(upgrade)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", SCHEMA_LOCK_KEY)
    finally:
        await conn.close()


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other databases."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def create_private_sqlite_file(url: str) -> None:
    """Create a new SQLite file 0600 before SQLite does (it would honour the
    umask, usually 0644): it holds password hashes and TOTP secrets. SQLite
    gives its -wal and -shm files the mode of the database file."""
    path = sqlite_path(url)
    if path is None or path.exists():
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise DatabaseError(f"cannot create the database file {path}: {exc.strerror}") from None
