"""Numeric object ids from request paths, mapped to what the database can hold.

Row ids are INTEGER columns: 32 bits on PostgreSQL, 64 on SQLite. A path
may carry any integer (``2**31``, ``2**63``, 4,000 digits); handed to the
database, one past the column's range is a driver overflow and a 500, and the
refused mutation would go unaudited. A path id is therefore accepted as any
integer, and one outside ``1..2**31-1`` (what both databases hold; ids count
up from 1) is simply an object that does not exist: the handler raises
NotFound inside its audited mutation, like for any other unknown id.
"""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

MAX_ROW_ID = 2**31 - 1  # a PostgreSQL INTEGER
_SHOWN_DIGITS = 20  # 2**63 has 19; audit object ids hold 64 characters

T = TypeVar("T")


def row_id(value: int) -> int | None:
    """``value`` if a row could have it, else None."""
    return value if 1 <= value <= MAX_ROW_ID else None


def shown_id(value: int) -> str:
    """The id as messages and audit records show it: at most 22 characters, whatever was sent."""
    text = str(value)
    if len(text) <= _SHOWN_DIGITS:
        return text
    return f"{text[:8]}…({len(text)} digits)"


async def get_row(session: AsyncSession, model: type[T], value: int) -> T | None:
    """The row of ``model`` with id ``value``; None when there is none or there cannot be one."""
    key = row_id(value)
    return None if key is None else await session.get(model, key)
