"""Audit refusals of unauthenticated requests without letting them grow the database.

A failed sign-in or enrollment comes from someone the controller does not
know, so writing one audit record per refusal would let anyone fill the
database. :class:`RefusalAudit` writes the first refusal per (source, action)
in a window as usual; further ones are counted in memory and written as one
summary record ("N further refusals from S in the last W s") when the window
ends, when the next record for that key is written, or at shutdown. No refusal
is silently lost: each is either a record or counted in a summary. A window
of 0 turns aggregation off (a record per refusal).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zerogate.controller import background
from zerogate.store.db import Database, WriteTx

log = logging.getLogger(__name__)

# Bounds on what a summary carries and on the keys kept in memory.
MAX_OBJECTS_PER_SUMMARY = 20
MAX_OBJECT_ID_LENGTH = 64
MAX_PENDING_KEYS = 10_000


@dataclass
class _Window:
    opened: float
    actor: str
    object_type: str
    count: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    objects: Counter[str] = field(default_factory=Counter)

    def add(self, error: str, object_id: str) -> None:
        self.count += 1
        self.errors[error] += 1
        object_id = object_id[:MAX_OBJECT_ID_LENGTH]
        if object_id in self.objects or len(self.objects) < MAX_OBJECTS_PER_SUMMARY:
            self.objects[object_id] += 1
        else:
            self.objects["(others)"] += 1


class RefusalAudit:
    """Audit records for refusals, aggregated per (source, action) and window."""

    def __init__(self, db: Database, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.window = window
        self.clock = clock
        self._open: dict[tuple[str, str], _Window] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def record(
        self,
        *,
        actor: str,
        source: str,
        action: str,
        object_type: str,
        object_id: str | int,
        error: str,
        details: dict[str, Any] | None = None,
        aggregate: bool = True,
    ) -> None:
        """One refusal: a record of its own, or counted into its key's window
        when ``aggregate`` (and the window is not 0)."""
        key = (source, action)
        now = self.clock()
        current = None
        if aggregate and self.window > 0:
            current = self._open.get(key)
            if current is not None and now - current.opened < self.window:
                current.add(error, str(object_id))
                return
            # Claim the key before awaiting, so concurrent refusals count into it.
            self._open[key] = _Window(opened=now, actor=actor, object_type=object_type)
        async with self.db.write() as tx:
            if current is not None:
                self._summarise(tx, key, current, now)
            tx.audit(
                actor=actor,
                source=source,
                action=action,
                object_type=object_type,
                object_id=object_id,
                outcome="denied",
                details={"error": error, **(details or {})},
            )
        if len(self._open) > MAX_PENDING_KEYS:
            await self.flush(everything=True)

    def _summarise(self, tx: WriteTx, key: tuple[str, str], w: _Window, now: float) -> None:
        if not w.count:
            return
        source, action = key
        seconds = max(1, round(min(now, w.opened + self.window) - w.opened))
        tx.audit(
            actor=w.actor,
            source=source,
            action=action,
            object_type=w.object_type,
            outcome="denied",
            details={
                "error": f"{w.count} further refusals from {source or 'an unknown source'} "
                f"in the last {seconds} s",
                "refusals": w.count,
                "window_seconds": seconds,
                "errors": dict(w.errors),
                "objects": dict(w.objects),
            },
        )

    async def flush(self, *, everything: bool = False) -> None:
        """Write summaries of windows that ended (all of them when ``everything``)."""
        now = self.clock()
        ended = [k for k, w in self._open.items() if everything or now - w.opened >= self.window]
        if not ended:
            return
        windows = [(k, self._open.pop(k)) for k in ended]
        if not any(w.count for _, w in windows):
            return
        try:
            async with self.db.write() as tx:
                for key, w in windows:
                    self._summarise(tx, key, w, now)
        except Exception:
            # Keep the counts for the next flush rather than lose them.
            for key, w in windows:
                self._open.setdefault(key, w)
            raise

    # -- background flushing

    def start(self) -> None:
        if self.window <= 0:
            return
        self._flusher = background.start(self._flush_loop(), "refusal audit flusher")

    async def stop(self) -> None:
        """Stop flushing periodically and write every pending summary."""
        await background.stop(self._flusher)
        self._flusher = None
        await self.flush(everything=True)

    async def _flush_loop(self) -> None:
        # Often enough that a summary appears soon after its window ends.
        interval = min(max(self.window / 4, 0.2), 30.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
            except Exception as exc:  # keep flushing through a database blip
                log.warning("writing refusal summaries failed: %s", exc)
