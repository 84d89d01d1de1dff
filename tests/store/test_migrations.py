"""The Alembic migrations against the real databases: upgraded to head they
hold exactly the tables and columns of the SQLAlchemy models; the newest
migration goes down and up again and keeps the rows it does not own."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from zerogate.store.db import MIGRATIONS_DIR, async_url, upgrade_schema
from zerogate.store.models import Base


def _config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = async_url(url)
    return cfg


def _on(url: str, work: Any) -> Any:
    async def go() -> Any:
        engine = create_async_engine(async_url(url))
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _differences(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": False})
    return [d for d in compare_metadata(context, Base.metadata)]


def test_head_matches_the_models(database_url: str) -> None:
    upgrade_schema(database_url)
    assert _on(database_url, _differences) == []


def test_segment_migration_goes_down_and_up(database_url: str) -> None:
    upgrade_schema(database_url)
    _on(
        database_url,
        lambda c: c.execute(
            text(
                "INSERT INTO connector_groups (name, description, subnets, snat, created_at) "
                "VALUES ('site', '', '[\"10.1.0.0/24\"]', true, '2026-01-01 00:00:00+00:00')"
            )
        ),
    )
    command.downgrade(_config(database_url), "0003")

    def tables(conn: Connection) -> set[str]:
        from sqlalchemy import inspect

        return set(inspect(conn).get_table_names())

    assert not {t for t in _on(database_url, tables) if t.startswith("segment_")}
    upgrade_schema(database_url)
    assert {"segment_servers", "segment_assets", "segment_flows", "segment_rules"} <= _on(
        database_url, tables
    )
    assert _on(database_url, _differences) == []
    names = _on(database_url, lambda c: [r[0] for r in c.execute(text("SELECT name FROM connector_groups"))])
    assert names == ["site"]
