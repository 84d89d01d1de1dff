"""The controller's services on a real, migrated SQLite database, without HTTP.

``steps(url)`` runs each unit of work in a transaction of its own that commits
on success and rolls back on a refusal, as a request would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.policy.pool import DEFAULT_BLOCKS
from zerogate.store.db import Database, upgrade_schema, utcnow
from zerogate.store.models import AddressPoolRow

T = TypeVar("T")


class Step(Protocol):
    def __call__(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T: ...


def migrated(tmp_path: Path) -> str:
    """A fresh SQLite database below ``tmp_path`` at the current schema; its URL."""
    url = f"sqlite:///{tmp_path / 'zerogate.db'}"
    upgrade_schema(url)
    return url


def on_database(url: str, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work`` with an open :class:`Database` (closed afterwards) on a fresh event loop."""

    async def go() -> T:
        db = Database(url)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(go())


def steps(url: str) -> Step:
    """See the module docstring."""

    def run(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async def one(db: Database) -> T:
            async with db.sessions() as session, session.begin():
                return await work(session)

        return on_database(url, one)

    return run


async def seed_default_pool(session: AsyncSession) -> None:
    """The default client address pool, as ``controller init`` seeds it."""
    session.add(AddressPoolRow(name="default", blocks=[str(b) for b in DEFAULT_BLOCKS], created_at=utcnow()))
