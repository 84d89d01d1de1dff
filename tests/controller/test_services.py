"""The controller's rules called directly, without HTTP, on a real SQLite database.

Each test gets a migrated database holding only the default client address
pool (what ``controller init`` seeds). Every step runs in a transaction of its
own that commits on success and rolls back on a refusal, as a request would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from servicedb import Step, migrated, seed_default_pool, steps
from zerogate.controller import schemas as s
from zerogate.controller.services import (
    accounts,
    address_pool,
    applications,
    connector_groups,
    gateways,
    groups,
    policies,
)
from zerogate.controller.services.lookup import by_name
from zerogate.controller.state import Conflict, NotFound, Unprocessable
from zerogate.store.models import ConnectorGroup, Gateway, Group

T = TypeVar("T")


SITE = "10.50.0.0/24"


@pytest.fixture
def step(tmp_path: Path) -> Step:
    """Run one unit of work in its own committed transaction on a fresh database."""
    run = steps(migrated(tmp_path))
    run(seed_default_pool)
    return run


def site(name: str, *subnets: str) -> s.ConnectorGroupCreate:
    return s.ConnectorGroupCreate(name=name, subnets=list(subnets or (SITE,)))


def app(name: str, group: str, address: str) -> s.ApplicationCreate:
    return s.ApplicationCreate(
        name=name,
        connector_group=group,
        destinations=[s.DestinationIn(address=address, protocol="tcp", ports=["443"])],
    )


async def site_names(session: AsyncSession) -> list[str]:
    return [g.name for g in await connector_groups.list_groups(session)]


# ----------------------------------------------------------------- subnets


def test_a_site_overlapping_another_sites_subnet_is_refused(step: Step) -> None:
    step(lambda db: connector_groups.create(db, site("site-a")))
    with pytest.raises(
        Conflict, match=r"subnet 10\.50\.0\.128/25 overlaps 10\.50\.0\.0/24 of connector group 'site-a'"
    ):
        step(lambda db: connector_groups.create(db, site("site-b", "10.60.0.0/24", "10.50.0.128/25")))
    assert step(site_names) == ["site-a"]


def test_a_site_inside_the_client_address_pool_is_refused(step: Step) -> None:
    with pytest.raises(Conflict, match=r"overlaps client address block 100\.64\.0\.0/16"):
        step(lambda db: connector_groups.create(db, site("site-a", "100.64.8.0/24")))


def test_a_site_may_grow_over_its_own_subnets_but_not_into_another(step: Step) -> None:
    step(lambda db: connector_groups.create(db, site("site-a")))
    step(lambda db: connector_groups.create(db, site("site-b", "10.51.0.0/24")))

    def resize(subnets: list[str]) -> Callable[[AsyncSession], Awaitable[None]]:
        async def work(db: AsyncSession) -> None:
            group = await by_name(db, ConnectorGroup, "site-a", "connector group")
            await connector_groups.update(db, group, s.ConnectorGroupUpdate(subnets=subnets))

        return work

    step(resize(["10.50.0.0/25", "10.50.0.128/25"]))  # the same space, split: no conflict with itself
    with pytest.raises(Conflict, match="of connector group 'site-b'"):
        step(resize(["10.50.0.0/15"]))


def test_new_pool_blocks_overlapping_a_site_are_refused(step: Step) -> None:
    step(lambda db: connector_groups.create(db, site("site-a")))

    async def move_pool(db: AsyncSession) -> None:
        pool = await address_pool.default_pool(db)
        await address_pool.set_blocks(db, pool, ["10.50.0.0/16"])

    with pytest.raises(Conflict, match=r"overlaps subnet 10\.50\.0\.0/24 of connector group 'site-a'"):
        step(move_pool)


# ----------------------------------------------------------------- destinations


def test_a_destination_outside_its_sites_subnets_is_refused(step: Step) -> None:
    step(lambda db: connector_groups.create(db, site("site-a")))
    with pytest.raises(
        Unprocessable, match=r"destination 10\.51\.0\.10/32 is outside the subnets .*'site-a'"
    ):
        step(lambda db: applications.create(db, app("web", "site-a", "10.51.0.10/32")))
    created, group = step(lambda db: applications.create(db, app("web", "site-a", "10.50.0.10/32")))
    assert (created.name, group.name) == ("web", "site-a")


def test_a_site_cannot_shrink_away_from_its_applications(step: Step) -> None:
    step(lambda db: connector_groups.create(db, site("site-a")))
    step(lambda db: applications.create(db, app("web", "site-a", "10.50.0.10/32")))

    async def shrink(db: AsyncSession) -> None:
        group = await by_name(db, ConnectorGroup, "site-a", "connector group")
        await connector_groups.update(db, group, s.ConnectorGroupUpdate(subnets=["10.50.0.128/25"]))

    with pytest.raises(Unprocessable, match=r"application 'web': destination 10\.50\.0\.10/32 is outside"):
        step(shrink)


# ----------------------------------------------------------------- names


def test_names_are_unique_per_kind(step: Step) -> None:
    step(lambda db: groups.create(db, s.GroupCreate(name="staff")))
    with pytest.raises(Conflict, match="a group named 'staff' already exists"):
        step(lambda db: groups.create(db, s.GroupCreate(name="staff")))
    gateway = s.GatewayCreate(name="staff", public_endpoint="gw.example.net")
    step(lambda db: gateways.create(db, gateway))  # another kind may use the name
    with pytest.raises(Conflict, match="a gateway named 'staff' already exists"):
        step(lambda db: gateways.create(db, gateway))
    with pytest.raises(NotFound, match="no group named 'nobody'"):
        step(lambda db: by_name(db, Group, "nobody", "group"))


def test_a_changed_gateway_is_checked_as_a_whole(step: Step) -> None:
    step(lambda db: gateways.create(db, s.GatewayCreate(name="edge", public_endpoint="gw.example.net")))

    async def upside_down(db: AsyncSession) -> None:
        gateway = await by_name(db, Gateway, "edge", "gateway")
        await gateways.update(db, gateway, s.GatewayUpdate(port_first=60000))

    with pytest.raises(Unprocessable, match=r"^gateway: .*port range 60000-53000 is empty"):
        step(upside_down)


# ----------------------------------------------------------------- references


def test_a_group_a_policy_names_cannot_be_deleted(step: Step) -> None:
    step(lambda db: connector_groups.create(db, site("site-a")))
    step(lambda db: applications.create(db, app("web", "site-a", "10.50.0.10/32")))
    step(lambda db: groups.create(db, s.GroupCreate(name="staff")))
    policy = s.PolicyCreate(name="staff-web", groups=["staff"], applications=["web"])
    step(lambda db: policies.create(db, policy))

    async def delete_staff(db: AsyncSession) -> None:
        await groups.delete(db, await by_name(db, Group, "staff", "group"))

    with pytest.raises(Conflict, match="group 'staff' is used by policies: staff-web"):
        step(delete_staff)

    async def delete_policy(db: AsyncSession) -> None:
        for p in await policies.list_policies(db):
            await policies.delete(db, p)

    step(delete_policy)
    step(delete_staff)  # no longer referenced


def test_a_site_with_applications_cannot_be_deleted(step: Step) -> None:
    step(lambda db: connector_groups.create(db, site("site-a")))
    step(lambda db: applications.create(db, app("web", "site-a", "10.50.0.10/32")))

    async def delete_site(db: AsyncSession) -> None:
        await connector_groups.delete(db, await by_name(db, ConnectorGroup, "site-a", "connector group"))

    with pytest.raises(Conflict, match="connector group 'site-a' is still used by applications: web"):
        step(delete_site)
    assert step(site_names) == ["site-a"]


# ----------------------------------------------------------------- accounts


def test_admins_join_no_groups_and_users_do(step: Step) -> None:
    step(lambda db: groups.create(db, s.GroupCreate(name="staff")))
    ttl = timedelta(hours=1)
    with pytest.raises(Unprocessable, match="admins are not members of user groups"):
        step(lambda db: accounts.create(db, "admin", s.AccountCreate(username="root", groups=["staff"]), ttl))
    made = step(
        lambda db: accounts.create(db, "user", s.AccountCreate(username="ann", groups=["staff"]), ttl)
    )
    assert made.account.status == "pending" and made.code.startswith("zga")

    async def shown(db: AsyncSession) -> tuple[list[str], str]:
        ann = await accounts.get(db, "user", "ann")
        return await groups.member_names(db, (await groups.list_groups(db))[0][0]), ann.username

    assert step(shown) == (["ann"], "ann")
    with pytest.raises(NotFound, match=r"no admin named 'ann' \(ann is a user\)"):
        step(lambda db: accounts.get(db, "admin", "ann"))
