"""Objects by their unique name: one, several (one ``IN`` query per chunk), or
a check that a name is still free.

``what`` is how messages name the kind of object ("connector group").
Accounts are named by ``username``, everything else by ``name``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from zerogate.controller.services.membership import chunks
from zerogate.controller.state import Conflict, NotFound
from zerogate.store.models import (
    Account,
    Application,
    Connector,
    ConnectorGroup,
    Gateway,
    Group,
    Policy,
    SegmentServer,
)

Named = TypeVar(
    "Named", Account, Group, ConnectorGroup, Gateway, Application, Policy, Connector, SegmentServer
)


def name_column(model: type[Any]) -> InstrumentedAttribute[str]:
    """The column that names a row of ``model``."""
    column: InstrumentedAttribute[str] = model.username if model is Account else model.name
    return column


async def by_name(session: AsyncSession, model: type[Named], name: str, what: str) -> Named:
    """The row named ``name``; NotFound when there is none."""
    row = await session.scalar(select(model).where(name_column(model) == name))
    if row is None:
        raise NotFound(f"no {what} named {name!r}")
    return row


async def all_by_name(session: AsyncSession, model: type[Named], names: list[str], what: str) -> list[Named]:
    """The named rows in the order given (each once); one IN query per chunk,
    not one per name. A NotFound names the first one missing."""
    wanted = list(dict.fromkeys(names))
    column = name_column(model)
    found: dict[str, Named] = {}
    for part in chunks(wanted):
        found.update(
            (getattr(row, column.key), row)
            for row in await session.scalars(select(model).where(column.in_(part)))
        )
    for name in wanted:
        if name not in found:
            raise NotFound(f"no {what} named {name!r}")
    return [found[name] for name in wanted]


async def ensure_free(session: AsyncSession, model: type[Named], name: str, what: str) -> None:
    """Conflict when a row of ``model`` is already named ``name``."""
    if await session.scalar(select(func.count()).select_from(model).where(name_column(model) == name)):
        raise Conflict(f"a {what} named {name!r} already exists")
