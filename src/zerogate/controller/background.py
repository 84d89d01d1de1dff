"""Long-running background tasks of the controller, started and stopped one way.

A task's failure is logged (a silently dead poller would stop config watches
or refusal summaries without a word), and stopping waits for it to finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


def start(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Run ``coro`` as a task; keep the returned reference (the loop holds tasks weakly)."""
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(_log_failure)
    return task


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped: %s", task.get_name(), task.exception())


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
