"""``/v1/applications``: destinations behind a connector group."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.api.crud import Change, Resource, crud_routes
from zerogate.controller.services import applications
from zerogate.controller.services.lookup import by_name
from zerogate.store.models import Application

router = APIRouter(prefix="/v1", tags=["objects"])


def application_out(a: Application, group_name: str) -> s.ApplicationOut:
    return s.ApplicationOut(
        id=a.id,
        name=a.name,
        description=a.description,
        connector_group=group_name,
        destinations=a.destinations,
        created_at=a.created_at,
    )


async def find(session: AsyncSession, name: str) -> Application:
    return await by_name(session, Application, name, "application")


async def list_all(session: AsyncSession) -> list[s.ApplicationOut]:
    return [application_out(a, group) for a, group in await applications.list_applications(session)]


async def show(session: AsyncSession, app: Application) -> s.ApplicationOut:
    return application_out(app, await applications.group_name(session, app))


async def create(change: Change, body: s.ApplicationCreate) -> s.ApplicationOut:
    app, group = await applications.create(change.session, body)
    return application_out(app, group.name)


async def update(change: Change, app: Application, body: s.ApplicationUpdate) -> s.ApplicationOut:
    group = await applications.update(change.session, app, body)
    return application_out(app, group.name)


async def delete(change: Change, app: Application) -> None:
    await applications.delete(change.session, app)


crud_routes(
    router,
    Resource(
        kind="application",
        path="/applications",
        tag="applications",
        noun="application",
        nouns="applications",
        key="name",
        out=s.ApplicationOut,
        created=s.ApplicationOut,
        create_body=s.ApplicationCreate,
        update_body=s.ApplicationUpdate,
        find=find,
        list_all=list_all,
        show=show,
        create=create,
        update=update,
        delete=delete,
    ),
)
