"""Group membership as rows of ``group_members``, changed in O(change).

Also the chunking every ``IN`` query of the services uses (:func:`chunks`).

A group can have thousands of members. Loading its ``members`` relationship
into the ORM to add one user made every change cost O(group size) (and a
5,000-member group took seconds in one request), so nothing here touches that
relationship (it is ``lazy="raise"``; see store/models.py). Names resolve with
one ``IN`` query per chunk, and only the difference is written, with bulk
INSERT and DELETE on the association table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller.state import NotFound, Unprocessable
from zerogate.store.models import Account, group_members

# Bound parameters per statement: far below SQLite's 32,766 and asyncpg's
# 32,767, and small enough that no single statement holds the write lock long.
CHUNK = 500

_V = TypeVar("_V")


def chunks(items: Sequence[_V], size: int | None = None) -> Iterator[Sequence[_V]]:
    """``items`` in slices of ``size`` (default :data:`CHUNK`, read at call time)."""
    step = size or CHUNK
    for start in range(0, len(items), step):
        yield items[start : start + step]


async def user_ids(session: AsyncSession, usernames: Iterable[str]) -> dict[str, int]:
    """username -> account id for each (distinct) name, in the order given.

    Unknown names are a 404 naming the first one; admins a 422 naming them all
    (the same answers the old one-query-per-name code gave).
    """
    wanted = list(dict.fromkeys(usernames))
    found: dict[str, tuple[int, str]] = {}
    for part in chunks(wanted):
        rows = await session.execute(
            select(Account.username, Account.id, Account.kind).where(Account.username.in_(part))
        )
        found.update((name, (id_, kind)) for name, id_, kind in rows)
    for name in wanted:
        if name not in found:
            raise NotFound(f"no user named {name!r}")
    admins = [name for name in wanted if found[name][1] != "user"]
    if admins:
        raise Unprocessable(f"only users can be group members, not admins: {', '.join(admins)}")
    return {name: found[name][0] for name in wanted}


async def present(session: AsyncSession, group_id: int, account_ids: Sequence[int]) -> set[int]:
    """Which of ``account_ids`` are members of the group already (reads only those rows)."""
    members: set[int] = set()
    for part in chunks(account_ids):
        members.update(
            await session.scalars(
                select(group_members.c.account_id).where(
                    group_members.c.group_id == group_id, group_members.c.account_id.in_(part)
                )
            )
        )
    return members


async def insert_members(session: AsyncSession, group_id: int, account_ids: Sequence[int]) -> None:
    """Add rows known not to exist yet: one bulk INSERT per chunk."""
    for part in chunks(account_ids):
        await session.execute(insert(group_members), [{"group_id": group_id, "account_id": a} for a in part])


async def delete_members(session: AsyncSession, group_id: int, account_ids: Sequence[int]) -> None:
    for part in chunks(account_ids):
        await session.execute(
            delete(group_members).where(
                group_members.c.group_id == group_id, group_members.c.account_id.in_(part)
            )
        )


async def change_members(
    session: AsyncSession, group_id: int, add: Sequence[str], remove: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Add and remove users by name; returns (added, removed): only the names
    whose membership actually changed, sorted. Idempotent: adding a member or
    removing a non-member is no change."""
    ids = await user_ids(session, [*add, *remove])
    to_add = {name: ids[name] for name in dict.fromkeys(add)}
    to_remove = {name: ids[name] for name in dict.fromkeys(remove)}
    there = await present(session, group_id, [*to_add.values(), *to_remove.values()])
    added = sorted(name for name, a in to_add.items() if a not in there)
    removed = sorted(name for name, a in to_remove.items() if a in there)
    await insert_members(session, group_id, [to_add[name] for name in added])
    await delete_members(session, group_id, [to_remove[name] for name in removed])
    return added, removed


async def replace_members(
    session: AsyncSession, group_id: int, usernames: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Make exactly ``usernames`` the members; writes only the difference.

    Reading the current members is O(group size), but one light query of
    (id, name) pairs, no ORM objects; returns (added, removed) as names, sorted.
    """
    ids = await user_ids(session, usernames)
    rows = await session.execute(
        select(group_members.c.account_id, Account.username)
        .join(Account, Account.id == group_members.c.account_id)
        .where(group_members.c.group_id == group_id)
    )
    current: dict[int, str] = {account_id: username for account_id, username in rows}
    wanted = set(ids.values())
    added = sorted(name for name, a in ids.items() if a not in current)
    removed = sorted(name for a, name in current.items() if a not in wanted)
    await insert_members(session, group_id, [ids[name] for name in added])
    await delete_members(session, group_id, [a for a in current if a not in wanted])
    return added, removed


async def member_count(session: AsyncSession, group_id: int) -> int:
    count = await session.scalar(
        select(func.count()).select_from(group_members).where(group_members.c.group_id == group_id)
    )
    return int(count or 0)


async def member_names(session: AsyncSession, group_ids: Sequence[int] | None = None) -> dict[int, list[str]]:
    """Sorted member usernames of each of ``group_ids`` (of every group when None):
    one query of names per chunk, no ORM objects."""
    query = (
        select(group_members.c.group_id, Account.username)
        .join(Account, Account.id == group_members.c.account_id)
        .order_by(Account.username)
    )
    parts = [None] if group_ids is None else list(chunks(group_ids))
    names: dict[int, list[str]] = {g: [] for g in group_ids or ()}
    for part in parts:
        rows = await session.execute(
            query if part is None else query.where(group_members.c.group_id.in_(part))
        )
        for group_id, username in rows:
            names.setdefault(group_id, []).append(username)
    return names
