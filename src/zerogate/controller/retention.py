"""Bounded retention of the controller's growing tables (flow records, report history).

:func:`delete_older` deletes the rows of a table whose time column is older than a
cut-off, ``batch`` rows per transaction (the oldest first, by the time index, deleted by
primary key), so a week of backlog never holds the database's write lock for long:
writers get in between batches. :class:`Pruner` runs it every ``every`` seconds in the
background with a cut-off of ``days`` ago (0 days: nothing is kept).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import InstrumentedAttribute

from zerogate.controller import background
from zerogate.store.db import Database, utcnow

log = logging.getLogger(__name__)

PRUNE_EVERY = 300.0  # seconds between rounds


async def delete_older(
    db: Database,
    key: InstrumentedAttribute[int],
    at: InstrumentedAttribute[Any],
    before: datetime,
    batch: int,
) -> int:
    """Delete the rows whose ``at`` is before ``before``, ``batch`` per transaction
    (``key``: the table's primary key); how many."""
    table = key.class_
    total = 0
    while True:
        oldest = select(key).where(at < before).order_by(at).limit(batch)
        gone = delete(table).where(key.in_(oldest.scalar_subquery()))
        async with db.write() as tx:
            result = await tx.session.execute(gone.execution_options(synchronize_session=False))
        deleted = int(getattr(result, "rowcount", 0) or 0)
        total += deleted
        if deleted < batch:
            return total
        await asyncio.sleep(0)  # let writers take the write lock between batches


@dataclass
class Pruner:
    """Deletes ``what`` (e.g. "flow records") older than ``days`` every ``every`` seconds."""

    db: Database
    what: str
    key: InstrumentedAttribute[int]
    at: InstrumentedAttribute[Any]
    days: float
    batch: int
    every: float = PRUNE_EVERY
    task: asyncio.Task[None] | None = None
    pruned: int = 0  # rows deleted since start (tests, logs)

    def start(self) -> None:
        self.task = background.start(self._loop(), f"{self.what} pruner")

    async def stop(self) -> None:
        await background.stop(self.task)
        self.task = None

    async def run_once(self) -> int:
        deleted = await delete_older(
            self.db, self.key, self.at, utcnow() - timedelta(days=self.days), self.batch
        )
        self.pruned += deleted
        if deleted:
            log.info("%s: %d older than %g days deleted", self.what, deleted, self.days)
        return deleted

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # a database blip must not end pruning for good
                log.warning("%s: prune failed: %s", self.what, exc)
            await asyncio.sleep(self.every)
