"""Group membership changes cost O(change), not O(group size) (issue 8, defect 18).

The cost is counted, not timed: SQL statements sent to the engine and Account
rows turned into ORM objects, for the same change to a group of N and of 2N
members, on a real SQLite and PostgreSQL database. Timing lives in
bench/group_membership.py. The API operation that adds and removes members
without sending the whole list is tested through the real controller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller.services import membership
from zerogate.controller.services.lookup import all_by_name, by_name
from zerogate.controller.state import NotFound
from zerogate.netops.controller_api import ApiError
from zerogate.store.db import Database, upgrade_schema, utcnow
from zerogate.store.models import Account, Group, group_members
from zerogate.testbed.localrun import AccountSession

Unique = Callable[[str], str]
N = 120  # members of the smaller group; the larger has 2N (both well inside one IN chunk)


@dataclass
class Cost:
    statements: int = 0
    accounts_loaded: int = 0


@contextmanager
def counting(db: str) -> Iterator[Cost]:
    """Count statements on ``db``'s engine and Account objects the ORM builds."""
    cost = Cost()

    def on_statement(*_: Any) -> None:
        cost.statements += 1

    def on_load(*_: Any) -> None:
        cost.accounts_loaded += 1

    event.listen(db.engine.sync_engine, "before_cursor_execute", on_statement)
    event.listen(Account, "load", on_load)
    try:
        yield cost
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", on_statement)
        event.remove(Account, "load", on_load)


async def _seed(db: str) -> None:
    """Users u0000.. and groups 'small' (N members) and 'big' (2N), in bulk."""
    now = utcnow()
    async with db.sessions() as session, session.begin():
        await session.execute(
            insert(Account),
            [
                {
                    "kind": "user",
                    "username": f"u{i:04d}",
                    "status": "active",
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(2 * N + 10)
            ],
        )
        await session.execute(
            insert(Account), [{"kind": "admin", "username": "boss", "created_at": now, "updated_at": now}]
        )
        await session.execute(
            insert(Group), [{"name": g, "created_at": now} for g in ("small", "big", "other")]
        )
        ids = {a.username: a.id for a in await session.scalars(select(Account))}
        groups = {g.name: g.id for g in await session.scalars(select(Group))}
        rows = [{"group_id": groups["small"], "account_id": ids[f"u{i:04d}"]} for i in range(N)]
        rows += [{"group_id": groups["big"], "account_id": ids[f"u{i:04d}"]} for i in range(2 * N)]
        # The members are also in a second group: loading a member's groups must not fan out further.
        rows += [{"group_id": groups["other"], "account_id": ids[f"u{i:04d}"]} for i in range(2 * N)]
        await session.execute(insert(group_members), rows)


@pytest.fixture
def db(database_url: str) -> str:
    """The URL of a migrated database holding the users and groups of :func:`_seed`."""
    upgrade_schema(database_url)

    async def seed() -> None:
        database = Database(database_url)
        try:
            await _seed(database)
        finally:
            await database.close()

    asyncio.run(seed())
    return database_url


def cost_of(url: str, work: Callable[[AsyncSession], Awaitable[object]]) -> Cost:
    """What ``work`` costs in one transaction, rolled back so each measure starts alike.

    Each call has its own engine: asyncpg connections belong to the event loop
    that opened them, and every call runs in a new one."""

    async def run() -> Cost:
        database = Database(url)
        try:
            async with database.sessions() as session:
                await session.begin()
                with counting(database) as cost:
                    await work(session)
                await session.rollback()
                return cost
        finally:
            await database.close()

    return asyncio.run(run())


def newcomer() -> str:
    return f"u{2 * N + 1:04d}"  # a user in no group


def test_adding_one_member_costs_the_same_for_n_and_2n_members(db: str) -> None:
    """What PATCH /v1/groups/{name}/members does: find the group, add one user, count."""

    def add_one(group: str) -> Callable[[AsyncSession], Awaitable[object]]:
        async def work(session: AsyncSession) -> object:
            g = await by_name(session, Group, group, "group")
            added, removed = await membership.change_members(session, g.id, [newcomer()], [])
            assert (added, removed) == ([newcomer()], [])
            return await membership.member_count(session, g.id)

        return work

    small, big = cost_of(db, add_one("small")), cost_of(db, add_one("big"))
    assert small.statements == big.statements, (small, big)
    assert big.accounts_loaded == 0  # the old eager "members" loaded all 2N (and their groups)


def test_removing_one_member_costs_the_same_for_n_and_2n_members(db: str) -> None:
    def remove_one(group: str) -> Callable[[AsyncSession], Awaitable[object]]:
        async def work(session: AsyncSession) -> object:
            g = await by_name(session, Group, group, "group")
            return await membership.change_members(session, g.id, [], ["u0000"])

        return work

    small, big = cost_of(db, remove_one("small")), cost_of(db, remove_one("big"))
    assert small.statements == big.statements, (small, big)
    assert big.accounts_loaded == 0


def test_full_replacement_sends_a_bounded_number_of_statements(db: str) -> None:
    """PATCH /v1/groups/{name} with the whole list plus one: the old code ran
    one query per name (N+1 statements) and loaded every member into the ORM."""

    def replace_plus_one(group: str, size: int) -> Callable[[AsyncSession], Awaitable[object]]:
        async def work(session: AsyncSession) -> object:
            g = await by_name(session, Group, group, "group")
            names = [f"u{i:04d}" for i in range(size)] + [newcomer()]
            added, removed = await membership.replace_members(session, g.id, names)
            assert (added, removed) == ([newcomer()], [])
            return added

        return work

    small, big = cost_of(db, replace_plus_one("small", N)), cost_of(db, replace_plus_one("big", 2 * N))
    assert small.statements == big.statements, (small, big)
    assert big.accounts_loaded == 0


def test_loading_a_user_does_not_load_the_members_of_its_groups(db: str) -> None:
    """Accounts are loaded on every request (the caller of a token): their
    groups may come along, those groups' members must not."""

    async def work(session: AsyncSession) -> object:
        user = await by_name(session, Account, "u0000", "user")
        return sorted(g.name for g in user.groups)

    assert cost_of(db, work).accounts_loaded == 1


def test_all_by_name_is_one_query_in_the_order_given(db: str) -> None:
    wanted = [f"u{i:04d}" for i in range(2 * N, -1, -1)] + ["u0005"]  # reversed, with a repeat

    async def work(session: AsyncSession) -> object:
        found = await all_by_name(session, Account, wanted, "user")
        assert [a.username for a in found] == list(dict.fromkeys(wanted))
        return found

    cost = cost_of(db, work)
    assert cost.statements <= 2  # one IN query (+ the selectin of their groups), not 2N+1

    async def missing(session: AsyncSession) -> object:
        return await all_by_name(session, Account, ["u0001", "nobody", "nobody2"], "user")

    with pytest.raises(NotFound) as info:
        cost_of(db, missing)
    assert info.value.message == "no user named 'nobody'"


def test_lists_larger_than_a_chunk(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Names beyond one IN chunk are all found, added and removed."""
    monkeypatch.setattr(membership, "CHUNK", 7)

    async def work(session: AsyncSession) -> object:
        g = await by_name(session, Group, "small", "group")
        names = [f"u{i:04d}" for i in range(N // 2, N + 30)]  # half already members, 30 not
        added, removed = await membership.change_members(
            session, g.id, names, [f"u{i:04d}" for i in range(20)]
        )
        assert added == [f"u{i:04d}" for i in range(N, N + 30)]
        assert removed == [f"u{i:04d}" for i in range(20)]
        assert await membership.member_count(session, g.id) == N + 30 - 20
        added, removed = await membership.replace_members(session, g.id, ["u0001", "u0002"])
        assert added == ["u0001", "u0002"] and len(removed) == N + 30 - 20
        return (await membership.member_names(session, [g.id]))[g.id]

    cost_of(db, work)


# ----------------------------------------------------------------- through the API


def _group_with(admin: AccountSession, unique: Unique, members: int) -> tuple[str, list[str]]:
    c = admin.client
    users = [c.post("/v1/users", {"username": unique("member")})["username"] for _ in range(members)]
    group = c.post("/v1/groups", {"name": unique("team"), "members": users})["name"]
    return group, users


def _audit_after(admin: AccountSession, head: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = admin.client.get("/v1/audit", {"after_id": head, "limit": 100})
    return records


def _head(admin: AccountSession) -> int:
    head: int = admin.client.get("/v1/audit/verify")["head_id"]
    return head


def test_add_and_remove_members_without_the_whole_list(admin: AccountSession, unique: Unique) -> None:
    c = admin.client
    group, (ann, bob) = _group_with(admin, unique, 2)
    carl = c.post("/v1/users", {"username": unique("carl")})["username"]
    revision, head = c.get("/v1/health")["revision"], _head(admin)

    changed = c.patch(f"/v1/groups/{group}/members", {"add": [carl, ann], "remove": [bob]})
    assert changed == {"name": group, "added": [carl], "removed": [bob], "member_count": 2}
    assert c.get(f"/v1/groups/{group}")["members"] == sorted([ann, carl])
    assert c.get(f"/v1/users/{carl}")["groups"] == [group]
    assert c.get(f"/v1/users/{bob}")["groups"] == []
    assert c.get("/v1/health")["revision"] > revision  # devices must learn who may reach what
    [record] = _audit_after(admin, head)
    assert (record["action"], record["outcome"]) == ("update-group-members", "success")
    assert record["details"] == {"name": group, "members_added": [carl], "members_removed": [bob]}

    # Adding a member again or removing a non-member is no change, and no error.
    revision = c.get("/v1/health")["revision"]
    again = c.patch(f"/v1/groups/{group}/members", {"add": [carl], "remove": [bob]})
    assert again == {"name": group, "added": [], "removed": [], "member_count": 2}
    assert c.get("/v1/health")["revision"] == revision


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"add": ["{user}", "nobody-here"]}, 404, "no user named 'nobody-here'"),
        ({"remove": ["nobody-here"]}, 404, "no user named 'nobody-here'"),
        ({"add": ["{admin}"]}, 422, "only users can be group members, not admins"),
        ({}, 422, "nothing to change"),
        ({"add": ["{user}"], "remove": ["{user}"]}, 422, "both added and removed (add[0])"),
        ({"add": "{user}"}, 422, "add"),
        ({"add": ["{user}"], "members": []}, 422, "members"),
    ],
    ids=["unknown-user", "unknown-removal", "admin", "empty", "both", "not-a-list", "extra-field"],
)
def test_refused_member_changes_change_nothing(
    admin: AccountSession, unique: Unique, body: dict[str, Any], status: int, fragment: str
) -> None:
    c = admin.client
    group, [member] = _group_with(admin, unique, 1)
    user = c.post("/v1/users", {"username": unique("outsider")})["username"]

    def fill(value: Any) -> Any:
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value.format(user=user, admin=admin.username) if isinstance(value, str) else value

    with pytest.raises(ApiError) as info:
        c.patch(f"/v1/groups/{group}/members", {k: fill(v) for k, v in body.items()})
    assert info.value.status == status, info.value.message
    assert fragment in info.value.message
    assert c.get(f"/v1/groups/{group}")["members"] == [member]


def test_unknown_group(admin: AccountSession) -> None:
    with pytest.raises(ApiError) as info:
        admin.client.patch("/v1/groups/no-such-team/members", {"add": [admin.username]})
    assert (info.value.status, info.value.message) == (404, "no group named 'no-such-team'")


def test_full_replacement_audits_the_difference(admin: AccountSession, unique: Unique) -> None:
    c = admin.client
    group, (ann, bob) = _group_with(admin, unique, 2)
    carl = c.post("/v1/users", {"username": unique("carl")})["username"]
    head = _head(admin)
    updated = c.patch(f"/v1/groups/{group}", {"members": [carl, ann], "description": "x"})
    assert updated["members"] == sorted([ann, carl])
    [record] = _audit_after(admin, head)
    assert record["details"] == {"description": "x", "members_added": [carl], "members_removed": [bob]}


def test_deleting_a_group_with_members_leaves_the_users(admin: AccountSession, unique: Unique) -> None:
    c = admin.client
    group, users = _group_with(admin, unique, 3)
    c.delete(f"/v1/groups/{group}")
    assert all(c.get(f"/v1/users/{u}")["groups"] == [] for u in users)
    # The same name starts empty: no association row survived.
    assert c.post("/v1/groups", {"name": group})["members"] == []
