"""Several controllers on one PostgreSQL, the database side: schema upgrades
under the advisory lock (controllers that start at once against one fresh
database upgrade one after the other; an upgrade really waits while another
session holds the lock, seen in ``pg_locks``), and revision bumps announced
with NOTIFY when, and only when, they commit.

Each upgrade runs in its own process, as two controllers would."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text

from pgserver import PostgresServer
from zerogate.netops.command import spawn, stop
from zerogate.store.db import (
    MIGRATIONS_DIR,
    REVISION_CHANNEL,
    SCHEMA_LOCK_KEY,
    Database,
    asyncpg_dsn,
    upgrade_schema,
    utcnow,
)
from zerogate.store.models import DeploymentState
from zerogate.testbed.lab import wait_for

pytestmark = pytest.mark.postgres

UPGRADE = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
from zerogate.store.db import upgrade_schema
upgrade_schema(sys.argv[1])
"""


def head() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    rev = ScriptDirectory.from_config(cfg).get_current_head()
    assert rev is not None
    return rev


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def versions(server: PostgresServer, url: str) -> list[str]:
    """The rows of ``alembic_version``; none before any migration created it."""
    if server.psql("SELECT to_regclass('alembic_version') IS NULL", dbname(url)).strip() == "t":
        return []
    out: str = server.psql("SELECT version_num FROM alembic_version", dbname(url))
    return out.split()


def lock_waiters(server: PostgresServer, url: str) -> int:
    """Sessions waiting (not granted) for the schema lock in ``url``'s database."""
    high, low = SCHEMA_LOCK_KEY >> 32, SCHEMA_LOCK_KEY & 0xFFFFFFFF
    out = server.psql(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        f"WHERE l.locktype = 'advisory' AND l.classid = {high} AND l.objid = {low} "
        f"AND l.objsubid = 1 AND NOT l.granted AND d.datname = '{dbname(url)}'",
    )
    return int(out.strip())


def start_upgrade(url: str, log: Path) -> Any:
    with log.open("wb") as out:
        return spawn([sys.executable, "-c", UPGRADE, url], stdout=out)


def finish(proc: Any, timeout: float = 60.0) -> int:
    try:
        return int(proc.wait(timeout))
    finally:
        stop([proc])


def test_two_controllers_upgrading_at_once_both_succeed_and_the_schema_is_at_head_once(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    logs = [tmp_path / "zpg-a.log", tmp_path / "zpg-b.log"]
    procs = [start_upgrade(postgres_url, log) for log in logs]
    codes = [finish(p) for p in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts
    assert versions(postgres_server, postgres_url) == [head()]


def test_an_upgrade_waits_while_the_schema_lock_is_held(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    loop = asyncio.new_event_loop()
    holder = loop.run_until_complete(asyncpg.connect(asyncpg_dsn(postgres_url)))
    log = tmp_path / "zpg-upgrade.log"
    proc = None
    try:
        assert loop.run_until_complete(holder.fetchval("SELECT pg_try_advisory_lock($1)", SCHEMA_LOCK_KEY))
        proc = start_upgrade(postgres_url, log)
        wait_for(
            lambda: lock_waiters(postgres_server, postgres_url) == 1, 30, "the upgrade to wait for the lock"
        )
        assert proc.poll() is None
        assert versions(postgres_server, postgres_url) == []  # nothing migrated while it waits
        assert "waiting for the schema lock" in log.read_text()
        loop.run_until_complete(holder.execute("SELECT pg_advisory_unlock($1)", SCHEMA_LOCK_KEY))
        assert finish(proc) == 0, log.read_text()
        proc = None
        assert versions(postgres_server, postgres_url) == [head()]
        assert lock_waiters(postgres_server, postgres_url) == 0
    finally:
        if proc is not None:
            stop([proc])
        loop.run_until_complete(holder.close())
        loop.close()


def test_a_revision_bump_is_announced_when_it_commits_and_only_then(postgres_url: str) -> None:
    """NOTIFY goes out with the committing write; a rolled-back bump and a write
    without a bump announce nothing (the next announcement is the next commit's)."""
    upgrade_schema(postgres_url)

    async def go() -> list[str]:
        db = Database(postgres_url)
        heard: asyncio.Queue[str] = asyncio.Queue()
        listener = await asyncpg.connect(asyncpg_dsn(postgres_url))
        try:
            await listener.add_listener(
                REVISION_CHANNEL, lambda _c, _p, _ch, payload: heard.put_nowait(payload)
            )
            async with db.sessions() as session, session.begin():
                session.add(DeploymentState(id=1, revision=7, created_at=utcnow()))
            async with db.write() as tx:
                tx.bump()
            got = [await asyncio.wait_for(heard.get(), 10)]
            with pytest.raises(RuntimeError):
                async with db.write() as tx:
                    tx.bump()
                    raise RuntimeError("roll back")
            async with db.write() as tx:
                tx.audit(actor="zpg-test", action="no.bump")
            async with db.write() as tx:
                tx.bump()
            # A marker committed last: everything announced before it arrives before it.
            async with db.engine.begin() as conn:
                await conn.execute(text("SELECT pg_notify(:c, 'end')"), {"c": REVISION_CHANNEL})
            while got[-1] != "end":
                got.append(await asyncio.wait_for(heard.get(), 10))
            assert await db.revision() == 9
            return got
        finally:
            await listener.close()
            await db.close()

    assert asyncio.run(go()) == ["8", "9", "end"]
