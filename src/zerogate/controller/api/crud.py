"""One description of an admin object kind, and its five routes registered once.

:func:`crud_routes` registers, for a :class:`Resource` at ``path`` (say
``/groups``, operation nouns ``group``/``groups``, path key ``name``):

=======  ====================  ==================  ======  ======================
method   path                  operation           status  answer
=======  ====================  ==================  ======  ======================
GET      /v1/groups            list_groups         200     list of ``out``
POST     /v1/groups            create_group        201     ``created``
GET      /v1/groups/{name}     show_group          200     ``out``
PATCH    /v1/groups/{name}     update_group        200     ``out``
DELETE   /v1/groups/{name}     delete_group        204     nothing
=======  ====================  ==================  ======  ======================

The same for every kind:

- Admins only (the ``Admin`` dependency); tags ``[router's, tag]``.
- 404 when ``{key}`` (or a name in the body) names no object; 409 for a name
  in use, an overlap or a reference that blocks a delete; 422 for a change
  that cannot be applied as asked. The rules raise them (see ``services``).
- Every change is one audited :meth:`ControllerState.mutation` with action
  ``create-<kind>``, ``update-<kind>`` or ``delete-<kind>`` and object type
  ``<kind>``, so it commits whole (with a new config revision) or changes
  nothing and is recorded as denied. The record's object id is the row's id
  and its details are: for a create, ``create_details(body)`` (default: the
  body as JSON), once it succeeded; for an update, the fields sent (as JSON,
  without ``unaudited`` ones) plus what the hook adds with
  :meth:`Change.note`; for a delete, ``{key: name}``. Updates and deletes
  fill both in as soon as the object is found, so a refusal names it too.

A kind created elsewhere (connectors: by enrollment) leaves ``create`` out
and gets the other four. A kind whose names may hold ``/`` (connectors) sets
``key_spans_slashes``.

Each kind's router module adds its own extra routes next to this.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller.auth import Admin, State
from zerogate.controller.state import ControllerState, Mutation, Principal
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


class HasId(Protocol):
    @property
    def id(self) -> int: ...


# The object kinds. Constrained, not bound to HasId: mypy refuses ORM classes as
# type arguments bounded by a protocol (though it accepts them as arguments).
RowT = TypeVar("RowT", Account, Group, ConnectorGroup, Gateway, Application, Policy, Connector, SegmentServer)
OutT = TypeVar("OutT", bound=BaseModel)
CreatedT = TypeVar("CreatedT", bound=HasId)  # a response model with the new row's id
CreateT = TypeVar("CreateT", bound=BaseModel)
UpdateT = TypeVar("UpdateT", bound=BaseModel)


@dataclass(frozen=True)
class Change:
    """One audited change in progress, as a resource's hook sees it."""

    state: ControllerState
    admin: Principal
    mutation: Mutation

    @property
    def session(self) -> AsyncSession:
        return self.mutation.tx.session

    def note(self, **details: Any) -> None:
        """Add to the audit record's details (what changed, beyond the fields sent)."""
        self.mutation.details |= details


def body_as_json(body: BaseModel) -> dict[str, Any]:
    return body.model_dump(mode="json")


@dataclass(frozen=True)
class Resource(Generic[RowT, OutT, CreatedT, CreateT, UpdateT]):
    """An admin object kind: its names, its models and the hooks that apply its rules.

    Hooks get the session (reads) or a :class:`Change` (writes), call the
    services and return the answer's model; ``find`` raises NotFound.
    """

    kind: str  # audit object type and action suffix: "connector-group"
    path: str  # under /v1: "/connector-groups"
    tag: str  # "connector-groups"
    noun: str  # in operation names: create_connector_group, ...
    nouns: str  # list_connector_groups
    key: str  # the path parameter naming one object: "name" or "username"
    out: type[OutT]
    update_body: type[UpdateT]
    find: Callable[[AsyncSession, str], Awaitable[RowT]]
    list_all: Callable[[AsyncSession], Awaitable[Sequence[OutT]]]
    show: Callable[[AsyncSession, RowT], Awaitable[OutT]]
    update: Callable[[Change, RowT, UpdateT], Awaitable[OutT]]
    delete: Callable[[Change, RowT], Awaitable[None]]
    # Creating: all three, or none for a kind created elsewhere (no create route).
    created: type[CreatedT] | None = None
    create_body: type[CreateT] | None = None
    create: Callable[[Change, CreateT], Awaitable[CreatedT]] | None = None
    create_details: Callable[[CreateT], dict[str, Any]] = body_as_json
    unaudited: frozenset[str] = frozenset()  # update fields left out of the audit record
    create_changes_config: bool = True  # False: a create reaches nothing yet (no new revision)
    update_changes_config: bool = True  # False: an update changes nothing a device is told
    key_spans_slashes: bool = False  # True: the path key may hold "/" (a {key:path} parameter)
    descriptions: Mapping[str, str] = field(default_factory=dict)  # operation name -> text


def _list_of(model: type[BaseModel]) -> Any:
    return list[model]  # type: ignore[valid-type]


def _signature(*params: tuple[str, Any]) -> inspect.Signature:
    """What FastAPI reads instead of the handler's ``**kwargs``: the parameter
    names (the path key differs per kind) and their types (the body model)."""
    return inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind) for name, kind in params]
    )


def crud_routes(router: APIRouter, r: Resource[RowT, OutT, CreatedT, CreateT, UpdateT]) -> None:
    """Register list, create, show, update and delete of ``r`` on ``router``."""
    key = r.key

    async def list_all(admin: Principal, state: ControllerState) -> Sequence[OutT]:
        async with state.db.read() as session:
            return await r.list_all(session)

    async def create(body: CreateT, admin: Principal, state: ControllerState) -> CreatedT:
        assert r.create is not None
        async with state.mutation(admin, f"create-{r.kind}", r.kind) as m:
            answer = await r.create(Change(state, admin, m), body)
            m.object_id, m.details = answer.id, r.create_details(body)
            m.config_change = r.create_changes_config
            return answer

    async def show(name: str, admin: Principal, state: ControllerState) -> OutT:
        async with state.db.read() as session:
            return await r.show(session, await r.find(session, name))

    async def update(name: str, body: UpdateT, admin: Principal, state: ControllerState) -> OutT:
        async with state.mutation(admin, f"update-{r.kind}", r.kind) as m:
            row = await r.find(m.tx.session, name)
            m.object_id = row.id
            m.details = body.model_dump(mode="json", exclude_none=True, exclude=set(r.unaudited))
            m.config_change = r.update_changes_config
            return await r.update(Change(state, admin, m), row, body)

    async def delete(name: str, admin: Principal, state: ControllerState) -> None:
        async with state.mutation(admin, f"delete-{r.kind}", r.kind) as m:
            row = await r.find(m.tx.session, name)
            m.object_id, m.details = row.id, {key: name}
            await r.delete(Change(state, admin, m), row)

    # FastAPI calls each endpoint with keyword arguments named as its signature says.
    async def list_endpoint(**kw: Any) -> Any:
        return await list_all(kw["admin"], kw["state"])

    async def create_endpoint(**kw: Any) -> Any:
        return await create(kw["body"], kw["admin"], kw["state"])

    async def show_endpoint(**kw: Any) -> Any:
        return await show(kw[key], kw["admin"], kw["state"])

    async def update_endpoint(**kw: Any) -> Any:
        return await update(kw[key], kw["body"], kw["admin"], kw["state"])

    async def delete_endpoint(**kw: Any) -> None:
        await delete(kw[key], kw["admin"], kw["state"])

    def add(
        method: str,
        path: str,
        name: str,
        endpoint: Callable[..., Awaitable[Any]],
        params: Sequence[tuple[str, Any]],
        **options: Any,
    ) -> None:
        endpoint.__signature__ = _signature(*params, ("admin", Admin), ("state", State))  # type: ignore[attr-defined]
        description = r.descriptions.get(name)
        router.add_api_route(
            path, endpoint, methods=[method], name=name, tags=[r.tag], description=description, **options
        )

    one = f"{r.path}/{{{key}:path}}" if r.key_spans_slashes else f"{r.path}/{{{key}}}"
    add("GET", r.path, f"list_{r.nouns}", list_endpoint, [], response_model=_list_of(r.out))
    if r.create is not None:
        add(
            "POST",
            r.path,
            f"create_{r.noun}",
            create_endpoint,
            [("body", r.create_body)],
            response_model=r.created,
            status_code=201,
        )
    add("GET", one, f"show_{r.noun}", show_endpoint, [(key, str)], response_model=r.out)
    add(
        "PATCH",
        one,
        f"update_{r.noun}",
        update_endpoint,
        [(key, str), ("body", r.update_body)],
        response_model=r.out,
    )
    add(
        "DELETE", one, f"delete_{r.noun}", delete_endpoint, [(key, str)], response_model=None, status_code=204
    )
