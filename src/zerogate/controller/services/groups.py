"""User groups: what policies grant access to.

Members are written as ``group_members`` rows in O(change) (see
:mod:`.membership`); only users can be members. A group that a policy still
names cannot be deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.services import membership
from zerogate.controller.services.lookup import ensure_free
from zerogate.controller.state import Conflict
from zerogate.store.db import utcnow
from zerogate.store.models import Group, Policy


@dataclass(frozen=True)
class MemberChange:
    """Names whose membership changed, sorted (already members / non-members are not listed)."""

    added: list[str]
    removed: list[str]


async def list_groups(session: AsyncSession) -> list[tuple[Group, list[str]]]:
    """Every group with its sorted member names: one query for all the names."""
    members = await membership.member_names(session)
    return [(g, members.get(g.id, [])) for g in await session.scalars(select(Group).order_by(Group.name))]


async def member_names(session: AsyncSession, group: Group) -> list[str]:
    return (await membership.member_names(session, [group.id]))[group.id]


async def create(session: AsyncSession, body: s.GroupCreate) -> tuple[Group, list[str]]:
    """The new group and its sorted member names."""
    await ensure_free(session, Group, body.name, "group")
    ids = await membership.user_ids(session, body.members)
    group = Group(name=body.name, description=body.description, created_at=utcnow())
    session.add(group)
    await session.flush()
    await membership.insert_members(session, group.id, list(ids.values()))
    return group, sorted(ids)


async def update(session: AsyncSession, group: Group, body: s.GroupUpdate) -> MemberChange | None:
    """Apply the given fields; ``members`` replaces the whole list (the change is returned)."""
    if body.description is not None:
        group.description = body.description
    if body.members is None:
        return None
    return MemberChange(*await membership.replace_members(session, group.id, body.members))


async def change_members(
    session: AsyncSession, group: Group, add: Sequence[str], remove: Sequence[str]
) -> MemberChange:
    """Add and remove users without the whole list: O(change), not O(group size).
    Adding a member or removing a non-member changes nothing (and is no error)."""
    return MemberChange(*await membership.change_members(session, group.id, add, remove))


async def member_count(session: AsyncSession, group: Group) -> int:
    return await membership.member_count(session, group.id)


async def delete(session: AsyncSession, group: Group) -> None:
    """Conflict while a policy names the group."""
    users = [p.name for p in await session.scalars(select(Policy).where(Policy.groups.contains(group)))]
    if users:
        raise Conflict(f"group {group.name!r} is used by policies: {', '.join(users)}")
    await session.delete(group)
