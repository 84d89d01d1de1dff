"""``/v1/groups``: user groups, plus ``PATCH /v1/groups/{name}/members``.

An update's ``members`` replaces the whole list; its audit record says what
changed (members added and removed), not the whole, possibly huge, list.
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.api.crud import Change, Resource, crud_routes
from zerogate.controller.auth import Admin, State
from zerogate.controller.services import groups
from zerogate.controller.services.lookup import by_name
from zerogate.store.models import Group

router = APIRouter(prefix="/v1", tags=["objects"])


def group_out(g: Group, members: list[str]) -> s.GroupOut:
    return s.GroupOut(
        id=g.id, name=g.name, description=g.description, members=members, created_at=g.created_at
    )


async def find(session: AsyncSession, name: str) -> Group:
    return await by_name(session, Group, name, "group")


async def list_all(session: AsyncSession) -> list[s.GroupOut]:
    return [group_out(g, members) for g, members in await groups.list_groups(session)]


async def show(session: AsyncSession, group: Group) -> s.GroupOut:
    return group_out(group, await groups.member_names(session, group))


async def create(change: Change, body: s.GroupCreate) -> s.GroupOut:
    return group_out(*await groups.create(change.session, body))


async def update(change: Change, group: Group, body: s.GroupUpdate) -> s.GroupOut:
    members = await groups.update(change.session, group, body)
    if members is not None:
        change.note(members_added=members.added, members_removed=members.removed)
    return await show(change.session, group)


async def delete(change: Change, group: Group) -> None:
    await groups.delete(change.session, group)


resource = Resource(
    kind="group",
    path="/groups",
    tag="groups",
    noun="group",
    nouns="groups",
    key="name",
    out=s.GroupOut,
    created=s.GroupOut,
    create_body=s.GroupCreate,
    update_body=s.GroupUpdate,
    find=find,
    list_all=list_all,
    show=show,
    create=create,
    update=update,
    delete=delete,
    create_details=lambda body: {"name": body.name},
    unaudited=frozenset({"members"}),
    descriptions={
        "update_group": "``members`` replaces the whole list; to add or remove a few, "
        "use PATCH /v1/groups/{name}/members."
    },
)
crud_routes(router, resource)


@router.patch("/groups/{name}/members", response_model=s.GroupMembersChanged, tags=["groups"])
async def change_group_members(
    name: str, body: s.GroupMembersChange, admin: Admin, state: State
) -> s.GroupMembersChanged:
    """Add and remove members without sending the whole list; costs O(change), not O(group size).

    Adding a member or removing a non-member changes nothing (and is no error).
    """
    async with state.mutation(admin, "update-group-members", "group") as m:
        session = m.tx.session
        group = await find(session, name)
        m.object_id = group.id
        change = await groups.change_members(session, group, body.add, body.remove)
        m.details = {"name": name, "members_added": change.added, "members_removed": change.removed}
        m.config_change = bool(change.added or change.removed)
        return s.GroupMembersChanged(
            name=name,
            added=change.added,
            removed=change.removed,
            member_count=await groups.member_count(session, group),
        )
